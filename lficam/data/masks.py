"""Object masks: silhouettes of grey garments (holes filled) and mask images read from a data folder.

A silhouette is the set of pixels brighter than a threshold with its holes filled. A hole is background
that the image border cannot reach: the background reachable from the border is grown from the border
pixels through 4-connected background pixels until it stops changing (a flood fill, vectorised over the
batch: each round spreads the reached set along whole row runs, then whole column runs, of background;
images stop once a round changes nothing), and everything it never reaches is object. 4-connected background with 8-connected objects is
the usual pairing (Rosenfeld 1970), so a diagonal gap in an outline does not open a hole to the outside.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lficam.core.errors import UserError

#: Fashion-MNIST pixels brighter than this (of 255, i.e. 0.1 of full scale) are garment; the background of
#: the scans holds faint speckle up to about 20 that must not count.
SILHOUETTE_THRESHOLD = 25
_CHUNK = 4096
#: A lossy mask's pixel is object from this value on (of 255): half range. JPEG's ringing around a drawn
#: edge leaves small non-zero values in the background, which "non-zero is object" would count.
LOSSY_THRESHOLD = 128
_WEBP_CHUNKS = 64  # chunks looked at for the image data's kind: a WebP file has a handful before it


def fill_holes(masks: Tensor) -> Tensor:
    """B×H×W booleans with every background region that does not touch the border turned to object."""
    if masks.ndim != 3:
        raise ValueError(f"fill_holes expects B×H×W masks, got shape {tuple(masks.shape)}")
    masks = masks.bool()
    if masks.numel() == 0:
        return masks.clone()
    return torch.cat([_fill_chunk(chunk) for chunk in masks.split(_CHUNK)])


def _runs(background: Tensor) -> Tensor:
    """The index of each pixel's run along its row: the count of object pixels before it (object pixels get
    the index of the run they end), 0…W."""
    return (~background).to(torch.int16).cumsum(dim=2, dtype=torch.int16).long()


def _spread(reached: Tensor, background: Tensor, runs: Tensor) -> Tensor:
    """Every row run of background pixels that holds a reached pixel, reached in full: each run's maximum
    over ``reached`` scattered back to all of its pixels."""
    b, h, w = background.shape
    hit = torch.zeros(b, h, w + 1, dtype=torch.uint8, device=background.device)
    hit.scatter_reduce_(2, runs, reached.to(torch.uint8), reduce="amax")
    return hit.gather(2, runs).bool() & background


def _fill_chunk(masks: Tensor) -> Tensor:
    background = ~masks
    columns = background.transpose(1, 2).contiguous()
    row_runs, column_runs = _runs(background), _runs(columns)
    # Seed: the background pixels on the border. Then spread along rows and columns in turn until nothing
    # changes: each round crosses a whole run at once, so the rounds are the turns of the longest path.
    reached = torch.zeros_like(background)
    reached[:, [0, -1]] = background[:, [0, -1]]
    reached[:, :, [0, -1]] |= background[:, :, [0, -1]]
    result = torch.empty_like(background)
    ids = torch.arange(len(masks), device=masks.device)
    while len(ids):
        grown = _spread(reached, background, row_runs)
        grown = _spread(grown.transpose(1, 2), columns, column_runs).transpose(1, 2)
        changed = (grown != reached).flatten(1).any(dim=1)
        reached = grown
        if 2 * int(changed.sum()) <= len(ids):  # set finished images aside once they are half or more
            result[ids[~changed]] = reached[~changed]
            ids, reached, background = ids[changed], reached[changed], background[changed]
            columns, row_runs, column_runs = columns[changed], row_runs[changed], column_runs[changed]
    return ~result


def silhouettes(images: Tensor, threshold: int = SILHOUETTE_THRESHOLD) -> Tensor:
    """Object masks of grey uint8 images (B×H×W): pixels > ``threshold``, holes filled."""
    return fill_holes(images > threshold)


def _webp_is_lossy(file: BinaryIO, end: int) -> bool | None:
    """Whether the WebP chunks from the file's position to ``end`` hold lossy ("VP8 ") or lossless ("VP8L")
    image data; None when neither comes first. An animation's first frame (ANMF) is looked into."""
    for _ in range(_WEBP_CHUNKS):
        start = file.tell()
        header = file.read(8)
        if len(header) < 8 or start + 8 > end:
            return None
        kind, size = header[:4], int.from_bytes(header[4:], "little")
        if kind in (b"VP8 ", b"VP8L"):
            return kind == b"VP8 "
        if kind == b"ANMF":  # 16 bytes of frame geometry, then the frame's own chunks
            file.seek(start + 8 + 16)
            return _webp_is_lossy(file, start + 8 + size)
        file.seek(start + 8 + size + (size & 1))  # chunks are padded to an even length
    return None


