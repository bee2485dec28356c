"""The built-in synthetic data set: one shape per class on a cluttered background, with object masks.

Every image is a pure function of (seed, split, index): a per-image generator draws one vector of
uniform numbers, and all rendering is vectorised over the batch from those vectors, so image i of a split
is identical on every machine and every run, and a whole split renders in about a second.

Only the shape tells the class: colour, size, position and rotation are random, and the background
(smooth colour noise, random strokes and blobs) is drawn alike for every class, so a model that looks
at the wrong place can exist and is measurable against the ground-truth mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lficam.data.seeding import hash_seed

SHAPES = ("disk", "square", "triangle", "star", "cross", "ring", "crescent", "heart", "ell", "bowtie")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_DRAWS = 160  # uniform numbers per image; fixed so that adding a parameter never shifts existing images


def _inside(shape: str, u: Tensor, v: Tensor) -> Tensor:
    """Whether local coordinates (object radius 1, centred, unrotated) fall inside the shape."""
    rho = torch.sqrt(u * u + v * v)
    if shape == "disk":
        return rho <= 1.0
    if shape == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.8
    if shape == "triangle":
        inside = torch.ones_like(u, dtype=torch.bool)
        for angle in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):
            inside &= u * math.cos(angle) + v * math.sin(angle) >= -0.5
        return inside
    if shape == "star":
        phi = torch.atan2(v, u)
        wave = ((phi * 5 / (2 * math.pi)) % 1.0 - 0.5).abs() * 2  # 1 at the five tips, 0 between them
        return rho <= 0.42 + 0.58 * wave
    if shape == "cross":
        return ((u.abs() <= 0.3) & (v.abs() <= 1.0)) | ((v.abs() <= 0.3) & (u.abs() <= 1.0))
    if shape == "ring":
        return (rho <= 1.0) & (rho >= 0.55)
    if shape == "crescent":
        return (rho <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.8**2)
    if shape == "heart":
        x, y = u * 1.15, -v * 1.15 + 0.25
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    if shape == "ell":
        vertical = (u >= -0.8) & (u <= -0.25) & (v.abs() <= 0.95)
        horizontal = (u >= -0.8) & (u <= 0.8) & (v >= 0.4) & (v <= 0.95)
        return vertical | horizontal
    if shape == "bowtie":
        return (u.abs() <= 0.95) & (v.abs() <= 0.85 * u.abs())
    raise ValueError(shape)


@dataclass(frozen=True)
class ShapesConfig:
    """Sizes and difficulty of the synthetic data set.

    image_size: side in pixels (32–224). num_classes: how many of the 10 shapes are used.
    object_scale: (min, max) object radius as a fraction of the image side.
    clutter: number of distractor strokes and blobs per image (each drawn with probability 1/2 ... up to this).
    noise: amplitude of the smooth background noise and of the pixel noise, 0–1.
    """

    image_size: int = 32
    num_classes: int = 10
    object_scale: tuple[float, float] = (0.2, 0.32)
    clutter: int = 4
    noise: float = 0.5
    seed: int = 0


def _per_image_uniforms(indices: Tensor, split: str, seed: int) -> Tensor:
    rows = []
    for index in indices.tolist():
        generator = torch.Generator().manual_seed(hash_seed(seed, _SPLIT_IDS[split], index))
        rows.append(torch.rand(_DRAWS, generator=generator, dtype=torch.float64))
    return torch.stack(rows).float()


def _per_image_noise(indices: Tensor, split: str, seed: int, size: int) -> Tensor:
    rows = []
    for index in indices.tolist():
        generator = torch.Generator().manual_seed(hash_seed(seed, 10 + _SPLIT_IDS[split], index))
        rows.append(torch.randn(3, size, size, generator=generator))
    return torch.stack(rows)


def _grid(size: int, supersample: int) -> tuple[Tensor, Tensor]:
    n = size * supersample
    coords = (torch.arange(n, dtype=torch.float32) + 0.5) / supersample  # pixel units
    return coords.view(1, 1, n).expand(1, n, n), coords.view(1, n, 1).expand(1, n, n)


def render(indices: Tensor, split: str, config: ShapesConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Images (B×3×S×S uint8), labels (B) and object masks (B×S×S bool) for the given indices of a split."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
    size, ss = config.image_size, 2
    u_all = _per_image_uniforms(indices, split, config.seed)
    b = len(indices)
    take = iter(range(_DRAWS))

    def draw(n: int = 1) -> Tensor:
        cols = [next(take) for _ in range(n)]
        return u_all[:, cols]

    labels = (draw()[:, 0] * config.num_classes).long().clamp_max(config.num_classes - 1)
    lo, hi = config.object_scale
    radius = (lo + (hi - lo) * draw()[:, 0]) * size
    centre = radius.unsqueeze(1) + draw(2) * (size - 2 * radius).unsqueeze(1)
    angle = draw()[:, 0] * 2 * math.pi
    colour = draw(3)
    background_lowres = draw(48).view(b, 3, 4, 4)

    xs, ys = _grid(size, ss)
    # Background: a mid-grey base plus smooth colour noise.
    smooth = F.interpolate(
        background_lowres, size=(size * ss, size * ss), mode="bicubic", align_corners=False
    )
    image = 0.5 + config.noise * (smooth - 0.5)

    # Distractors, drawn alike for every class: thick strokes and soft blobs.
    for _ in range(config.clutter):
        kind, present = draw()[:, 0], draw()[:, 0] < 0.75
        p0, p1, width, blob_r = draw(2) * size, draw(2) * size, 0.5 + 1.0 * draw()[:, 0], draw()[:, 0]
        d_colour = draw(3)
        # Distance to the segment p0–p1 for strokes.
        d = p1 - p0
        t = (xs - p0[:, 0, None, None]) * d[:, 0, None, None] + (ys - p0[:, 1, None, None]) * d[
            :, 1, None, None
        ]
        t = (t / (d * d).sum(1).clamp_min(1e-6)[:, None, None]).clamp(0, 1)
        px = p0[:, 0, None, None] + t * d[:, 0, None, None]
        py = p0[:, 1, None, None] + t * d[:, 1, None, None]
        stroke = ((xs - px) ** 2 + (ys - py) ** 2).sqrt() <= width[:, None, None]
        rb = (0.06 + 0.08 * blob_r) * size
        blob = ((xs - p0[:, 0, None, None]) ** 2 + (ys - p0[:, 1, None, None]) ** 2) <= (rb**2)[:, None, None]
        shape_mask = torch.where((kind < 0.5)[:, None, None], stroke, blob) & present[:, None, None]
        image = torch.where(shape_mask.unsqueeze(1), d_colour[:, :, None, None], image)

    # The object, rendered in its own rotated frame.
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    dx = (xs - centre[:, 0, None, None]) / radius[:, None, None]
    dy = (ys - centre[:, 1, None, None]) / radius[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    inside = torch.zeros(b, size * ss, size * ss, dtype=torch.bool)
    for label in range(config.num_classes):
        rows = labels == label
        if rows.any():
            inside[rows] = _inside(SHAPES[label], u[rows], v[rows])
    image = torch.where(inside.unsqueeze(1), colour[:, :, None, None], image)

    image = F.avg_pool2d(image, ss)  # anti-aliased edges
    mask = F.avg_pool2d(inside.float().unsqueeze(1), ss).squeeze(1) >= 0.5
    image = image + 0.08 * config.noise * _per_image_noise(indices, split, config.seed, size)
    image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return image, labels, mask


SHAPE_NAMES = SHAPES
