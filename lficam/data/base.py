"""What every data module of this project tells the rest: classes, normalisation and whether masks exist.

Batches are dictionaries: ``image`` (B×3×H×W, normalised float), ``label`` (B), ``index`` (B, the image's id
within its split, so maps of different runs pair by id) and, where the data set has them, ``mask``
(B×H×W bool, the object).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


class ClassificationDataModule(pl.LightningDataModule):
    """Shared loaders and metadata; subclasses build ``self.train_set``, ``self.val_set``, ``self.test_set``."""

    num_classes: int
    class_names: list[str]
    has_masks: bool = False
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    def __init__(self, *, batch_size: int = 128, eval_batch_size: int | None = None, num_workers: int = 0,
                 pin_memory: bool = False) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, *, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("The data module was used before setup(); call datamodule.setup(stage) first.")
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def normalize(self, images: Tensor) -> Tensor:
        """[0, 1] images → the model's input space."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def denormalize(self, images: Tensor) -> Tensor:
        """The model's input space → [0, 1] images for display."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images * std + mean).clamp(0, 1)
