"""Cross-run stability of the maps the study kept per run (method.md §1.5, §4.3), by
:func:`lficam.evaluation.cross_run.group_statistics`: the definition ``eval.py stability.runs=`` reports too (mean
IoU at > 100/255 and Spearman's ρ over images paired by id; mean ± population std over the pairs of a group; NaN
std for a single pair).

Groups: each stability model across the settings (the paper's experiment), and every kept map across the seeds
(the control: how much a map changes with the seed alone).
"""

from __future__ import annotations

from typing import Any

from lficam.evaluation.cross_run import group_statistics
from lficam.metrics.stability import PAPER_THRESHOLD


def stability_groups(
    entries: list[dict[str, Any]], groups: dict[str, list[str]], threshold: float = PAPER_THRESHOLD
) -> dict[str, Any]:
    """``entries``: [{"label": str, "maps": B×H×W}], all of the same images; ``groups``: name → labels.

    Returns the labels, the matrices (over all entries, for the picture) and each group's pair statistics.
    """
    labels = [e["label"] for e in entries]
    members = {name: [labels.index(m) for m in names] for name, names in groups.items()}
    compared = group_statistics([e["maps"] for e in entries], members, threshold)
    stats = {name: {**compared["groups"][name], "members": names} for name, names in groups.items()}
    return {
        "labels": labels,
        "iou_matrix": compared["iou_matrix"],
        "spearman_matrix": compared["spearman_matrix"],
        "groups": stats,
    }
