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

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lficam.errors import UserError

#: Fashion-MNIST pixels brighter than this (of 255, i.e. 0.1 of full scale) are garment; the background of
#: the scans holds faint speckle up to about 20 that must not count.
SILHOUETTE_THRESHOLD = 25
_CHUNK = 4096


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


def read_mask(path: Path, size: tuple[int, int], image_path: Path | str) -> Tensor:
    """H×W booleans of a mask image: a pixel is object when its stored value is non-zero.

    The stored value is the palette index for palette PNGs (Pascal VOC's class masks: 0 is background),
    the grey value for grey ones, any of R, G, B for colour ones (alpha is ignored). ``size`` is the image's
    (width, height): a mask of another size is refused, it could not be aligned.
    """
    try:
        with Image.open(path) as file:
            file.load()
            if file.mode in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "F"):
                values = np.asarray(file) != 0
            elif file.mode in ("LA", "La", "PA"):
                values = np.asarray(file)[..., 0] != 0
            else:
                values = np.asarray(file.convert("RGB")).any(axis=-1)
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
