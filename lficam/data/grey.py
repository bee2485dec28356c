"""Grey images held in memory as uint8 beside their object masks: the split both Fashion-MNIST modules
serve, the training statistics they normalise with, and the tensor-only cache files they keep.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lficam.data.seeding import EpochSeededDataset


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


def mean_std(images: Tensor) -> tuple[float, float]:
    """Mean and standard deviation of uint8 pixels in [0, 1] units, from their histogram (no float copy).

    μ = Σ_v n_v v / N / 255,  σ² = Σ_v n_v v² / N / 255² − μ².
    """
    counts = torch.bincount(images.reshape(-1), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    total = counts.sum()
    mean = float((counts * values).sum() / total)
    var = float((counts * values**2).sum() / total) - mean**2
    return mean, max(var, 0.0) ** 0.5


def resize_grey(images: Tensor, masks: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """uint8 N×h×w images and their masks at size×size: images bilinear (antialiased when shrinking),
    masks resized alike and kept where at least half covered, so they stay on the resized object."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images, masks
    out_images, out_masks = [], []
    for im, mk in zip(images.split(4096), masks.split(4096)):
        # uint8 in, uint8 out: torch's fast path for bytes, rounded like a float resize
        x = F.interpolate(im[:, None], size=(size, size), mode="bilinear", antialias=True)
        m = F.interpolate(mk[:, None].float(), size=(size, size), mode="bilinear", antialias=True)
        out_images.append(x[:, 0])
        out_masks.append(m[:, 0] >= 0.5)
    return torch.cat(out_images), torch.cat(out_masks)


class GreyMaskDataset(EpochSeededDataset):
    """One split: N×S×S uint8 grey images, labels, N×S×S object masks; items are 3×S×S normalised images.

    With ``augment``, image and mask get the same random crop of the image zero-padded by ``padding`` pixels
    and the same horizontal flip with probability ½, drawn from hash(seed, stream, epoch, index)
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
        crop = self.draw(index, "crop")
        return (crop // side) % side, crop % side, bool(self.draw(index, "flip") & 1)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image, mask = self.images[index], self.masks[index]
        if self.augment:
            top, left, flip = self.crop_and_flip(index)
            if self.padding:
                size, p = image.shape[-1], self.padding
                image = F.pad(image, (p, p, p, p))[top : top + size, left : left + size]
                mask = F.pad(mask, (p, p, p, p))[top : top + size, left : left + size]
            if flip:
                image, mask = image.flip(-1), mask.flip(-1)
        pixels = image.float().div_(255).expand(3, *image.shape)
        return {
            "image": (pixels - self.mean) / self.std,
            "label": self.labels[index],
            "mask": mask,
            "index": torch.tensor(index),
        }
