"""What every data module of this project tells the rest: classes, normalisation and whether masks exist.

Batches are dictionaries: ``image`` (B×3×H×W, normalised float), ``label`` (B), ``index`` (B, the image's id
within its split, so maps of different runs pair by id) and, where the data set has them, ``mask``
(B×H×W bool, the object).

Exact resume: the training order is a function of (shuffle_seed, epoch) (:class:`EpochShuffleSampler`) and
every augmentation a function of (seed, epoch, index), never of the global random state that checkpoints do
not hold, so a run resumed from ``last.ckpt`` sees the batches an unbroken run sees. ``state_dict`` puts the
input description (size, mean, std, class names) into every checkpoint for :func:`lficam.load` and exports.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from lficam.loading import INPUT_KEY


class EpochShuffleSampler(Sampler[int]):
    """A random order of ``range(size)`` that is a function of (seed, epoch) only.

    PyTorch's ``RandomSampler`` draws its order from the global random state, which a checkpoint does not
    hold, so a resumed run would see other batches than an unbroken one. Here epoch e's order is
    ``randperm(size)`` under a generator seeded with ``seed + e``; Lightning calls :meth:`set_epoch` at the
    start of every training epoch (``lightning.fabric.utilities.data._set_sampler_epoch``).
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


def first_items(dataset: Dataset, count: int) -> dict[str, Tensor]:
    """The first ``count`` items of a split stacked into one batch: the same images, by index, every time
    (fixed probe sets for overlays, evaluation and cross-run stability)."""
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    return {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in items[0]}


class ClassificationDataModule(pl.LightningDataModule):
    """Shared loaders and metadata; subclasses build ``self.train_set``, ``self.val_set``, ``self.test_set``."""

    num_classes: int
    class_names: list[str]
    has_masks: bool = False
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    def __init__(
        self,
        *,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        shuffle_seed: int | None = None,
    ) -> None:
        """shuffle_seed: the training order's seed; None draws it from the global random state here, which
        ``train.py`` seeds (``seed=``) before it builds the data, so a run and its resumption agree."""
        super().__init__()
        if shuffle_seed is None:
            shuffle_seed = int(torch.randint(1 << 31, ()).item())
        self.shuffle_seed = shuffle_seed
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
        sampler = None
        if train and not self._distributed():
            sampler = EpochShuffleSampler(len(dataset), self.shuffle_seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            # Under DDP, Lightning swaps a shuffling loader's sampler for a DistributedSampler, which is
            # already a function of (seed, epoch).
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def _distributed(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.world_size > 1

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    @property
    def input_size(self) -> int | None:
        """The side of the square images the model sees (``image_size`` of the data module or its config)."""
        size = getattr(self, "image_size", None) or getattr(getattr(self, "config", None), "image_size", None)
        return int(size) if size else None

    def describe_input(self) -> dict[str, Any]:
        """What a deployed model needs to know about its input: size, normalisation, class names."""
        return {
            "image_size": self.input_size,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "num_classes": int(self.num_classes),
            "class_names": [str(c) for c in self.class_names],
        }

    def state_dict(self) -> dict[str, Any]:
        """Lightning stores this in every checkpoint (plain values only: it loads with weights_only=True);
        :func:`lficam.load` and the exports read the input description from it."""
        return {INPUT_KEY: self.describe_input()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the description follows from the config."""

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
