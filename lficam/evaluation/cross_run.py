"""Cross-run stability of maps (method.md §1.5, §4.3): the one definition that ``eval.py stability.runs=`` and
the reproduction study both report.

For runs r, s and the same test images, paired by image id: IoU of the two maps binarised at > 100/255 of each
map's min-max range (:func:`lficam.metrics.map_iou`) and Spearman's ρ (:func:`lficam.metrics.rank_correlation`),
each the mean over the images (an image where both maps select nothing, or a map is flat, left out). Over the
pairs of a group of runs: the mean and the population standard deviation (the pairs share runs, so they are
not independent samples). A group of two runs has one pair and no spread to measure: its std is NaN
(written as null, printed as "—"), never 0, so that no verdict leans on it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lficam.metrics import map_iou, rank_correlation
from lficam.metrics.stability import PAPER_THRESHOLD


def _image_mean(values: Tensor) -> float:
    """Mean over images, undefined (NaN) images left out; NaN when none is defined."""
    return float(values.float().nanmean()) if values.numel() else math.nan


def similarity_matrices(maps: list[Tensor], threshold: float = PAPER_THRESHOLD) -> tuple[Tensor, Tensor]:
    """n×n mean IoU and mean Spearman ρ between every two of n map sets B×H×W of the same images (symmetric;
    the diagonal compares a run with itself)."""
    n = len(maps)
    iou = torch.full((n, n), math.nan, dtype=torch.float64)
    rho = torch.full((n, n), math.nan, dtype=torch.float64)
    for i in range(n):
        for j in range(i, n):  # both measures are symmetric: each pair once, mirrored
            iou[i, j] = iou[j, i] = _image_mean(map_iou(maps[i], maps[j], threshold=threshold))
            rho[i, j] = rho[j, i] = _image_mean(rank_correlation(maps[i], maps[j]))
    return iou, rho


def _mean_and_std(values: Tensor) -> tuple[float, float]:
    """Mean and population std of the defined values; NaN std for one value, NaN both for none."""
    values = values[~values.isnan()]
    if not len(values):
        return math.nan, math.nan
    spread = float(values.std(unbiased=False)) if len(values) > 1 else math.nan
    return float(values.mean()), spread


def pair_statistics(iou: Tensor, rho: Tensor, members: list[int]) -> dict[str, Any]:
    """Mean ± std over the pairs of ``members`` (indices into the matrices), with the per-pair values."""
    pairs = [(a, b) for k, a in enumerate(members) for b in members[k + 1 :]]
    pair_iou = torch.tensor([float(iou[a, b]) for a, b in pairs], dtype=torch.float64)
    pair_rho = torch.tensor([float(rho[a, b]) for a, b in pairs], dtype=torch.float64)
    iou_mean, iou_std = _mean_and_std(pair_iou)
    rho_mean, rho_std = _mean_and_std(pair_rho)
    return {
        "runs": len(members),
        "pairs": len(pairs),
        "iou_mean": iou_mean,
        "iou_std": iou_std,
        "spearman_mean": rho_mean,
        "spearman_std": rho_std,
        "iou_pairs": pair_iou.tolist(),
        "spearman_pairs": pair_rho.tolist(),
    }


def group_statistics(
    maps: list[Tensor], groups: dict[str, list[int]], threshold: float = PAPER_THRESHOLD
) -> dict[str, Any]:
    """The matrices over all map sets and each group's pair statistics (groups of fewer than two runs are
    kept with ``pairs`` 0 and NaN statistics)."""
    iou, rho = similarity_matrices(maps, threshold)
    return {
        "iou_matrix": iou.tolist(),
        "spearman_matrix": rho.tolist(),
        "groups": {name: pair_statistics(iou, rho, members) for name, members in groups.items()},
    }
