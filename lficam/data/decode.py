"""Image files → 3×H×W uint8 RGB tensors, with the faster decoder that is safe for each format.

torchvision.io (libjpeg-turbo, libwebp) decodes JPEG and WebP about 1.4× faster than Pillow at 224 px on this
project's CPUs (``bench/data.py`` measures both) and is used for them. PNG goes to Pillow although
torchvision's libpng path is faster too: torchvision 0.29's PNG decoder kills the process (segmentation
fault, after "libpng error: IDAT: …") on a PNG with corrupt image data, which no ``except`` can catch, while
a thousand mutated JPEGs and WebPs only ever raised (the same family as pytorch/vision#3613). Pillow also
decodes the rest (BMP, TIFF, GIF …) and anything torchvision refuses. Both give the same pixels: grey,
palette and grey+alpha images are expanded to RGB, alpha is dropped (not composited), 16-bit samples are
scaled to 8 bits (v >> 8), and the EXIF orientation is not applied (as torchvision's ImageFolder does not).

The header is read first (Pillow's lazy open: no pixel data) and an image of more than ``MAX_PIXELS``
pixels is refused before any decoder allocates it: a small file claiming a huge size cannot exhaust memory.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image

from lficam.core.errors import UserError

#: Pillow's decompression-bomb limit (a warning above it, an error at twice it); ImageNet's largest is 0.02 of it.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
_TORCHVISION_FORMATS = {"JPEG", "MPO", "WEBP"}  # not PNG: see the module docstring
_PIL_ERRORS = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    SyntaxError,
    EOFError,
    Image.DecompressionBombError,
)


class BadImageError(UserError):
    """An image file that no decoder reads: its path and the reason, in one sentence."""

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        self.reason = reason or ""
        if reason is None:  # rebuilt from its message alone, as PyTorch does after a data-loader worker
            self.path = ""
            super().__init__(str(path))
            return
        self.path = str(path)
        super().__init__(
            f"Cannot read image {self.path!r} ({reason}); remove or replace the file, or set "
            "data.skip_bad_images=true to skip unreadable images."
        )


def _reason(error: BaseException) -> str:
    if isinstance(error, UnidentifiedImageError):  # Pillow names the in-memory buffer, not the file
        return "UnidentifiedImageError: no image format Pillow knows"
    return f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else 'no detail'}"


def image_size_of(path: str | Path, data: bytes | None = None) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) from the header only; refuses unknown formats and oversized images."""
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: the size check below says it in a sentence
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if data is not None else path) as image:
                fmt, size = image.format or "", image.size
    except Image.DecompressionBombError as error:  # past twice the limit, Pillow refuses before the size
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        raise BadImageError(path, _too_large(int(pixels.group(1)) if pixels else None)) from None
    except _PIL_ERRORS as error:
        raise BadImageError(path, _reason(error)) from None
    if min(size) < 1:
        raise BadImageError(path, f"it is {size[0]}×{size[1]} px, an image without pixels")
    if size[0] * size[1] > MAX_PIXELS:
        raise BadImageError(path, _too_large(size[0] * size[1]))
    return fmt, size


def _too_large(pixels: int | None) -> str:
    return (
        f"its {pixels if pixels is not None else 'many'} pixels exceed PIL's limit of {MAX_PIXELS} against "
        "decompression bombs; resize the image, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
    )


_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment, walking the segments from the start; None
    when the walk fails (Pillow then reads the header). Faster than Pillow's open by the ~0.7 ms that is
    a tenth of loading a 224 px training crop."""
    if data[:2] != b"\xff\xd8":
        return None
    position = 2
    while position + 9 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _SOF_MARKERS:
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            return (width, height) if width and height else None
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            position += 2
            continue
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return None


def _with_pillow(path: str | Path, data: bytes) -> Tensor:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode.startswith("I;16") or image.mode == "I":
                # 16-bit grey: scale to 8 bits as torchvision does (Pillow's convert would clip at 255)
                grey = (np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
                array = np.repeat(grey[..., None], 3, axis=2)
            else:
                array = np.asarray(image.convert("RGB"))
    except _PIL_ERRORS as error:
        raise BadImageError(path, _reason(error)) from None
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def decode_rgb(path: str | Path) -> Tensor:
    """The image at ``path`` as a 3×H×W uint8 RGB tensor; :class:`BadImageError` when it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise BadImageError(path, f"{type(error).__name__}: {error.strerror or error}") from None
    return decode_rgb_data(path, data)


def decode_rgb_data(name: str | Path, data: bytes) -> Tensor:
    """The image file content ``data`` (an upload, say; ``name`` for messages) as a 3×H×W uint8 RGB tensor,
    with the same guards as :func:`decode_rgb`: the size read from the header first, ``MAX_PIXELS`` at most."""
    path = name
    size = _jpeg_size(data)
    if size is not None and size[0] * size[1] <= MAX_PIXELS:
        fmt, (width, height) = "JPEG", size
    else:
        fmt, (width, height) = image_size_of(path, data)
    if fmt in _TORCHVISION_FORMATS:
        try:
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except Exception:
            image = None  # a variant torchvision refuses (or a broken file): Pillow decides
        if image is not None and tuple(image.shape[-2:]) == (height, width):
            return image
    return _with_pillow(path, data)


def looks_complete(path: str | Path) -> str | None:
    """None when the file's header parses and, for JPEG, PNG and WebP, its end marker is where it belongs;
    else the reason. Reads the header and the last kilobyte only: the cheap pre-scan of
    ``data.skip_bad_images`` (a file that passes may still fail to decode; the loader then skips it)."""
    try:
        fmt, _ = image_size_of(path)
        with open(path, "rb") as file:
            file.seek(0, 2)
            length = file.tell()
            file.seek(max(0, length - 1024))
            tail = file.read()
            file.seek(0)
            head = file.read(12)
    except BadImageError as error:
        return str(error)
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "the JPEG has no end-of-image marker: it is truncated"
    if fmt == "PNG" and b"IEND" not in tail:
        return "the PNG has no IEND chunk: it is truncated"
    if fmt == "WEBP" and int.from_bytes(head[4:8], "little") + 8 > length:
        return "the WebP is shorter than its RIFF header says: it is truncated"
    return None
