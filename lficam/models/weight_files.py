"""Weights from a local file: telling a file from a weight name, reading a state dict without running pickled
code (:mod:`lficam.core.tensor_files`), and copying it into a module that must take every tensor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from lficam.core.errors import UserError
from lficam.core.tensor_files import TensorFileError, read_safetensors_file, read_torch_file

_WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar")


def looks_like_path(value: str | Path) -> bool:
    """A weights option that names a file (has a folder or a file suffix, or exists) rather than a weight name."""
    text = str(value)
    return (
        isinstance(value, Path)
        or "/" in text
        or "\\" in text
        or text.endswith(_WEIGHT_FILE_SUFFIXES)
        or (Path(text).expanduser().exists())
    )


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from a ``.safetensors`` file or a tensor-only ``.pt``/``.pth`` file.

    Pickled code is never executed and no size field of the file is trusted (:mod:`lficam.core.tensor_files`).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"Backbone weights file {str(path)!r} does not exist; give the path of a state dict.")
    try:
        state = read_safetensors_file(path)[0] if path.suffix == ".safetensors" else read_torch_file(path)
    except TensorFileError as error:
        raise UserError(
            f"Could not read {str(path)!r} as a plain state dict ({error}); "
            "save the weights with torch.save(model.state_dict(), path) or as safetensors."
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict of tensors.")
    return state


def load_matching_state(
    module: nn.Module,
    state: dict[str, Tensor],
    *,
    source: str,
    target: str,
    ignored: Callable[[str], bool] = lambda key: False,
) -> None:
    """Copy ``state`` into ``module``, which must take every one of its tensors with the same shape.

    Keys for which ``ignored(key)`` is true (a classifier the head replaces) are skipped on both sides;
    BatchNorm's ``num_batches_tracked`` may be absent from the file (older checkpoints omit it).
    Anything else that does not fit is one sentence: how many keys are missing, unexpected and of
    another shape, with an example of each.
    """
    expected = {k: v for k, v in module.state_dict().items() if not ignored(k)}
    given = {k: v for k, v in state.items() if not ignored(k)}
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    reshaped = [
        f"{k} {tuple(getattr(given[k], 'shape', ()))} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and not (torch.is_tensor(given[k]) and tuple(given[k].shape) == tuple(v.shape))
    ]
    if missing or unexpected or reshaped:
        examples = "; ".join(
            f"{label} e.g. {keys[0]!r}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("reshaped", reshaped))
            if keys
        )
        raise UserError(
            f"Weights {source} do not fit {target}: {len(missing)} of its keys are missing, "
            f"{len(unexpected)} are unexpected and {len(reshaped)} have another shape ({examples}); "
            "give a state dict saved from the same architecture."
        )
    try:
        module.load_state_dict({k: v for k, v in given.items() if k in expected}, strict=False)
    except RuntimeError as error:  # a tensor of a layout or dtype that cannot be copied in
        raise UserError(f"Weights {source} cannot be loaded into {target} ({str(error)[:120]}).") from None
