"""Cross-run stability of maps (method.md §1.5, §4.3): the paper's protocol on the maps the study kept per run.

For runs r, s of one group and the same test images (paired by image id): IoU of the two maps binarised at
> 100/255 of each map's min-max range (:func:`lficam.metrics.map_iou`) and Spearman's ρ
(:func:`lficam.metrics.rank_correlation`), each averaged over the images (images where both maps select
nothing, or a map is flat, left out); then mean ± std over the pairs of the group. The std over pairs is the
population std, as ``eval.py stability.runs=`` reports it (the pairs share runs, so they are not independent);
NaN for a single pair.
Groups: each stability model across the settings (the paper's experiment), and every kept map across the seeds
(the control: how much a map changes with the seed alone).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lficam import metrics as M
from lficam.metrics.stability import PAPER_THRESHOLD


def _mean(values: Tensor) -> float:
    return float(values.float().nanmean())


def similarity_matrices(maps: list[Tensor], threshold: float = PAPER_THRESHOLD) -> tuple[Tensor, Tensor]:
    """n×n mean IoU and mean Spearman ρ between every two of n map sets of the same images (symmetric)."""
    n = len(maps)
    iou = torch.full((n, n), float("nan"))
    rho = torch.full((n, n), float("nan"))
    for i in range(n):
        for j in range(i, n):
            iou[i, j] = iou[j, i] = _mean(M.map_iou(maps[i], maps[j], threshold=threshold))
            rho[i, j] = rho[j, i] = _mean(M.rank_correlation(maps[i], maps[j]))
    return iou, rho


def pair_statistics(iou: Tensor, rho: Tensor, members: list[int]) -> dict[str, Any]:
    """Mean ± std (population) over the pairs of ``members`` (indices into the matrices)."""
    pairs = [(a, b) for k, a in enumerate(members) for b in members[k + 1 :]]
    if not pairs:
        return {"runs": len(members), "pairs": 0}
    pi = torch.tensor([float(iou[a, b]) for a, b in pairs], dtype=torch.float64)
    pr = torch.tensor([float(rho[a, b]) for a, b in pairs], dtype=torch.float64)

    def stat(values: Tensor) -> tuple[float, float]:
        values = values[~values.isnan()]
        if not len(values):
            return math.nan, math.nan
        # one pair has no spread to speak of (eval.py prints 0 for it): unknown, so no verdict leans on it
        return float(values.mean()), float(values.std(unbiased=False)) if len(values) > 1 else math.nan

    iou_mean, iou_std = stat(pi)
    rho_mean, rho_std = stat(pr)
    return {
        "runs": len(members),
        "pairs": len(pairs),
        "iou_mean": iou_mean,
        "iou_std": iou_std,
        "spearman_mean": rho_mean,
        "spearman_std": rho_std,
        "iou_pairs": pi.tolist(),
        "spearman_pairs": pr.tolist(),
    }


def stability_groups(
    entries: list[dict[str, Any]], groups: dict[str, list[str]], threshold: float = PAPER_THRESHOLD
) -> dict[str, Any]:
    """``entries``: [{"label": str, "maps": B×H×W}], all of the same images; ``groups``: name → labels.

    Returns the matrices (over all entries, for the picture) and each group's pair statistics.
    """
    labels = [e["label"] for e in entries]
    iou, rho = similarity_matrices([e["maps"] for e in entries], threshold)
    stats = {}
    for name, members in groups.items():
        stats[name] = {**pair_statistics(iou, rho, [labels.index(m) for m in members]), "members": members}
    return {"labels": labels, "iou_matrix": iou.tolist(), "spearman_matrix": rho.tolist(), "groups": stats}
