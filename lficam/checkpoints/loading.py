"""Rebuild a trained model for inference from a Lightning checkpoint or a safetensors export, without Hydra.

Nothing here runs pickled code: checkpoints are read with ``torch.load(weights_only=True)`` (only tensors,
numbers, strings and plain containers come back) and exports with safetensors. A file that is not one of
ours, or was tampered with, is refused with one sentence (:class:`~lficam.core.errors.UserError`).

    model = lficam.load("outputs/train/runs/<run>/checkpoints/last.ckpt")
    output = model(images)          # ModelOutput(logits, attention)
    model.lficam_metadata["input"]  # {"image_size": 32, "mean": [...], "std": [...]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lficam.core.errors import UserError
from lficam.core.tensor_files import TensorFileError, read_safetensors_file, read_torch_file
from lficam.data.base import INPUT_KEY
from lficam.models import create_model
from lficam.models.heads import Classifier

#: Key of the metadata in a safetensors header and in a TorchScript/ONNX export.
METADATA_KEY = "lficam"
_NET_PREFIX = "net."
_SAFETENSORS_SUFFIXES = (".safetensors", ".st")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint of this project as a dict, read without executing any pickled code.

    Refused (UserError): a missing file, a file :func:`lficam.core.tensor_files.read_torch_file` cannot read (a
    pickle that names a class or function, random bytes, a truncated file, a record larger than the file),
    and a checkpoint without the ``model_config`` that :func:`lficam.create_model` needs.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"Checkpoint {str(path)!r} does not exist; pass the path of a .ckpt file from a run's "
            "checkpoints/ folder (e.g. ckpt_path=<run>/checkpoints/last.ckpt)."
        )
    try:
        checkpoint = read_torch_file(path)
    except TensorFileError as error:
        raise UserError(
            f"Refusing {str(path)!r}: it is not a checkpoint that loads safely without running code "
            f"({error}); use a .ckpt written by lficam's train.py or a .safetensors export."
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(
            f"Refusing {str(path)!r}: it holds no 'state_dict', so it is not a Lightning checkpoint "
            "of this project."
        )
    model_config_of_checkpoint(checkpoint, path)  # fail now, not later, when it cannot be rebuilt
    return checkpoint


def model_config_of_checkpoint(checkpoint: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, Any]:
    """The ``create_model`` keyword arguments a checkpoint was trained with."""
    config = (checkpoint.get("hyper_parameters") or {}).get("model_config")
    if not isinstance(config, dict) or not {"backbone", "num_classes"} <= set(config):
        raise UserError(
            f"Refusing {str(path)!r}: it has no hyper_parameters['model_config'] (backbone, num_classes, "
            "attention), so the model cannot be rebuilt; it was not written by lficam's LitClassifier."
        )
    return dict(config)


def input_metadata_of_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The input description (image size, mean, std, class names) the data module stored, else what the
    training module's ``data_config`` says, or {}."""
    for value in checkpoint.values():
        if isinstance(value, dict) and isinstance(value.get(INPUT_KEY), dict):
            return dict(value[INPUT_KEY])
    data = (checkpoint.get("hyper_parameters") or {}).get("data_config")
    if isinstance(data, dict):
        return {k: data[k] for k in ("image_size", "mean", "std") if data.get(k) is not None}
    return {}


#: model_config keys that do not change the network: the pretrained-weights file it started from.
_NOT_ARCHITECTURE = frozenset({"weights"})


def check_compatible(
    checkpoint_config: dict[str, Any],
    configured: dict[str, Any],
    path: str | Path,
    option: str = "ckpt_path",
) -> None:
    """Refuse to resume, evaluate or start from (``option``) a checkpoint of a model configured differently:
    another backbone, head, class count or architecture option (the FIN variant, the ReLU layout …).

    An option that only one side names (a checkpoint written before the option existed) is left to
    :func:`check_weights_fit`: its default may well be the other side's value."""
    keys = ("backbone", "attention", "num_classes")
    keys += tuple(sorted((set(checkpoint_config) & set(configured)) - set(keys) - _NOT_ARCHITECTURE))
    differ = [k for k in keys if checkpoint_config.get(k) != configured.get(k)]
    if differ:
        was = ", ".join(f"{k}={checkpoint_config.get(k)!r}" for k in differ)
        now = ", ".join(f"{k}={configured.get(k)!r}" for k in differ)
        raise UserError(
            f"Checkpoint {str(path)!r} was trained with {was} but this run configures {now}; "
            f"choose the matching model/attention/data or another {option}."
        )


