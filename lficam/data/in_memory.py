"""Splits held in memory as uint8 beside their object masks: the dataset every built-in data module serves
(shapes, Fashion-MNIST, cluttered Fashion-MNIST), and the tensor-only cache files they keep.

A split is (images, labels, masks): images N×S×S (grey) or N×3×S×S (colour) uint8, labels N int64, masks
N×S×S booleans. Items are normalised 3×S×S float images, x = (pixels / 255 − mean) / std, per channel.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lficam.core.errors import os_error_reason
from lficam.core.tensor_files import TensorFileError, read_torch_file
from lficam.data.seeding import EpochSeededDataset

log = logging.getLogger("lficam")

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
    """A cache file's tensors, or None when there is none or it cannot be read.

    The file is read as a user's torch file is (:func:`lficam.core.tensor_files.read_torch_file`: tensors only,
    records within the file). One that cannot be read (a damaged or foreign file, or one the OS refuses) is
    rebuilt rather than fail the run, with a warning that names it and says why.
    """
    if path is None or not path.is_file():
        return None
    try:
        # opened here first so that the OS's refusal is told in its words, not as a damaged archive
        with path.open("rb"):
            pass
        return read_torch_file(path)
    except OSError as error:
        reason = os_error_reason(error)
    except TensorFileError as error:  # every way torch.load fails on foreign bytes, as one type
        reason = str(error)
    log.warning(
        "Cannot read the cache file %s (%s): building the data from its source instead and writing the "
        "cache again.",
        path,
        reason,
    )
    return None


def save_cache(path: Path | None, tensors: dict[str, Tensor]) -> None:
    """Write ``tensors`` to ``path`` (nothing when None); a cache that cannot be written is warned about and
    skipped: the data is in memory already, and the next run builds it again."""
    if path is None:
        return
    # per-process name (DDP ranks share a seed), then an atomic rename: no reader sees half a file
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(tensors, tmp)
        tmp.replace(path)
    except OSError as error:
        reason = os_error_reason(error)
    except RuntimeError as error:  # torch.save's own file writer reports a failed write (a full disk) so
        reason = str(error).strip()
    else:
        return
    with contextlib.suppress(OSError):  # none was begun, or its folder is what could not be made
        tmp.unlink(missing_ok=True)
    log.warning(
        "Cannot write the cache file %s (%s): using the data built in memory without caching it, so the next "
        "run builds it again.",
        path,
        reason,
    )


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
        return crop_and_flip_draws(self, index, self.padding)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image, mask = self.images[index], self.masks[index]
        if self.augment:
            image, mask = crop_and_flip(image, mask, *self.crop_and_flip(index), padding=self.padding)
        return {
            "image": normalized(image, self.mean, self.std),
            "label": self.labels[index],
            "mask": mask,
            "index": torch.tensor(index),
        }


def crop_and_flip_draws(
    draws: EpochSeededDataset, index: int, padding: int, epoch: int | None = None
) -> tuple[int, int, bool]:
    """(top, left, flip) of image ``index``: offsets into the ``padding``-padded image, each uniform on
    0…2·padding, and a flip with probability ½, drawn from ``draws``' "crop" and "flip" streams (in ``epoch``,
    by default the one ``draws`` gives the index). The one draw of every padded-crop data set and of the
    streamed copies of their items, so that these stay the same images."""
    side = 2 * padding + 1
    crop = draws.draw(index, "crop", epoch=epoch) if padding else 0
    return (crop // side) % side, crop % side, bool(draws.draw(index, "flip", epoch=epoch) & 1)


def crop_and_flip(
    image: Tensor, mask: Tensor | None, top: int, left: int, flip: bool, *, padding: int
) -> tuple[Tensor, Tensor | None]:
    """The same crop of the ``padding``-padded image and mask at (top, left), and the same horizontal flip:
    :class:`MaskedImageDataset`'s augmentation, also applied to streamed items (:mod:`lficam.data.streaming`)."""
    if padding:
        size, p = image.shape[-1], padding
        image = F.pad(image, (p, p, p, p))[..., top : top + size, left : left + size]
        if mask is not None:
            mask = F.pad(mask, (p, p, p, p))[top : top + size, left : left + size]
    if flip:
        image = image.flip(-1)
        mask = mask.flip(-1) if mask is not None else None
    return image, mask


def normalized(image: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 S×S (grey) or 3×S×S pixels → a 3×S×S float image, (pixels / 255 − mean) / std per channel."""
    pixels = image.float().div_(255)
    if pixels.ndim == 2:  # grey: the same plane in the three channels an ImageNet-style stem expects
        pixels = pixels.expand(3, *pixels.shape)
    return (pixels - mean) / std


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
