"""What a streamed data set holds: the items of its litdata chunks and the metadata file beside them.

``lficam-optimize`` writes, under its output (a folder or ``s3://bucket/prefix``), one litdata data set per
split (``train/``, ``val/``, ``test/``: ``index.json`` and ``chunk-*.bin``) and ``lficam.json``:

- an item is ``{"image": PNG bytes, "label": int, "index": int}`` plus ``"mask": PNG bytes`` in a split with
  object masks. PNG is lossless, so a streamed image is the source's pixels exactly (uint8, grey or RGB, at
  the source's image size, before augmentation and normalisation). ``index`` is the image's id in the source
  split, so maps pair by id and every augmentation is drawn for the same id as the source's.
- ``lficam.json`` holds what the source module knew: class names, mean and std, the image size, which splits
  have masks, and its augmentation (a crop of the image zero-padded by ``padding`` pixels and a flip, drawn
  from (seed, epoch, index) as :class:`~lficam.data.in_memory.MaskedImageDataset` draws them).

Only the serialisers named in :data:`ITEM_FORMATS` are accepted when reading: litdata can also store pickled
objects, which would run code from whoever wrote the chunks.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.io import encode_png

from lficam.core.errors import UserError
from lficam.data.cifar import ArrayImageDataset
from lficam.data.decode import MAX_PIXELS, decode_rgb
from lficam.data.image_folder import ImageFileDataset
from lficam.data.in_memory import MaskedImageDataset

METADATA_FILE = "lficam.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
#: litdata serialiser names an lficam chunk may use (bytes: PNG images and masks; int: label and index)
ITEM_FORMATS = frozenset({"bytes", "int"})


@dataclass
class StreamMetadata:
    """The contents of ``lficam.json``."""

    class_names: list[str]
    mean: list[float]
    std: list[float]
    image_size: int
    padding: int
    augment: bool
    masks: dict[str, bool] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    source: str = ""
    #: an image folder's geometry ({"scale": [lo, hi], "resize_size": n}: its RandomResizedCrop and flip, or its
    #: resize and centre crop, on images stored at their own size); None: the padded crop above
    resized_crop: dict[str, Any] | None = None
    format: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, where: str) -> StreamMetadata:
        try:
            values = json.loads(text)
            if values.get("format") != FORMAT_VERSION:
                raise ValueError(f"format {values.get('format')!r}, expected {FORMAT_VERSION}")
            return cls(**values)
        except (ValueError, TypeError, AttributeError) as error:
            raise UserError(
                f"{where} is not an lficam streamed data set's metadata ({error}); write the data set again "
                "with lficam-optimize."
            ) from error


def encode_item(image: Tensor, label: int, index: int, mask: Tensor | None) -> dict[str, Any]:
    """One chunk item from uint8 pixels (S×S grey or 3×S×S) and an S×S boolean mask (None: no mask)."""
    item: dict[str, Any] = {
        "image": _png(image if image.ndim == 3 else image[None]),
        "label": int(label),
        "index": int(index),
    }
    if mask is not None:
        item["mask"] = _png(mask[None].to(torch.uint8))
    return item


def _png(pixels: Tensor) -> bytes:
    return encode_png(pixels.contiguous(), compression_level=1).numpy().tobytes()


def decode_png_bytes(data: bytes) -> Tensor:
    """PNG bytes → uint8 C×H×W (the exact pixels :func:`encode_item` was given).

    Pillow, not torchvision: torchvision's PNG decoder kills the process on corrupt image data (see
    :mod:`lficam.data.decode`), and a damaged chunk must be one sentence. The header is checked first (grey
    or RGB, at most ``MAX_PIXELS``), so a damaged size field cannot make the decoder allocate a huge image.
    """
    with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
        if image.mode not in ("L", "RGB"):
            raise ValueError(f"a {image.mode} PNG where lficam writes grey or RGB")
        if image.width * image.height > MAX_PIXELS:
            raise ValueError(f"a {image.width}×{image.height} PNG")
        pixels = torch.from_numpy(np.asarray(image).copy())
    return pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1).contiguous()


def decode_item(item: dict[str, Any]) -> tuple[Tensor, int, int, Tensor | None]:
    """(uint8 image, S×S for grey or 3×S×S; label; index; S×S boolean mask or None) of a chunk item."""
    image = decode_png_bytes(item["image"])
    if image.shape[0] == 1:
        image = image[0]
    mask = decode_png_bytes(item["mask"])[0].bool() if "mask" in item else None
    return image, int(item["label"]), int(item["index"]), mask


def source_items(dataset: Any) -> Iterator[tuple[Tensor, int, int, Tensor | None]]:
    """(uint8 image, label, index, mask or None) of every image of a source split, before augmentation."""
    if isinstance(dataset, MaskedImageDataset):
        for i in range(len(dataset)):
            yield dataset.images[i], int(dataset.labels[i]), i, dataset.masks[i]
    elif isinstance(dataset, ArrayImageDataset):
        for i in range(len(dataset)):
            index = int(dataset.indices[i])
            yield dataset.images[index], int(dataset.labels[index]), index, None
    elif isinstance(dataset, ImageFileDataset):  # at the file's own size, its mask (or box) likewise
        for i in range(len(dataset)):
            path, label = dataset.samples[i]
            image = decode_rgb(path)
            size = (image.shape[-1], image.shape[-2])
            yield image, int(label), i, dataset._mask(i, path, label, size) if dataset.has_masks else None
    else:
        raise UserError(
            f"lficam-optimize streams image_folder and the data modules held in memory (shapes, fashion_mnist, "
            f"fashion_clutter, cifar10, cifar100), not {type(dataset).__name__}; choose one of those."
        )


def has_masks(dataset: Any) -> bool:
    return isinstance(dataset, MaskedImageDataset) or (
        isinstance(dataset, ImageFileDataset) and dataset.has_masks
    )