def check_weights_fit(
    state: dict[str, Tensor], expected: dict[str, Tensor], config: dict[str, Any], path: str | Path
) -> None:
    """Refuse weights whose names or shapes are not those of the network ``config`` builds (``expected``)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        k
        for k, v in expected.items()
        if k in state and not (isinstance(state[k], Tensor) and state[k].shape == v.shape)
    ]
    if missing or unexpected or mismatched:
        raise UserError(
            f"Refusing {str(path)!r}: its weights do not fit {config.get('backbone')!r} with attention "
            f"{config.get('attention')!r} ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} of another shape, e.g. {(missing + unexpected + mismatched)[:2]}); "
            "the file was written for another architecture or was altered."
        )


def network_state_dict(module_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The network's weights from a LitClassifier state dict (keys ``net.…``, ``net._orig_mod.…`` if compiled)."""
    state = {}
    for key, value in module_state.items():
        if isinstance(key, str) and key.startswith(_NET_PREFIX):
            key = key[len(_NET_PREFIX) :]
            state[key.removeprefix("_orig_mod.")] = value
    return state


def _rebuild(config: dict[str, Any], state: dict[str, Tensor], path: str | Path) -> Classifier:
    options = dict(config)
    if "weights" in options:
        options["weights"] = None  # the state dict below holds every weight; never read the original file
    if options.get("pretrained"):
        options["pretrained"] = False  # nor download pretrained weights
    try:
        # on the meta device first: a model_config is a file's size field (num_classes=10**9 would ask for
        # terabytes), so the real model is built only once its shapes are those of the file's tensors
        with torch.device("meta"):
            expected = create_model(**options).state_dict()
    except UserError:
        raise
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise UserError(
            f"Refusing {str(path)!r}: its model_config {str(config)[:200]} does not describe a model "
            f"({str(error)[:120]})."
        ) from None
    check_weights_fit(state, expected, config, path)
    model = create_model(**options)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # e.g. a tensor of a layout or dtype that cannot be copied in
        raise UserError(
            f"Refusing {str(path)!r}: its weights cannot be loaded ({str(error)[:120]})."
        ) from None
    return model


def _is_safetensors(path: Path) -> bool:
    if path.suffix in _SAFETENSORS_SUFFIXES:
        return True
    with path.open("rb") as f:
        head = f.read(10)
    # a safetensors file starts with a little-endian u64 header length, then '{'
    return len(head) == 10 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def read_safetensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The weights and the metadata dict (``model_config``, ``input``, …) of a safetensors export."""
    path = Path(path)
    try:
        state, header = read_safetensors_file(path)
    except TensorFileError as error:
        raise UserError(f"Refusing {str(path)!r}: {error}.") from None
    try:
        metadata = json.loads(header[METADATA_KEY])
        valid = isinstance(metadata["model_config"], dict) and {"backbone", "num_classes"} <= set(
            metadata["model_config"]
        )
    except (KeyError, ValueError, TypeError, RecursionError):  # RecursionError: JSON nested too deeply
        valid = False
    if not valid:
        raise UserError(
            f"Refusing {str(path)!r}: its safetensors metadata has no '{METADATA_KEY}' JSON with a model_config; "
            "export it with `python -m lficam.export format=safetensors`."
        )
    return state, metadata


def read_weights(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """The network's weights, its ``model_config`` and the metadata (``model_config``, ``input``,
    ``class_names``) of a Lightning ``.ckpt`` of this project or a ``.safetensors`` export."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"Model file {str(path)!r} does not exist; pass a .ckpt from a run's checkpoints/ folder "
            "or a .safetensors export."
        )
    if _is_safetensors(path):
        state, metadata = read_safetensors(path)
        return state, metadata["model_config"], metadata
    checkpoint = read_checkpoint(path)
    config = model_config_of_checkpoint(checkpoint, path)
    inputs = input_metadata_of_checkpoint(checkpoint)
    metadata = {"model_config": config, "input": {k: v for k, v in inputs.items() if k != "class_names"}}
    if "class_names" in inputs:
        metadata["class_names"] = inputs["class_names"]
    return network_state_dict(checkpoint["state_dict"]), config, metadata


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> Classifier:
    """An eval-mode model from a Lightning ``.ckpt`` of this project or a ``.safetensors`` export.

    The returned model maps normalised B×3×H×W images to ``ModelOutput(logits, attention)``; its
    ``lficam_metadata`` attribute holds ``model_config`` and, where known, ``input`` (image_size, mean, std)
    and ``class_names``.
    """
    state, config, metadata = read_weights(path)
    model = _rebuild(config, state, path).to(map_location).eval()
    model.lficam_metadata = metadata
    return model
