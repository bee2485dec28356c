"""CIFAR-10 and CIFAR-100 from a local folder, in either of the formats the authors distribute.

https://www.cs.toronto.edu/~kriz/cifar.html offers a binary version (``cifar-10-batches-bin/data_batch_1.bin``
… ``test_batch.bin``: records of 1 label byte + 3072 pixel bytes; ``cifar-100-binary/train.bin``, ``test.bin``:
coarse label byte, fine label byte, 3072 pixel bytes; pixels are the 1024 red, then green, then blue values of
a 32×32 image in row-major order) and a Python version (``data_batch_1`` … pickles of dicts with ``data``
N×3072 uint8 and ``labels`` / ``fine_labels`` / ``coarse_labels``). The pickles are read by
:mod:`lficam.data.safe_pickle`, which runs no code of the file's and allocates nothing a size field asks for.

Nothing is downloaded. The validation split is carved from the training batches (``val_size`` images chosen
by ``split_seed``); the test batch is the test split. Training images get the paper's augmentation
(method.md §1.4): a 32×32 crop of the image zero-padded by 4 px, and a horizontal flip with probability ½,
both drawn from hash(run seed, stream, epoch, index) so that a resumed run sees the same images as an unbroken
one. Data content (which images are validation images) is fixed by ``split_seed``, the augmentation by the run's
seed (``shuffle_seed``), as in every data module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lficam.core.errors import UserError
from lficam.data.base import ClassificationDataModule
from lficam.data.in_memory import crop_and_flip_draws
from lficam.data.safe_pickle import MAX_BYTES, PickleRefused, read_pickle
from lficam.data.seeding import EpochSeededDataset

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
_PIXELS = 3 * 32 * 32
_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_python_batch(path: Path) -> dict[str, Any]:
    """One pickle of the Python version as a dict with str keys, refusing anything but plain data and arrays
    (:func:`lficam.data.safe_pickle.read_pickle`: no code runs, memory bounded by the file's size)."""
    try:
        batch = read_pickle(path)
    except PickleRefused as error:
        raise UserError(
            f"Refusing {str(path)!r}: it is not a CIFAR Python batch of plain arrays ({error}); "
            f"download the Python version again from {_URL}."
        ) from None
    if not isinstance(batch, dict):
        raise UserError(
            f"Refusing {str(path)!r}: a CIFAR Python batch is a dict, this file holds a {type(batch).__name__}."
        )
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def read_binary_batch(path: Path, label_bytes: int) -> tuple[Tensor, Tensor]:
    """Images (N×3×32×32 uint8) and labels (N×label_bytes int64) of one file of the binary version."""
    record = label_bytes + _PIXELS
    size = path.stat().st_size  # checked before reading: a file of any other size is not read at all
    if size == 0 or size % record or size > MAX_BYTES:
        raise UserError(
            f"{str(path)!r} is not a CIFAR binary batch: its {size} bytes are not a whole number of "
            f"{record}-byte records (at most {MAX_BYTES // record}); download the binary version again from {_URL}."
        )
    rows = torch.from_numpy(np.fromfile(path, dtype=np.uint8).reshape(-1, record))
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32).clone(), rows[:, :label_bytes].long()


def _integers(values: object) -> np.ndarray | None:
    """``values`` (a list or array of integers) as int64, or None for anything else."""
    if not isinstance(values, (list, tuple, np.ndarray)):
        return None
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, OverflowError):  # ragged or mixed lists
        return None
    if array.ndim != 1 or array.dtype.kind not in "iu":
        return None
    return array.astype(np.int64)


def _head(path: Path, size: int = 1 << 16) -> str:
    """The start of a small text file (class names), whatever its encoding or size."""
    with path.open("rb") as file:
        return file.read(size).decode(errors="replace")


