"""Export a trained model for deployment and check the export against PyTorch.

    python -m lficam.export ckpt_path=<run>/checkpoints/last.ckpt format=onnx [output=model.onnx]

Formats: ``onnx`` (run by onnxruntime), ``torchscript`` (``torch.jit.load``) and ``safetensors`` (the weights
plus, in the file's metadata under ``"lficam"``, a JSON of the ``create_model`` keyword arguments and the
input size and normalisation; :func:`lficam.load` rebuilds the model from it). ONNX and TorchScript models take
normalised B×3×H×W float images (B is free) and return the tuple ``(logits, attention)``: B×K scores and the
B×h×w map in [0, 1]. After writing, the export is run on a batch of another size than the one it was traced
with, and the largest absolute difference to the PyTorch model is printed (and must stay below ``tolerance``).

Nothing is put at the output path before that check passed: the export is written into a hidden folder next to
it and moved there afterwards, so a failed export leaves no file behind and never replaces an existing one.
ONNX exports are written at exactly the ``opset`` asked for, within the range :func:`onnx_opsets` reports for
the installed torch and onnx; any other is refused before anything is traced.

The options and their defaults live once, in :class:`ExportOptions`: the command line (``conf/export.yaml``, a
Hydra app like the others: ``lficam-export`` is the same command) and :func:`export`'s keyword defaults use it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from lficam.checkpoints.loading import METADATA_KEY, load
from lficam.core.errors import UnknownNameError, UserError, os_error_reason
from lficam.export.options import ExportOptions
from lficam.version import __version__

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}


class InferenceModel(nn.Module):
    """``(logits, attention)`` as a plain tuple: the form ONNX and TorchScript consumers expect."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        output = self.net(images)
        return output.logits, output.attention


@dataclass
class ExportReport:
    format: str
    path: Path
    batch_size: int
    check_batch_size: int
    max_abs_diff_logits: float
    max_abs_diff_attention: float

    def __str__(self) -> str:
        return (
            f"{self.format}: wrote {self.path}; traced with batch {self.batch_size}, checked with batch "
            f"{self.check_batch_size}: max |Δ logits| = {self.max_abs_diff_logits:.3g}, "
            f"max |Δ attention| = {self.max_abs_diff_attention:.3g} against PyTorch"
        )


def export_metadata(model: nn.Module, image_size: int) -> dict[str, Any]:
    """The JSON stored with every export: how to rebuild the model and what input it expects."""
    known = getattr(model, "lficam_metadata", {})
    inputs = dict(known.get("input") or {})
    inputs.pop("num_classes", None)
    inputs["image_size"] = image_size
    inputs.setdefault("mean", None)
    inputs.setdefault("std", None)
    inputs["layout"] = "B×3×H×W float32, normalised: (pixel/255 − mean)/std"
    return {
        "format_version": 1,
        "lficam_version": __version__,
        "model_config": known["model_config"],
        "input": inputs,
        "class_names": known.get("class_names"),
        "outputs": ["logits", "attention"],
    }


def _default_image_size(model: nn.Module) -> int:
    size = (getattr(model, "lficam_metadata", {}).get("input") or {}).get("image_size")
    if size:
        return int(size)
    return 32 if getattr(model.backbone, "family", "") == "cifar" else 224


def onnx_opsets() -> tuple[int, int]:
    """(lowest, highest) ONNX opset that the installed exporter writes as asked.

    Lowest: the opset torch's exporter implements its operators in (``TORCHLIB_OPSET``, 18 in torch 2.14). It
    accepts a lower one, but then exports at its own and asks ONNX's version converter to go down, which fails
    on this project's models (an ``axes_input_to_attribute`` assertion) and keeps its own opset with a printed
    traceback, so lower opsets are not offered. Highest: the newest opset the installed onnx defines; asked for
    a newer one, the exporter again keeps its own. Checked by exporting cifar_resnet20 at 17 to 29 (torch
    2.14.1, onnx 1.23.2: 18 to 28 written as asked, 17 and 29 written as 18).
    """
    import onnx

    try:
        from torch.onnx._internal.exporter._constants import TORCHLIB_OPSET as lowest
    except ImportError:  # a private module: its value in the releases this was checked with
        lowest = 18
    return int(lowest), int(onnx.defs.onnx_opset_version())