def lossy_format(file: BinaryIO) -> str | None:
    """The lossy kind of data in the open ``file`` ("JPEG", "lossy WebP" or "JPEG-compressed TIFF"), from its
    bytes whatever its name says; None for lossless data (PNG, BMP, GIF, lossless WebP, other TIFFs) and for
    anything else. Leaves the file at its start."""
    file.seek(0)
    head = file.read(12)
    try:
        if head.startswith(b"\xff\xd8\xff"):
            return "JPEG"
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return "lossy WebP" if _webp_is_lossy(file, 8 + int.from_bytes(head[4:8], "little")) else None
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            file.seek(0)
            with Image.open(file) as image:  # the header only: nothing is decoded
                compression = image.info.get("compression")
            return "JPEG-compressed TIFF" if compression in ("jpeg", "tiff_jpeg") else None
        return None
    except Exception:  # a damaged file is not lossy data; read_mask names it when it cannot be read
        return None
    finally:
        file.seek(0)


def lossy_mask_format(path: Path | str) -> str | None:
    """:func:`lossy_format` of the file at ``path`` (None when it cannot be opened)."""
    try:
        with open(path, "rb") as file:
            return lossy_format(file)
    except OSError:
        return None


def _object_pixels(file: Image.Image, threshold: int | None) -> np.ndarray:
    """H×W booleans: the stored values that mark the object are non-zero (``threshold`` None) or at least
    ``threshold``."""
    if file.mode in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(file)
    elif file.mode in ("LA", "La", "PA"):
        values = np.asarray(file)[..., 0]
    else:  # colour: any of R, G, B
        values = np.asarray(file.convert("RGB"))
    marked = values != 0 if threshold is None else values >= threshold
    return marked if marked.ndim == 2 else marked.any(axis=-1)


def read_mask(path: Path, size: tuple[int, int], image_path: Path | str) -> Tensor:
    """H×W booleans of a mask image: a pixel is object when its stored value is non-zero, or, for lossy data
    (:func:`lossy_format`: JPEG, lossy WebP, whatever the file's name), at least ``LOSSY_THRESHOLD`` (128 of
    255), so that compression ringing around the object's edge is not object.

    The stored value is the palette index for palette PNGs (Pascal VOC's class masks: 0 is background),
    the grey value for grey ones, any of R, G, B for colour ones (alpha is ignored). ``size`` is the image's
    (width, height): a mask of another size is refused, it could not be aligned.
    """
    try:
        with open(path, "rb") as raw:
            threshold = LOSSY_THRESHOLD if lossy_format(raw) else None
            with Image.open(raw) as file:
                file.load()
                values = _object_pixels(file, threshold)
                found = file.size
    except Exception as error:  # Pillow raises assorted types on malformed files: all mean "unreadable"
        raise UserError(
            f"Cannot read mask {str(path)!r} ({type(error).__name__}: {str(error)[:120]}); "
            "replace it with a PNG whose non-zero pixels mark the object."
        ) from None
    if tuple(found) != tuple(size):
        raise UserError(
            f"Mask {str(path)!r} is {found[0]}×{found[1]} px but its image {str(image_path)!r} is "
            f"{size[0]}×{size[1]}; a mask must have its image's size."
        )
    return torch.from_numpy(np.ascontiguousarray(values))
