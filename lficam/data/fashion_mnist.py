"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, arXiv 1708.07747) from its four IDX files, with garment masks.

60 000 training and 10 000 test images of 28×28 grey garments in 10 classes. Debian ships them as the
package ``dataset-fashion-mnist`` (``make fashion-mnist`` installs it; the files land in
``/usr/share/datasets/fashion-mnist/``); ``root`` may be any folder holding the four files, gzipped or not.
Nothing is downloaded.

- Validation: ``val_size`` images carved from the training files by ``seed`` (the data set's content seed,
  ``data.seed``); ``train_size`` and ``test_size`` optionally keep only the first images of a split (the
  training ones in the carved random order), for short runs.
- Input: each image resized to ``image_size`` (bilinear), the grey value repeated on 3 channels, normalised
  with the mean and standard deviation of the training split's pixels (computed, not assumed, so a subset
  or another size gets its own: 0.2855 and 0.3384 for the 55 000 training images of seed 0 at 32 px).
- Masks: the garment's silhouette, pixels > :data:`~lficam.data.masks.SILHOUETTE_THRESHOLD` (25 of 255) with
  holes filled (:func:`~lficam.data.masks.silhouettes`), resized with the image. Approximate: a sandal's
  open straps count as background, a dark print inside a shirt as garment.
- Augmentation (training): a crop of the image zero-padded by ``padding`` pixels and a horizontal flip,
  applied to image and mask alike, drawn from the run's seed, epoch and index.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lficam.core.errors import UserError
from lficam.data.base import ClassificationDataModule
from lficam.data.grey import normalisation, resize_grey
from lficam.data.idx import read_idx
from lficam.data.in_memory import Split, load_splits, save_splits, split_datasets
from lficam.data.masks import SILHOUETTE_THRESHOLD, silhouettes
from lficam.data.seeding import hash_seed, stream_id

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: Where Debian's dataset-fashion-mnist puts the files.
DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SIZES = {"train": 60000, "test": 10000}
HOW_TO_GET = (
    "run `make fashion-mnist` (installs the Debian package dataset-fashion-mnist into "
    f"{DEBIAN_FOLDER}/) or set data.root=<folder holding the four files>"
)


@dataclass(frozen=True)
class Garments:
    """Fashion-MNIST images of one split at 28 px: N×28×28 uint8, N labels, N×28×28 silhouettes."""

    images: Tensor
    labels: Tensor
    masks: Tensor

    def take(self, indices: Tensor) -> Garments:
        return Garments(self.images[indices], self.labels[indices], self.masks[indices])

    def __len__(self) -> int:
        return len(self.labels)


def locate(root: str | Path | None) -> dict[str, tuple[Path, Path]]:
    """(images, labels) file of each split in ``root`` (None: Debian's folder), plain or ``.gz``."""
    folder = Path(root).expanduser() if root else DEBIAN_FOLDER
    found, missing = {}, []
    for split, names in FILES.items():
        paths = []
        for name in names:
            candidates = [folder / name, folder / f"{name}.gz"]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                missing.append(name)
            paths.append(path)
        found[split] = tuple(paths)
    if missing:
        where = f"{str(folder)!r}" + (" (does not exist)" if not folder.is_dir() else "")
        raise UserError(
            f"Fashion-MNIST not found: {where} lacks {', '.join(f'{m}[.gz]' for m in missing)}; {HOW_TO_GET}."
        )
    return found


def fingerprint(files: dict[str, tuple[Path, Path]]) -> str:
    """A short SHA-1 of the four files' bytes (as stored): the key of every cache built from them."""
    digest = hashlib.sha1()
    for split in sorted(files):
        for path in files[split]:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _read_split(split: str, images_path: Path, labels_path: Path) -> tuple[Tensor, Tensor]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != torch.uint8 or images.ndim != 3 or tuple(images.shape[1:]) != (28, 28):
        raise UserError(
            f"{str(images_path)!r} holds a {images.dtype} array of shape {tuple(images.shape)}, not N×28×28 "
            "uint8 images: it is not a Fashion-MNIST image file."
        )
    if labels.dtype != torch.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise UserError(
            f"{str(labels_path)!r} holds a {labels.dtype} array of shape {tuple(labels.shape)}, not one uint8 "
            f"label for each of the {len(images)} images of {images_path.name}."
        )
    if len(labels) and int(labels.max()) >= len(FASHION_CLASSES):
        raise UserError(
            f"{str(labels_path)!r} has label {int(labels.max())}; Fashion-MNIST labels are 0…9: "
            "the file belongs to another data set."
        )
    return images, labels.long()


def load_garments(root: str | Path | None, threshold: int = SILHOUETTE_THRESHOLD) -> dict[str, Garments]:
    """Both files' splits (``train``: 60 000, ``test``: 10 000) with their silhouettes."""
    garments = {}
    for split, (images_path, labels_path) in locate(root).items():
        images, labels = _read_split(split, images_path, labels_path)
        garments[split] = Garments(images, labels, silhouettes(images, threshold))
    return garments


