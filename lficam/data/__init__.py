"""Data modules: the synthetic default and loaders for real data sets from local folders."""

from lficam.data.base import ClassificationDataModule, EpochShuffleSampler
from lficam.data.cifar import CIFAR10DataModule, CIFAR100DataModule, CIFARDataModule
from lficam.data.fashion_clutter import FashionClutterDataModule
from lficam.data.fashion_mnist import FashionMNISTDataModule
from lficam.data.image_folder import ImageFolderDataModule
from lficam.data.shapes_datamodule import ShapesDataModule, ShapesDataset
from lficam.data.streaming import StreamingDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CIFARDataModule",
    "ClassificationDataModule",
    "EpochShuffleSampler",
    "FashionClutterDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "ShapesDataModule",
    "ShapesDataset",
    "StreamingDataModule",
]
