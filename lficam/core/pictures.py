"""Pictures of attention maps: heat-map overlays and labelled grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from lficam.core.maps import upsample


def colorize(maps: Tensor, cmap: str = "jet") -> Tensor:
    """B×H×W maps in [0, 1] → B×3×H×W RGB through a matplotlib colour map, on the maps' device.

    A non-finite value (a model whose activations overflowed) is drawn as 0, the colour map's first colour:
    rounding NaN to an integer index would give an arbitrary one. Callers say how many maps had such values
    (:func:`count_nonfinite`)."""
    lut = torch.tensor(
        matplotlib.colormaps[cmap](torch.linspace(0, 1, 256).numpy())[:, :3],
        dtype=torch.float32,
        device=maps.device,
    )
    index = (torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp(0, 1) * 255).round().long()
    return lut[index].permute(0, 3, 1, 2)


def count_nonfinite(maps: Tensor) -> int:
    """How many of the B maps (B×…) hold a NaN or infinite value."""
    return int((~torch.isfinite(maps.float())).flatten(1).any(dim=1).sum())


def overlay(images: Tensor, maps: Tensor, alpha: float = 0.5) -> Tensor:
    """Blend maps (B×h×w, upsampled bilinearly to the images' size) over images (B×3×H×W in [0, 1])."""
    maps = upsample(maps, images.shape[-2:])
    return ((1 - alpha) * images + alpha * colorize(maps)).clamp(0, 1)


def save_overlay_grid(
    path: str | Path,
    images: Tensor,
    maps: dict[str, Tensor],
    titles: Sequence[str] | None = None,
    columns: int = 8,
) -> Path:
    """Save one figure: for each image, the image and one overlay per named map (rows of ``columns``).

    images: B×3×H×W in [0, 1]; maps: name → B×h×w in [0, 1]; titles: one per image.

    The panels are tiled into one picture with a white band above each for its label, drawn as one image:
    a matplotlib axes per panel made every training run's final grid cost about a second, most of it in laying
    out the axes' titles.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = images.detach().float().cpu()
    panels = [("image", images)] + [
        (name, overlay(images, m.detach().float().cpu())) for name, m in maps.items()
    ]
    b, _, h, w = images.shape
    columns = min(columns, b)
    rows = (b + columns - 1) // columns * len(panels)
    band, gap = max(2, round(0.12 * w)), max(1, round(0.06 * w))  # label band above a panel, space beside it
    canvas = torch.ones(3, rows * (band + h), columns * (w + gap) - gap)
    labels = []
    for i in range(b):
        image_row, c = divmod(i, columns)
        for p, (name, tensor) in enumerate(panels):
            top, left = (image_row * len(panels) + p) * (band + h) + band, c * (w + gap)
            canvas[:, top : top + h, left : left + w] = tensor[i]
            label = titles[i] if (titles is not None and p == 0) else name if c == 0 or p > 0 else ""
            if label:
                labels.append((left + w / 2, top - 0.1 * band, label))
    width = 1.6 * columns
    fig = plt.figure(figsize=(width, width * canvas.shape[1] / canvas.shape[2]))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.axis("off")
    ax.imshow(canvas.permute(1, 2, 0).numpy())
    for x, y, label in labels:
        ax.text(x, y, label, ha="center", va="bottom", fontsize=7, clip_on=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_side_by_side(
    path: str | Path | BinaryIO, image: Tensor, maps: dict[str, Tensor], title: str = ""
) -> Path | BinaryIO:
    """Save one image and its named maps as overlays in one row, under a title, as PNG.

    image: 3×H×W in [0, 1]; maps: name → h×w in [0, 1] (upsampled to H×W for display); path: a file name, or a
    binary file object (the explorer's download button writes into memory).
    """
    if isinstance(path, str | Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
    images = image.detach().float().cpu().unsqueeze(0)
    panels = [("image", images)] + [
        (name, overlay(images, m.detach().float().cpu().unsqueeze(0))) for name, m in maps.items()
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6), squeeze=False)
    for ax, (name, tensor) in zip(axes[0], panels):
        ax.imshow(tensor[0].permute(1, 2, 0).numpy())
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return path


def save_deletion_insertion(
    path: str | Path, curves: dict[str, dict[str, Tensor]], score: str = "probability of the class"
) -> Path:
    """Each method's mean deletion and insertion curve (Petsiuk et al. 2018), one panel each.

    ``curves[method]`` holds ``fractions`` (steps,) and ``deletion`` / ``insertion`` (images × steps) of the
    ``score``; images whose curve is NaN at a step (no map) are left out of that step's mean.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, c in curves.items():
        if not c:
            continue
        for ax, kind in zip(axes, ("deletion", "insertion")):
            ax.plot(c["fractions"].cpu(), c[kind].float().nanmean(dim=0).nan_to_num(0.0).cpu(), label=method)
    for ax, kind in zip(axes, ("deletion (lower is better)", "insertion (higher is better)")):
        ax.set_title(kind)
        ax.set_xlabel("fraction of pixels")
        ax.set_ylabel(score)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
