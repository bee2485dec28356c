"""What every data module of this project tells the rest: classes, normalisation and whether masks exist.

Batches are dictionaries: ``image`` (B×3×H×W, normalised float), ``label`` (B), ``index`` (B, the image's id
within its split, so maps of different runs pair by id) and, where the data set has them, ``mask``
(B×H×W bool, the object).

One rule for every data module: the data's content (rendered shapes, the CIFAR validation split) is fixed by
the data config's own seeds (``data.seed``, ``data.split_seed``); the training order and every augmentation
draw by the run's seed (``shuffle_seed``, which the data configs set to ``${seed}``). A seed sweep then trains
on one data set, each run with its own order and augmentation.

Exact resume, with any number of data-loader workers: the training order is a function of (shuffle_seed,
epoch) (:class:`~lficam.data.seeding.EpochShuffleSampler`) and every augmentation a function of (shuffle_seed,
epoch, index) (:class:`~lficam.data.seeding.EpochSeededDataset`), never of the global random state that
checkpoints do not hold; the indices carry their epoch to the workers, and :class:`EpochDataLoader` draws the
order at the first batch (see there why), so a run resumed from ``last.ckpt`` sees the batches an unbroken run
sees; a checkpoint taken inside an epoch (``every_n_train_steps``) resumes at its next batch
(:meth:`ClassificationDataModule.trained_in_epoch`). ``state_dict`` puts the input description (size, mean, std, class names) into every checkpoint for
:func:`lficam.load` and exports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lficam.data.seeding import EpochShuffleSampler

__all__ = ["INPUT_KEY", "ClassificationDataModule", "EpochDataLoader", "EpochShuffleSampler", "first_items"]

#: Key of the data module's input description (image size, mean, std, class names) inside a Lightning
#: checkpoint (:meth:`ClassificationDataModule.state_dict` writes it, :mod:`lficam.checkpoints.loading` reads it).
INPUT_KEY = "lficam_input"


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(x − mean) / std per channel: [0, 1] B×3×H×W images → a model's input space."""
    shape = (1, len(mean), 1, 1)
    return (images - torch.tensor(mean, device=images.device).view(shape)) / torch.tensor(
        std, device=images.device
    ).view(shape)


class EpochDataLoader(DataLoader):
    """A DataLoader whose iterator starts (spawns or wakes its workers, draws the sampler's order) at the first
    batch, not when ``iter()`` is called.

    Lightning's fit loop calls ``iter()`` on the training loader once when fitting starts, before it sets
    the sampler's epoch, and on resume it trains the resumed epoch from that very iterator. PyTorch's
    multi-process iterator draws indices and prefetches ``prefetch_factor × num_workers`` batches inside
    ``iter()``, so the resumed epoch e would replay epoch 0's order (and, from indices carrying epoch 0, its
    augmentation); without workers the draw happens at the first ``next()`` and all is well. Deferring the
    start to the first ``next()`` makes the multi-process case behave like the single-process one: by then
    Lightning has called ``set_epoch``. Everything else (batching, workers, pinning) is PyTorch's.
    """

    def __iter__(self) -> Iterator[Any]:
        return _StartsAtFirstBatch(self, super().__iter__)

    # Lightning's stateful-loader protocol, with nothing to keep: where a resumed epoch starts is Lightning's
    # own restored batch counter (ClassificationDataModule.trained_in_epoch). Declaring it silences Lightning's
    # warning that a mid-epoch checkpoint cannot be resumed, which for this loader is not true.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""


class _StartsAtFirstBatch(Iterator[Any]):
    def __init__(self, loader: DataLoader, start: Callable[[], Iterator[Any]]) -> None:
        self._loader, self._start, self._iterator = loader, start, None

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._start()
        return next(self._iterator)

    def __len__(self) -> int:
        return len(self._loader)


def first_items(dataset: Dataset, count: int) -> dict[str, Tensor]:
    """The first ``count`` items of a split stacked into one batch: the same images, by index, every time
    (fixed probe sets for overlays, evaluation and cross-run stability)."""
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    return {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in items[0]}


#: data options that decide how images are served, not which images a split holds: loaders, caches, the run's
#: seed for order and augmentation (so runs of a seed sweep still compare map by map)
LOADER_KEYS = frozenset(
    {
        "batch_size",
        "eval_batch_size",
        "num_workers",
        "pin_memory",
        "persistent_workers",
        "cache_dir",
        "augment",
        "shuffle_seed",
        "augment_seed",
        "skip_bad_images",
    }
)


def content_config(data_config: dict[str, Any]) -> dict[str, Any]:
    """The data options that decide the images of every split (:data:`LOADER_KEYS` left out), sorted."""
    return {k: v for k, v in sorted(data_config.items()) if k not in LOADER_KEYS}


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
        persistent_workers: bool = False,
        shuffle_seed: int | None = None,
    ) -> None:
        """persistent_workers: keep the loader's worker processes between epochs (with ``num_workers > 0``).
        shuffle_seed: the run's seed, for the training order and every augmentation draw (the data configs
        pass ``${seed}``); None draws it from the global random state here, which ``train.py`` seeds
        (``seed=``) before it builds the data, so a run and its resumption agree."""
        super().__init__()
        if shuffle_seed is None:
            shuffle_seed = int(torch.randint(1 << 31, ()).item())
        self.shuffle_seed = shuffle_seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, *, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("The data module was used before setup(); call datamodule.setup(stage) first.")
        sampler = None
        if train:
            # under DDP too: Lightning keeps a DistributedSampler (which this is) instead of its own
            replicas, rank = self._replicas()
            sampler = EpochShuffleSampler(
                len(dataset),
                self.shuffle_seed,
                num_replicas=replicas,
                rank=rank,
                position=self.trained_in_epoch,
            )
        return EpochDataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def _replicas(self) -> tuple[int, int]:
        """(world size, global rank) of the trainer this module is attached to, (1, 0) without one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def trained_in_epoch(self) -> int:
        """How many images of this rank's share of the current training epoch were trained on already: 0 at an
        epoch's start, k × batch size in a run resumed from a checkpoint taken after its k-th batch.

        The count is Lightning's own batch counter, restored from the checkpoint with the loops and read when
        the epoch's first batch is drawn (:class:`EpochDataLoader` draws its order then). It lives in the
        trainer, not in the loader, so no loader state has to survive Lightning's restore order, which drops
        a stateful loader's state when ``configure_optimizers`` reads ``trainer.estimated_stepping_batches``
        (Lightning issue 20550).
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None or not trainer.training:
            return 0
        return trainer.fit_loop.epoch_loop.batch_progress.current.ready * self.batch_size

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
        return normalize(images, self.mean, self.std)

    def denormalize(self, images: Tensor) -> Tensor:
        """The model's input space → [0, 1] images for display."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images * std + mean).clamp(0, 1)