class ArrayImageDataset(EpochSeededDataset):
    """Images held as N×3×32×32 uint8, normalised per item, with the CIFAR augmentation when ``augment``.

    ``indices`` select this split's images from ``images``; an item's ``index`` is its id in ``images``
    (the position in the authors' files), which is also what its augmentation is drawn for.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        indices: Tensor,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: bool = False,
        seed: int = 0,
        padding: int = 4,
    ) -> None:
        super().__init__(seed=seed, augment=augment)
        self.images, self.labels, self.indices = images, labels, indices
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.padding = padding

    def __len__(self) -> int:
        return len(self.indices)

    def crop_and_flip(self, index: int, epoch: int | None = None) -> tuple[int, int, bool]:
        """(top, left, flip) of image ``index`` in ``epoch`` (default: :meth:`epoch_of` ``index``): offsets
        into the padded image, each uniform on 0…2·padding, and a flip with probability ½."""
        return crop_and_flip_draws(self, index, self.padding, epoch)

    def __getitem__(self, item: int) -> dict[str, Tensor]:
        index = int(self.indices[item])
        image = self.images[index].float() / 255
        if self.augment:
            top, left, flip = self.crop_and_flip(index, self.epoch_of(item))
            size = image.shape[-1]
            image = F.pad(image, (self.padding,) * 4)[:, top : top + size, left : left + size]
            if flip:
                image = image.flip(-1)
        image = (image - self.mean) / self.std
        return {"image": image, "label": self.labels[index], "index": torch.tensor(index)}


class CIFARDataModule(ClassificationDataModule):
    """CIFAR-10 or CIFAR-100 (fine or coarse labels) from ``root``, binary or Python version.

    root: the folder that holds ``cifar-10-batches-bin/`` or ``cifar-10-batches-py/`` (``cifar-100-binary/``,
        ``cifar-100-python/``), or one of these folders itself.
    val_size: images moved from the training batches into the validation split (chosen by ``split_seed``).
    The augmentation, like the training order, follows ``shuffle_seed`` (the run's seed).
    """

    variant = "cifar10"
    mean, std = CIFAR_MEAN, CIFAR_STD

    def __init__(
        self,
        root: str | Path,
        *,
        num_classes: int | None = None,
        labels: str = "fine",
        val_size: int = 5000,
        split_seed: int = 0,
        augment: bool = True,
        mean: tuple[float, float, float] = CIFAR_MEAN,
        std: tuple[float, float, float] = CIFAR_STD,
        **loader_options: Any,
    ) -> None:
        super().__init__(**loader_options)
        if labels not in ("fine", "coarse") or (labels == "coarse" and self.variant == "cifar10"):
            raise UserError(
                f"labels={labels!r}: CIFAR-100 has 'fine' (100) or 'coarse' (20) labels, CIFAR-10 only 'fine'."
            )
        self.root = Path(root).expanduser()
        self.labels = labels
        expected = 10 if self.variant == "cifar10" else (100 if labels == "fine" else 20)
        if num_classes is not None and num_classes != expected:
            raise UserError(
                f"{self.title} with {labels} labels has {expected} classes, got num_classes={num_classes}."
            )
        self.num_classes = expected
        self.class_names = [f"class_{i}" for i in range(expected)]
        if val_size < 0:
            raise UserError(f"val_size must be 0 or more, got {val_size}.")
        self.val_size, self.split_seed, self.augment = val_size, split_seed, augment
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_size = 32

    @property
    def title(self) -> str:
        return "CIFAR-10" if self.variant == "cifar10" else "CIFAR-100"

    def _folders(self) -> dict[str, str]:
        if self.variant == "cifar10":
            return {"binary": "cifar-10-batches-bin", "python": "cifar-10-batches-py"}
        return {"binary": "cifar-100-binary", "python": "cifar-100-python"}

    def _files(self) -> dict[str, tuple[list[str], list[str]]]:
        if self.variant == "cifar10":
            train = [f"data_batch_{i}" for i in range(1, 6)]
            return {
                "binary": ([f + ".bin" for f in train], ["test_batch.bin"]),
                "python": (train, ["test_batch"]),
            }
        return {"binary": (["train.bin"], ["test.bin"]), "python": (["train"], ["test"])}

    def locate(self) -> tuple[str, Path]:
        """("binary" | "python", folder) of the first complete copy found in or at ``root``."""
        for kind, folder in self._folders().items():
            train, _ = self._files()[kind]
            for candidate in (self.root / folder, self.root):
                if (candidate / train[0]).is_file():
                    return kind, candidate
        folders = " or ".join(f"{f}/" for f in self._folders().values())
        raise UserError(
            f"{self.title} not found: looked for {folders} in {str(self.root)!r} (and for its files directly "
            f"there); download the binary or Python version from {_URL}, extract it into that folder, or "
            "point data.root=<folder> at an existing copy."
        )

    def _read(self, kind: str, folder: Path, names: list[str]) -> tuple[Tensor, Tensor]:
        images, labels = [], []
        for name in names:
            path = folder / name
            if not path.is_file():
                raise UserError(
                    f"{self.title} in {str(folder)!r} is incomplete: {name} is missing; extract the "
                    f"whole archive from {_URL} again."
                )
            if kind == "binary":
                pixels, label_rows = read_binary_batch(path, 1 if self.variant == "cifar10" else 2)
                label = (
                    label_rows[:, 0]
                    if self.variant == "cifar10" or self.labels == "coarse"
                    else label_rows[:, 1]
                )
            else:
                pixels, label = self._python_arrays(path)
            images.append(pixels)
            labels.append(label)
        image, label = torch.cat(images), torch.cat(labels)
        if label.numel() and (label.min() < 0 or label.max() >= self.num_classes):
            raise UserError(
                f"{self.title} labels in {str(folder)!r} range over {int(label.min())}…{int(label.max())}, "
                f"outside 0…{self.num_classes - 1}: the files belong to another data set."
            )
        return image, label

    def _python_arrays(self, path: Path) -> tuple[Tensor, Tensor]:
        batch = read_python_batch(path)
        key = "labels" if self.variant == "cifar10" else f"{self.labels}_labels"
        data = batch.get("data")
        if (
            not isinstance(data, np.ndarray)
            or data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != _PIXELS
        ):
            raise UserError(
                f"{str(path)!r} holds no N×{_PIXELS} uint8 'data' array, so it is not a {self.title} batch."
            )
        labels = _integers(batch.get(key))
        if labels is None or len(labels) != len(data):
            raise UserError(f"{str(path)!r} has no '{key}' list with one integer label per image.")
        pixels = torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, 3, 32, 32)
        return pixels, torch.from_numpy(labels)

    def _class_names(self, kind: str, folder: Path) -> list[str]:
        if kind == "binary":
            name = "batches.meta.txt" if self.variant == "cifar10" else f"{self.labels}_label_names.txt"
            path = folder / name
            text = _head(path) if path.is_file() else ""
            names = [n.strip() for n in text.splitlines() if n.strip()]
        else:
            path = folder / ("batches.meta" if self.variant == "cifar10" else "meta")
            key = "label_names" if self.variant == "cifar10" else f"{self.labels}_label_names"
            raw = read_python_batch(path).get(key, []) if path.is_file() else []
            listed = raw if isinstance(raw, (list, tuple)) else []
            names = [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in listed]
        if len(names) == self.num_classes:
            return names
        return (
            list(CIFAR10_CLASSES)
            if self.variant == "cifar10"
            else [f"class_{i}" for i in range(self.num_classes)]
        )

    def split_indices(self, size: int) -> tuple[Tensor, Tensor]:
        """(train, val) indices into the training batches: a seeded random ``val_size`` of them for val."""
        if self.val_size >= size:
            raise UserError(
                f"val_size={self.val_size} leaves no training images: {self.title} has {size} in its "
                "training batches; choose a smaller data.val_size."
            )
        order = torch.randperm(size, generator=torch.Generator().manual_seed(self.split_seed))
        return order[self.val_size :].sort().values, order[: self.val_size].sort().values

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None and self.test_set is not None:
            return
        kind, folder = self.locate()
        self.class_names = self._class_names(kind, folder)
        train_files, test_files = self._files()[kind]
        images, labels = self._read(kind, folder, train_files)
        train_idx, val_idx = self.split_indices(len(labels))
        options = {"mean": self.mean, "std": self.std, "seed": self.shuffle_seed}
        self.train_set = ArrayImageDataset(images, labels, train_idx, augment=self.augment, **options)
        self.val_set = ArrayImageDataset(images, labels, val_idx, **options)
        test_images, test_labels = self._read(kind, folder, test_files)
        self.test_set = ArrayImageDataset(test_images, test_labels, torch.arange(len(test_labels)), **options)


class CIFAR10DataModule(CIFARDataModule):
    """CIFAR-10: 10 classes, 50 000 training and 10 000 test images of 32×32 px."""

    variant = "cifar10"


class CIFAR100DataModule(CIFARDataModule):
    """CIFAR-100: 100 fine (or 20 coarse, ``labels="coarse"``) classes, 50 000 + 10 000 images of 32×32 px."""

    variant = "cifar100"
