"""Every metric of method.md §4 for one set of maps of the same images: the one definition of each number.

``eval.py`` (its table and metrics.json) and the reproduction study (docs/results.md) both call
:func:`score_maps`; what differs between them is only the :class:`~lficam.evaluation.protocol.Protocol`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lficam import metrics
from lficam.evaluation.images import Probe
from lficam.evaluation.protocol import STABILITY_ALL, Protocol

OWN = "own"  # the model's own map: LFI-CAM's A, ABN's M, the plain model's CAM of the predicted class
#: metric name → (higher is better, needs masks); the rows of every table, in this order
METRICS: dict[str, tuple[bool, bool]] = {
    "pointing_game": (True, True),
    "energy_pointing_game": (True, True),
    "mask_iou": (True, True),
    "deletion_auc": (False, False),
    "insertion_auc": (True, False),
    "average_drop": (False, False),
    "increase_in_confidence": (True, False),
    "road_morf": (False, False),
    "road_lerf": (True, False),
    "road_combined": (True, False),
    "stability_noise_iou": (True, False),
    "stability_noise_spearman": (True, False),
    "stability_flip_iou": (True, False),
    "stability_flip_spearman": (True, False),
}

#: metric name → higher is better (the study's tables and verdicts)
HIGHER_IS_BETTER: dict[str, bool] = {name: higher for name, (higher, _) in METRICS.items()}

#: metric name → how tables for people name it (the study's report, the explorer)
METRIC_NAMES: dict[str, str] = {
    "pointing_game": "pointing game",
    "energy_pointing_game": "energy pointing game",
    "mask_iou": "mask IoU",
    "deletion_auc": "deletion AUC",
    "insertion_auc": "insertion AUC",
    "average_drop": "Average Drop %",
    "increase_in_confidence": "Increase in Confidence %",
    "road_morf": "ROAD MoRF",
    "road_lerf": "ROAD LeRF",
    "road_combined": "ROAD combined",
    "stability_noise_iou": "noise stability IoU",
    "stability_noise_spearman": "noise stability ρ",
    "stability_flip_iou": "flip stability IoU",
    "stability_flip_spearman": "flip stability ρ",
}


def arrow(metric: str) -> str:
    """``↑`` where a higher value of ``metric`` is better, ``↓`` where a lower one is: every table's marker."""
    return "↑" if HIGHER_IS_BETTER[metric] else "↓"


MapFn = Callable[[Tensor], Tensor]


@dataclass
class MapScores:
    """One method's scores: ``values`` (means over images) and the deletion/insertion ``curves``
    (``fractions``, ``deletion``, ``insertion``: per image), empty when faithfulness is off."""

    values: dict[str, float]
    curves: dict[str, Tensor] = field(default_factory=dict)


def image_mean(values: Tensor) -> float:
    """Mean over images with undefined (NaN) values left out; NaN when none is defined."""
    return float(values.float().nanmean()) if values.numel() else math.nan


@contextlib.contextmanager
def _no_stage(name: str) -> Iterator[None]:
    yield


def score_maps(
    model: nn.Module,
    probe: Probe,
    maps: Tensor,
    map_fn: MapFn,
    protocol: Protocol,
    num_classes: int,
    method: str = OWN,
    stage: Callable[[str], Any] = _no_stage,
) -> MapScores:
    """Score ``maps`` (B×H×W, of ``probe.images``, for the predicted classes) with every metric:

    - localisation, where the probe has masks: the pointing game (a hit within 15 px at 224 px, scaled; the
      hit rate per class, then the mean over classes; Zhang et al. 2016), the energy pointing game (Score-CAM,
      Wang et al. 2020) and mask IoU at ``protocol.mask_iou_threshold`` of each map's range;
    - faithfulness on the first ``protocol.faithfulness_images``: deletion and insertion AUC (RISE, Petsiuk et
      al. 2018; trapezoid over the removed fraction), Average Drop % and Increase in Confidence % (Grad-CAM++);
    - ROAD (Rong et al. 2022) MoRF, LeRF and their difference, when ``protocol.road``;
    - input stability on the first ``protocol.stability_images`` (the own map, or every map with
      ``stability_maps="all"``): IoU at > 100/255 and Spearman's ρ between Φ(x) and Φ(x + δ) for Gaussian
      noise and the left-right flip (``map_fn`` computes Φ of a perturbed image, for the class predicted on it).

    ``stage(name)`` is a context manager around each part (a progress bar's stage), a no-op by default.
    """
    values: dict[str, float | Tensor] = {}  # ROAD's scores are per image
    curves: dict[str, Tensor] = {}
    images, batch = probe.images, protocol.batch_size
    if probe.masks is not None:
        with stage(f"{method}: localisation"):
            values.update(_localisation(maps, probe, protocol, num_classes))
    if protocol.faithfulness:
        n = protocol.first("faithfulness", images.shape[0])
        x, m = images[:n], maps[:n]
        steps = {"pixels_per_step": protocol.step_pixels(*images.shape[-2:]), "batch_size": batch}
        with stage(f"{method}: deletion, insertion"):
            fractions, deletion = metrics.deletion_curve(model, x, m, **steps)
            _, insertion = metrics.insertion_curve(model, x, m, **steps)
        values["deletion_auc"] = image_mean(torch.trapezoid(deletion, fractions, dim=1))
        values["insertion_auc"] = image_mean(torch.trapezoid(insertion, fractions, dim=1))
        curves = {"fractions": fractions, "deletion": deletion, "insertion": insertion}
        with stage(f"{method}: average drop, increase in confidence"):
            clean, masked = metrics.masked_scores(model, x, m, batch_size=batch)
        values["average_drop"] = image_mean(metrics.drop_from_scores(clean, masked))
        values["increase_in_confidence"] = image_mean(metrics.increase_from_scores(clean, masked))
    if protocol.road:
        with stage(f"{method}: ROAD"):
            road = metrics.road(
                model, images, maps, percentages=tuple(protocol.road_percentages), batch_size=batch
            )
        values.update(road_morf=road.morf, road_lerf=road.lerf, road_combined=road.combined)
    if protocol.stability and (method == OWN or protocol.stability_maps == STABILITY_ALL):
        k = protocol.first("stability", images.shape[0])
        with stage(f"{method}: stability"):
            for kind in ("noise", "flip"):
                scores = metrics.perturbation_stability(
                    map_fn,
                    images[:k],
                    kind,
                    noise_std=protocol.noise_std,
                    samples=protocol.noise_samples,
                    batch_size=batch,
                    base_maps=maps[:k],
                )
                values[f"stability_{kind}_iou"] = image_mean(scores.iou)
                values[f"stability_{kind}_spearman"] = image_mean(scores.spearman)
    return MapScores({k: v if isinstance(v, float) else image_mean(v) for k, v in values.items()}, curves)


def _localisation(maps: Tensor, probe: Probe, protocol: Protocol, num_classes: int) -> dict[str, float]:
    """Pointing game (per class, then over classes), energy pointing game and mask IoU. An image whose mask is
    empty (no object in view) has no value and is left out; :class:`~lficam.metrics.PointingGame` says how many
    (once for every method of the same images)."""
    assert probe.masks is not None
    pointing = metrics.PointingGame(num_classes, stage="test").to(maps.device)
    pointing.update(maps, probe.masks, probe.labels)
    return {
        "pointing_game": float(pointing.compute()),
        "energy_pointing_game": image_mean(metrics.energy_pointing_game(maps, probe.masks)),
        "mask_iou": image_mean(metrics.mask_iou(maps, probe.masks, threshold=protocol.mask_iou_threshold)),
    }
