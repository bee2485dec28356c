"""The study's pictures: accuracy and pointing game with error bars, a stability matrix per data set, and one grid
of the same test images under every map. Each function takes the numbers of results.json and a path."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
from torch import Tensor

from lficam.core.pictures import save_overlay_grid
from lficam.study.report import MODEL_NAMES, attention_rows, map_name


def _bars(ax: Any, labels: list[str], stats: list[dict[str, Any]], title: str, ylabel: str) -> None:
    """Bars at the mean, error bars of ± one std, and each seed's value as a dot."""
    means = [s.get("mean") if s and not _nan(s.get("mean")) else 0.0 for s in stats]
    stds = [s.get("std") if s and not _nan(s.get("std")) else 0.0 for s in stats]
    xs = list(range(len(labels)))
    ax.bar(xs, means, yerr=stds, capsize=3, color="#8fb3d9", edgecolor="#2b5d8a")
    for x, s in zip(xs, stats):
        values = (s or {}).get("values") or []
        ax.plot([x] * len(values), values, "k.", markersize=4)
    ax.set_xticks(xs, labels, rotation=45, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_ylim(0, 1.0)


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _grid(count: int) -> tuple[Any, Any]:
    fig, axes = plt.subplots(1, count, figsize=(4.2 * count, 3.6), squeeze=False)
    return fig, axes[0]


def accuracy_figure(results: dict[str, Any], path: Path) -> Path:
    models = results["study"]["models"]
    fig, axes = _grid(len(results["datasets"]))
    for ax, (name, ds) in zip(axes, results["datasets"].items()):
        _bars(
            ax,
            [MODEL_NAMES.get(m, m) for m in models],
            [ds["accuracy"].get(m) for m in models],
            name,
            "test accuracy",
        )
    return _save(fig, path)


def pointing_figure(results: dict[str, Any], path: Path) -> Path:
    """The pointing game of every map (own maps, then post-hoc CAMs), per data set."""
    models = results["study"]["models"]
    fig, axes = _grid(len(results["datasets"]))
    for ax, (name, ds) in zip(axes, results["datasets"].items()):
        keys = [k for k in attention_rows(ds, models) if "pointing_game" in ds["attention"][k]]
        _bars(
            ax,
            [map_name(k) for k in keys],
            [ds["attention"][k]["pointing_game"] for k in keys],
            name,
            "pointing game",
        )
    return _save(fig, path)


def stability_figure(name: str, stability: dict[str, Any], shown: list[str], path: Path) -> Path:
    """The IoU and Spearman matrices of the runs in ``shown`` (labels of the stability entries)."""
    labels = stability["labels"]
    index = [labels.index(s) for s in shown]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 0.75 * len(shown), 2.6 + 0.32 * len(shown)))
    for ax, key, title, low in (
        (axes[0], "iou_matrix", "map IoU (> 100/255)", 0.0),
        (axes[1], "spearman_matrix", "Spearman ρ", -1.0),
    ):
        matrix = [[stability[key][i][j] for j in index] for i in index]
        values = [[math.nan if v is None else v for v in row] for row in matrix]
        image = ax.imshow(values, vmin=low, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(shown)), shown, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(shown)), shown, fontsize=7)
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5.5, color="w")
        ax.set_title(f"{name}: {title}", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)


def maps_figure(images: Tensor, maps: dict[str, Tensor], path: Path, titles: list[str] | None = None) -> Path:
    """The same test images under every map (one row per map)."""
    return save_overlay_grid(
        path, images, {map_name(k): v for k, v in maps.items()}, titles=titles, columns=len(images)
    )


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