def check_opset(opset: int) -> None:
    """Refuse, in one sentence, an ONNX opset outside :func:`onnx_opsets` (before anything is traced)."""
    lowest, highest = onnx_opsets()
    if not lowest <= opset <= highest:
        import onnx

        raise UserError(
            f"opset={opset} cannot be exported: the installed exporter (torch {torch.__version__.split('+')[0]}, "
            f"onnx {onnx.__version__}) writes ONNX opsets {lowest} to {highest} only; choose one of them "
            "(nothing was written)."
        )


def written_opset(path: Path) -> int | None:
    """The version of the default ("ai.onnx") operator set that the ONNX file at ``path`` imports."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


class _Records(logging.Handler):
    """Keeps the log records it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


#: the loggers of torch's ONNX exporter and of onnxscript's version converter
_EXPORTER_LOGGERS = ("torch.onnx", "onnxscript")


@contextlib.contextmanager
def _exporter_logs() -> Iterator[list[logging.LogRecord]]:
    """The exporter's log records, kept instead of printed: a failed version conversion logs a traceback and
    carries on at another opset, which :func:`_write_onnx` then refuses in one sentence."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    saved = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield handler.records
    finally:
        for logger, propagate in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.propagate = propagate


def _conversion_failure(records: list[logging.LogRecord]) -> str:
    """The clause naming the version converter's error in the exporter's records; "" when none holds one."""
    errors = [r.exc_info[1] for r in records if r.exc_info and r.exc_info[1] is not None]
    if not errors:
        return ""
    text = " ".join(str(errors[-1]).split())
    return f" (its version converter failed: {type(errors[-1]).__name__}: {text[:160]})"


def _write_onnx(
    wrapper: InferenceModel, example: Tensor, path: Path, metadata: dict[str, Any], opset: int
) -> None:
    batch = torch.export.Dim("batch", min=1)
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),  # the exporter's progress lines
        _exporter_logs() as records,
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (example,),
            input_names=["images"],
            output_names=["logits", "attention"],
            dynamic_shapes={"images": {0: batch}},
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    program.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
    # one file; weights go to a side file only past protobuf's 2 GB limit
    program.save(str(path), external_data=None)
    found = written_opset(path)
    # the exporter keeps its own opset when its version converter fails, saying so only in a log record
    if found != opset:
        raise UserError(
            f"The ONNX exporter wrote opset {found} instead of opset={opset}{_conversion_failure(records)}, "
            f"so nothing was written; choose opset={found}."
        )


def _run_onnx(path: Path, images: Tensor) -> tuple[Tensor, Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, attention = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    return torch.from_numpy(logits), torch.from_numpy(attention)


def _write_torchscript(
    wrapper: InferenceModel, example: Tensor, path: Path, metadata: dict[str, Any]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shape checks of check_images are Python: traced as constants
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})


def _run_torchscript(path: Path, images: Tensor) -> tuple[Tensor, Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
    return module(images)


def _write_safetensors(model: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={METADATA_KEY: json.dumps(metadata)})


def _run_safetensors(path: Path, images: Tensor) -> tuple[Tensor, Tensor]:
    output = load(path)(images)
    return output.logits, output.attention


def export(
    ckpt_path: str | Path,
    format: str = ExportOptions.format,
    output: str | Path | None = ExportOptions.output,
    *,
    batch_size: int = ExportOptions.batch_size,
    check_batch_size: int = ExportOptions.check_batch_size,
    image_size: int | None = ExportOptions.image_size,
    opset: int = ExportOptions.opset,
    tolerance: float = ExportOptions.tolerance,
) -> ExportReport:
    """Write the model of ``ckpt_path`` in ``format`` and check it against PyTorch on a batch of
    ``check_batch_size`` random images (a size other than the traced ``batch_size``)."""
    if format not in FORMATS:
        raise UnknownNameError("export format", format, FORMATS)
    if format == "onnx":
        check_opset(opset)
    if batch_size < 1 or check_batch_size < 1 or batch_size == check_batch_size:
        raise UserError(
            f"batch_size={batch_size} and check_batch_size={check_batch_size} must be positive and differ, "
            "so that the check shows the batch axis is dynamic."
        )
    model = load(ckpt_path)
    size = int(image_size) if image_size else _default_image_size(model)
    metadata = export_metadata(model, size)
    path = Path(output) if output else Path(ckpt_path).with_suffix(FORMATS[format])
    if path.resolve() == Path(ckpt_path).resolve():
        raise UserError(f"output={str(path)!r} would overwrite the checkpoint; choose another output path.")
    check_writable(path)

    generator = torch.Generator().manual_seed(0)
    example = torch.randn(batch_size, 3, size, size, generator=generator)
    probe = torch.randn(check_batch_size, 3, size, size, generator=generator)
    wrapper = InferenceModel(model).eval()
    with staged(path) as staging, torch.no_grad():  # moved to ``path`` only once every check below passed
        if format == "onnx":
            _write_onnx(wrapper, example, staging, metadata, opset)
            logits, attention = _run_onnx(staging, probe)
        elif format == "torchscript":
            _write_torchscript(wrapper, example, staging, metadata)
            logits, attention = _run_torchscript(staging, probe)
        else:
            _write_safetensors(model, staging, metadata)
            logits, attention = _run_safetensors(staging, probe)
        reference_logits, reference_attention = wrapper(probe)

        if logits.shape != reference_logits.shape or attention.shape != reference_attention.shape:
            raise RuntimeError(
                f"The {format} export returned shapes {tuple(logits.shape)}, {tuple(attention.shape)} for batch "
                f"{check_batch_size}; PyTorch returns {tuple(reference_logits.shape)}, {tuple(reference_attention.shape)}."
            )
        report = ExportReport(
            format,
            path,
            batch_size,
            check_batch_size,
            float((logits - reference_logits).abs().max()),
            float((attention - reference_attention).abs().max()),
        )
        scale = max(1.0, float(reference_logits.abs().max()))
        if report.max_abs_diff_logits > tolerance * scale or report.max_abs_diff_attention > tolerance:
            raise RuntimeError(f"The export does not match PyTorch within tolerance={tolerance}: {report}")
    return report


@contextlib.contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A path named like ``path`` in a new hidden folder next to it, whose files are moved beside ``path``
    when the block ends without an error, and removed with the folder otherwise: a failed export leaves
    nothing behind and an existing file at ``path`` is kept. (A folder, not one temporary file: an ONNX model
    past 2 GB writes its weights to a side file named after the model's file.)"""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as folder:
        staging = Path(folder) / path.name
        yield staging
        for written in sorted(Path(folder).iterdir()):
            os.replace(written, path.parent / written.name)  # same file system: a rename, never half a file


def check_writable(path: Path) -> None:
    """Refuse, in one sentence, an output whose folder cannot be made or written (before anything is traced).
    A file is created and removed to find out: permission bits alone do not say it (root ignores them, and a
    read-only file system or a file where a folder should be refuses anyway)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UserError(
            f"Cannot write the export {str(path)!r} ({os_error_reason(error)}): choose an output=<file> in "
            "a folder you can write."
        ) from None


def run_export(cfg: DictConfig) -> ExportReport:
    """Hydra task body of ``python -m lficam.export`` / ``lficam-export``: export, check, print the report."""
    given: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    # only the options (a +key=value the user added is warned about by the command line, never passed on)
    options = {f.name: given[f.name] for f in fields(ExportOptions)}
    if not options["ckpt_path"]:
        raise UserError(
            "No checkpoint given: pass ckpt_path=<run>/checkpoints/last.ckpt (or a .safetensors file)."
        )
    report = export(options.pop("ckpt_path"), options.pop("format"), options.pop("output"), **options)
    print(report)
    return report
