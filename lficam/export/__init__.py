"""Exporting a trained model (ONNX, TorchScript, safetensors) and checking the export against PyTorch
(``python -m lficam.export``)."""

from lficam.export.exporter import ExportReport, export, run_export
from lficam.export.options import ExportOptions

__all__ = ["ExportOptions", "ExportReport", "export", "run_export"]
