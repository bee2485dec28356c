"""The options of ``python -m lficam.export`` and their defaults, in one place: the schema of
``conf/export.yaml`` (Hydra checks each value's type) and the keyword defaults of :func:`lficam.export.export`."""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class ExportOptions:
    """The options of ``python -m lficam.export key=value ...`` and their defaults (the schema of
    ``conf/export.yaml``; Hydra checks each value's type)."""

    ckpt_path: str | None = None  # a .ckpt of a run, or a .safetensors export (required)
    format: str = "onnx"  # onnx, torchscript or safetensors
    output: str | None = None  # default: next to the checkpoint, with the format's suffix
    batch_size: int = 2  # the batch size of the example the model is traced with
    check_batch_size: int = 3  # another batch size, to show that the batch axis is dynamic
    image_size: int | None = (
        None  # default: the training data's size from the checkpoint, else 32 (CIFAR) / 224
    )
    opset: int = 18  # ONNX opset: 18 (the exporter's own) up to the newest the installed onnx defines
    tolerance: float = (
        1e-4  # the largest absolute difference to PyTorch accepted, relative to max(1, |logits|)
    )


ConfigStore.instance().store(name="export_options", node=ExportOptions)
