"""Data modules: the synthetic default and loaders for real data sets from local folders."""

from lficam.data.base import ClassificationDataModule
from lficam.data.shapes_datamodule import ShapesDataModule, ShapesDataset

__all__ = ["ClassificationDataModule", "ShapesDataModule", "ShapesDataset"]