def carve(size: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """(train, val) positions into the training files: a random order drawn from ``seed``; the first
    ``val_size`` are the validation split, the rest the training split, both in that random order."""
    if not 0 <= val_size < size:
        raise UserError(
            f"val_size={val_size} must be at least 0 and leave training images: the Fashion-MNIST training "
            f"files hold {size}; choose a smaller data.val_size."
        )
    generator = torch.Generator().manual_seed(hash_seed(seed, stream_id("fashion_mnist/val")))
    order = torch.randperm(size, generator=generator)
    return order[val_size:], order[:val_size]


def _first(indices: Tensor, count: int | None, name: str, available: int) -> Tensor:
    if count is None:
        return indices
    if not 1 <= count <= available:
        raise UserError(f"{name}={count} must be between 1 and the {available} images available.")
    return indices[:count]


def garment_splits(
    root: str | Path | None, *, val_size: int, seed: int, threshold: int = SILHOUETTE_THRESHOLD
) -> dict[str, Garments]:
    """Train, val (carved from the training files by ``seed``) and test garments."""
    garments = load_garments(root, threshold)
    train_idx, val_idx = carve(len(garments["train"]), val_size, seed)
    return {
        "train": garments["train"].take(train_idx),
        "val": garments["train"].take(val_idx),
        "test": garments["test"],
    }


def _triple(value: Any, name: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    values = [float(value)] if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or (name == "std" and min(values) <= 0):
        raise UserError(f"data.{name} must be null (computed), one number or three, got {value!r}.")
    return tuple(values)


class FashionMNISTDataModule(ClassificationDataModule):
    """Fashion-MNIST with silhouette masks (see the module docstring).

    root: the folder with the four IDX files (None: Debian's ``/usr/share/datasets/fashion-mnist``).
    image_size: the side the images are resized to (28 keeps them as they are).
    val_size: training images carved into the validation split by ``seed``.
    train_size, test_size: keep only that many images (None: all).
    seed: the content seed (the carving); augment_seed: the augmentation's (None: the training order's,
        drawn from the run's seeded random state).
    mean, std: None computes them from the training split.
    cache_dir: where the prepared splits are cached, keyed by the files' fingerprint and every setting
        (None: prepared again every run, a few seconds).
    """

    has_masks = True

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        num_classes: int = 10,
        image_size: int = 32,
        val_size: int = 5000,
        train_size: int | None = None,
        test_size: int | None = None,
        seed: int = 0,
        augment: bool = True,
        padding: int = 4,
        augment_seed: int | None = None,
        threshold: int = SILHOUETTE_THRESHOLD,
        cache_dir: str | None = None,
        mean: Any = None,
        std: Any = None,
        **loader_options: Any,
    ) -> None:
        super().__init__(**loader_options)
        if num_classes != 10:
            raise UserError(f"Fashion-MNIST has 10 classes, got data.num_classes={num_classes}.")
        if not 8 <= image_size <= 512:
            raise UserError(f"data.image_size must be between 8 and 512 pixels, got {image_size}.")
        if not 0 <= threshold < 255:
            raise UserError(f"data.threshold is a grey level in 0…254, got {threshold}.")
        self.root = root
        self.image_size = int(image_size)
        self.val_size, self.train_size, self.test_size = int(val_size), train_size, test_size
        self.seed, self.augment, self.padding, self.threshold = (
            int(seed),
            augment,
            int(padding),
            int(threshold),
        )
        self.augment_seed = self.shuffle_seed if augment_seed is None else int(augment_seed)
        self.cache_dir = cache_dir
        self.given_mean, self.given_std = _triple(mean, "mean"), _triple(std, "std")
        self.num_classes = 10
        self.class_names = list(FASHION_CLASSES)

    def _cache_path(self) -> Path | None:
        if not self.cache_dir:
            return None
        key = fingerprint(locate(self.root))
        sizes = f"n{self.train_size}_{self.val_size}_{self.test_size}"
        name = f"splits-{key}-s{self.image_size}-{sizes}-seed{self.seed}-t{self.threshold}-v1.pt"
        return Path(self.cache_dir) / "fashion_mnist" / name

    def build_splits(self) -> dict[str, Split]:
        """(images N×S×S uint8, labels, masks N×S×S) of each split at ``image_size``, from the cache when
        one was written for these files and settings (tensors only, masks one bit a pixel)."""
        path = self._cache_path()
        cached = load_splits(path, self.image_size)
        if cached is not None:
            return cached
        splits = garment_splits(self.root, val_size=self.val_size, seed=self.seed, threshold=self.threshold)
        sizes = {"train": self.train_size, "val": None, "test": self.test_size}
        arrays = {}
        for split, garments in splits.items():
            keep = _first(torch.arange(len(garments)), sizes[split], f"data.{split}_size", len(garments))
            images, masks = resize_grey(garments.images[keep], garments.masks[keep], self.image_size)
            arrays[split] = (images, garments.labels[keep].clone(), masks)
        save_splits(path, arrays)
        return arrays

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        arrays = self.build_splits()
        self.mean, self.std = normalisation(arrays["train"][0], self.given_mean, self.given_std)
        self.train_set, self.val_set, self.test_set = split_datasets(
            arrays,
            mean=self.mean,
            std=self.std,
            seed=self.augment_seed,
            augment=self.augment,
            padding=self.padding,
        )
