"""Splits held in memory as uint8 beside their object masks: the dataset every built-in data module serves
(shapes, Fashion-MNIST, cluttered Fashion-MNIST), and the tensor-only cache files they keep.

A split is (images, labels, masks): images N×S×S (grey) or N×3×S×S (colour) uint8, labels N int64, masks
N×S×S booleans. Items are normalised 3×S×S float images, x = (pixels / 255 − mean) / std, per channel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lficam.data.seeding import EpochSeededDataset

Split = tuple[Tensor, Tensor, Tensor]
SPLITS = ("train", "val", "test")


def pack_masks(masks: Tensor) -> Tensor:
    """N×H×W booleans as N×⌈H·W/8⌉ uint8 (one bit a pixel): an eighth of the bytes in a cache file."""
    flat = masks.reshape(len(masks), -1).numpy()
    return torch.from_numpy(np.packbits(flat, axis=1))


def unpack_masks(packed: Tensor, height: int, width: int) -> Tensor:
    bits = np.unpackbits(packed.numpy(), axis=1, count=height * width)
    return torch.from_numpy(bits.astype(bool)).reshape(-1, height, width)


def load_cache(path: Path | None) -> dict[str, Tensor] | None:
    """A cache file's tensors, or None when there is none (tensors only: ``weights_only=True``)."""
    if path is None or not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # a half-written or foreign file: rebuild it rather than fail
        return None


def save_cache(path: Path | None, tensors: dict[str, Tensor]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # per-process name (DDP ranks share a seed), then an atomic rename: no reader sees half a file
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(tensors, tmp)
    tmp.replace(path)


def load_splits(path: Path | None, size: int) -> dict[str, Split] | None:
    """The three splits of a cache file written by :func:`save_splits` (masks size×size), or None."""
    cached = load_cache(path)
    if cached is None:
        return None
    return {
        split: (
            cached[f"{split}/images"],
            cached[f"{split}/labels"],
            unpack_masks(cached[f"{split}/masks"], size, size),
        )
        for split in SPLITS
    }


def save_splits(path: Path | None, splits: dict[str, Split]) -> None:
    """Write the three splits to one tensor-only file, masks packed one bit a pixel."""
    tensors = {}
    for split, (images, labels, masks) in splits.items():
        tensors.update(
            {f"{split}/images": images, f"{split}/labels": labels, f"{split}/masks": pack_masks(masks)}
        )
    save_cache(path, tensors)


class MaskedImageDataset(EpochSeededDataset):
    """One split: uint8 images (N×S×S grey, copied to 3 channels, or N×3×S×S), labels, N×S×S object masks;
    items are 3×S×S normalised images with their label, mask and index.

    With ``augment``, image and mask get the same random crop of the image zero-padded by ``padding`` pixels
    (none at ``padding=0``) and the same horizontal flip with probability ½, drawn from
    hash(seed, stream, epoch, index) with the streams "crop" and "flip"
    (:class:`~lficam.data.seeding.EpochSeededDataset`), so a resumed run sees the images an unbroken run saw.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        masks: Tensor,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: bool = False,
        padding: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed, augment=augment)
        self.images, self.labels, self.masks = images, labels, masks
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.padding = int(padding)

    def __len__(self) -> int:
        return len(self.labels)

    def crop_and_flip(self, index: int) -> tuple[int, int, bool]:
        """(top, left, flip) of image ``index`` in this epoch: offsets into the padded image, 0…2·padding."""
        side = 2 * self.padding + 1
        crop = self.draw(index, "crop") if self.padding else 0
        return (crop // side) % side, crop % side, bool(self.draw(index, "flip") & 1)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image, mask = self.images[index], self.masks[index]
        if self.augment:
            top, left, flip = self.crop_and_flip(index)
            if self.padding:
                size, p = image.shape[-1], self.padding
                image = F.pad(image, (p, p, p, p))[..., top : top + size, left : left + size]
                mask = F.pad(mask, (p, p, p, p))[top : top + size, left : left + size]
            if flip:
                image, mask = image.flip(-1), mask.flip(-1)
        pixels = image.float().div_(255)
        if pixels.ndim == 2:  # grey: the same plane in the three channels an ImageNet-style stem expects
            pixels = pixels.expand(3, *pixels.shape)
        return {
            "image": (pixels - self.mean) / self.std,
            "label": self.labels[index],
            "mask": mask,
            "index": torch.tensor(index),
        }


def split_datasets(
    splits: dict[str, Split],
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    seed: int,
    augment: bool,
    padding: int = 0,
) -> tuple[MaskedImageDataset, MaskedImageDataset, MaskedImageDataset]:
    """(train, val, test) datasets of three splits; only the training split is augmented."""
    options = {"mean": mean, "std": std, "seed": seed}
    return (
        MaskedImageDataset(*splits["train"], augment=augment, padding=padding, **options),
        MaskedImageDataset(*splits["val"], **options),
        MaskedImageDataset(*splits["test"], **options),
    )
