"""Localisation of a map against a ground-truth object mask.

Maps and masks are B×H×W at the same (image) size; each function returns one value per image (a 1-D
tensor of length B) and NaN where the value is undefined, so that the mean over images is the paper's
number and undefined images are left out, never counted as hits. Images with an empty mask (no object) are
left out by every localisation metric; :class:`PointingGame` counts them and, given the stage it scores, says
how many in one warning (:func:`report_empty_masks`).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from torchmetrics import Metric

from lficam.core.errors import UserError
from lficam.core.maps import is_flat, minmax
from lficam.metrics._common import PerImageMean

log = logging.getLogger("lficam")
_REPORTED_MAX = (
    1000  # (stage, count, total) triples remembered: bounded, for a process running many evaluations
)
_reported: set[tuple[str, int, int]] = set()


def report_empty_masks(empty: int, images: int, stage: str) -> None:
    """One warning, once per process for each (stage, count, total), that ``empty`` of the ``images`` scored
    had an empty mask and were left out of the localisation metrics (their values would be NaN)."""
    if empty <= 0 or (stage, empty, images) in _reported:
        return
    if len(_reported) < _REPORTED_MAX:
        _reported.add((stage, empty, images))
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:  # the counts are every rank's already: rank 0 says them
        return
    log.warning(
        "%d of the %d %s images scored by the localisation metrics have an empty mask (no object: an all-zero "
        "mask file, boxes outside the image, or no mask or box file) and were left out of the pointing game, "
        "energy pointing game and mask IoU%s.",
        empty,
        images,
        stage,
        "; every image was, so these metrics are NaN" if empty == images else "",
    )


def _check_pair(maps: Tensor, masks: Tensor) -> None:
    if maps.ndim != 3 or masks.shape != maps.shape:
        raise ValueError(
            f"Expected maps and masks of the same shape B×H×W, got {tuple(maps.shape)} and {tuple(masks.shape)}; "
            "upsample the maps to the masks' size first."
        )


def pointing_game(maps: Tensor, masks: Tensor, tolerance: float = 15.0) -> Tensor:
    """Pointing game (Zhang et al., ECCV 2016): 1.0 when the map's maximum lies within ``tolerance``
    pixels of the object, else 0.0.

    hit_i = 1[min_{p ∈ mask_i} ‖argmax(map_i) − p‖₂ ≤ tolerance]
    The maximum is the first one in raster order; a map flat up to float rounding (:func:`is_flat`) is flat. The reference tolerance is 15 px at 224×224: pass
    ``15 * side / 224`` for other image sizes (the training module does). A flat map (max = min) points
    nowhere and is a miss (0.0); an empty mask gives NaN.
    Higher is better.
    """
    _check_pair(maps, masks)
    b, h, w = maps.shape
    flat = maps.reshape(b, -1)
    peak = flat.argmax(dim=1)
    py, px = (peak // w).float(), (peak % w).float()
    ys = torch.arange(h, device=maps.device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=maps.device, dtype=torch.float32).view(1, 1, w)
    near = (ys - py.view(b, 1, 1)) ** 2 + (xs - px.view(b, 1, 1)) ** 2 <= tolerance**2
    mask = masks.bool()
    hit = (near & mask).flatten(1).any(dim=1).float()
    flat_map = is_flat(maps)
    hit = torch.where(flat_map, torch.zeros_like(hit), hit)
    return torch.where(mask.flatten(1).any(dim=1), hit, torch.full_like(hit, float("nan")))


class PointingGame(Metric):
    """Pointing-game accuracy computed per class, then averaged over the classes seen (Zhang et al. 2016).

    Sums of hits and counts per class are the states, so the value is exact under DDP. Images with an
    empty mask are left out and counted: with ``stage`` ("val", "test") given, :meth:`compute` says how many
    in one warning (:func:`report_empty_masks`), unless ``report_empty`` is False (Lightning's sanity check,
    whose few batches are not the epoch). ``tolerance`` is in pixels at 224 px and scaled to each
    batch's image size.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(
        self, num_classes: int, tolerance_at_224: float = 15.0, stage: str | None = None, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.tolerance_at_224 = tolerance_at_224
        self.stage = stage
        self.report_empty = True
        self.add_state("hits", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        # images seen and those of them with an empty mask (summed over ranks, like the hits)
        self.add_state("images", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("empty", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, maps: Tensor, masks: Tensor, labels: Tensor) -> None:
        tolerance = self.tolerance_at_224 * max(maps.shape[-2:]) / 224
        hits = pointing_game(maps, masks, tolerance)
        self.images += masks.shape[0]
        self.empty += (~masks.flatten(1).bool().any(dim=1)).sum()
        valid = ~hits.isnan()
        self.hits.index_add_(0, labels[valid], hits[valid].double())
        self.counts.index_add_(0, labels[valid], torch.ones_like(hits[valid], dtype=torch.float64))

    def compute(self) -> Tensor:
        if self.stage is not None and self.report_empty:
            report_empty_masks(int(self.empty), int(self.images), self.stage)
        seen = self.counts > 0
        if not seen.any():
            return torch.tensor(float("nan"))
        return (self.hits[seen] / self.counts[seen]).mean().float()


def energy_pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """Energy-based pointing game (Wang et al., Score-CAM, CVPRW 2020): the share of the map's mass inside the object.

    energy_i = Σ_{p ∈ mask_i} L⁺_i(p) / Σ_p L⁺_i(p), with L⁺ = max(L, 0) (mass is never negative); no
    normalisation, so a map's mass anywhere counts. In [0, 1]; higher is better. A map without mass
    (all ≤ 0) gives NaN; an empty mask gives NaN. A flat positive map scores the object's area share
    (its share of the image), never 1.
    """
    _check_pair(maps, masks)
    mass = maps.float().clamp_min(0).flatten(1)
    inside = (mass * masks.flatten(1).float()).sum(dim=1)
    total = mass.sum(dim=1)
    energy = inside / torch.where(total > 0, total, torch.ones_like(total))
    undefined = (total <= 0) | ~masks.flatten(1).bool().any(dim=1)
    return torch.where(undefined, torch.full_like(energy, float("nan")), energy)


def binarise(maps: Tensor, threshold: float = 0.5, top_k: float | None = None) -> Tensor:
    """B×H×W booleans: s(L) > threshold, with s the per-image min-max into [0, 1]; or the top ``top_k``
    fraction of pixels when given (k = round(top_k·H·W) clamped to 1…H·W, ties broken in raster order).

    A flat map selects nothing either way: it points nowhere.
    """
    if top_k is None:
        return minmax(maps) > threshold
    if not 0 < top_k <= 1:
        raise UserError(f"top_k is a fraction of the pixels in (0, 1], got {top_k}.")
    b, h, w = maps.shape
    k = min(max(round(top_k * h * w), 1), h * w)  # never more pixels than the image has
    order = maps.flatten(1).float().argsort(dim=1, descending=True, stable=True)
    chosen = torch.zeros(b, h * w, dtype=torch.bool, device=maps.device)
    chosen.scatter_(1, order[:, :k], True)
    return chosen.view(b, h, w) & ~is_flat(maps).view(b, 1, 1)


def iou(a: Tensor, b: Tensor) -> Tensor:
    """|a ∧ b| / |a ∨ b| per image of two B×H×W boolean tensors; NaN when both are empty."""
    a, b = a.flatten(1), b.flatten(1)
    inter = (a & b).sum(dim=1).float()
    union = (a | b).sum(dim=1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, float("nan")))


def mask_iou(maps: Tensor, masks: Tensor, threshold: float = 0.5, top_k: float | None = None) -> Tensor:
    """IoU of the binarised map with the object mask (method.md §4.2).

    iou_i = |B_i ∧ M_i| / |B_i ∨ M_i| with B_i = s(L_i) > threshold (s: per-image min-max into [0, 1]), or
    B_i the top ``top_k`` fraction of pixels when given. Higher is better. An empty mask gives NaN; a flat
    map binarises to nothing and gives 0 against a non-empty mask (never a hit).
    """
    _check_pair(maps, masks)
    masks = masks.bool()
    value = iou(binarise(maps, threshold, top_k), masks)
    return torch.where(masks.flatten(1).any(dim=1), value, torch.full_like(value, float("nan")))


class EnergyPointingGame(PerImageMean):
    """Mean over images of :func:`energy_pointing_game`; images with an empty mask or a massless map left out."""

    higher_is_better = True

    def update(self, maps: Tensor, masks: Tensor) -> None:
        self._accumulate(energy_pointing_game(maps, masks))


class MaskIoU(PerImageMean):
    """Mean over images of :func:`mask_iou`; images with an empty mask left out."""

    higher_is_better = True

    def __init__(self, threshold: float = 0.5, top_k: float | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.threshold, self.top_k = threshold, top_k

    def update(self, maps: Tensor, masks: Tensor) -> None:
        self._accumulate(mask_iou(maps, masks, self.threshold, self.top_k))
