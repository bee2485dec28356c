"""Localisation of a map against a ground-truth object mask.

Maps and masks are B×H×W at the same (image) size; each function returns one value per image (a 1-D
tensor of length B) and NaN where the value is undefined, so that the mean over images is the paper's
number and undefined images are left out, never counted as hits.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


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
    The maximum is the first one in raster order. The reference tolerance is 15 px at 224×224: pass
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
    flat_map = flat.amax(dim=1) == flat.amin(dim=1)
    hit = torch.where(flat_map, torch.zeros_like(hit), hit)
    return torch.where(mask.flatten(1).any(dim=1), hit, torch.full_like(hit, float("nan")))


class PointingGame(Metric):
    """Pointing-game accuracy computed per class, then averaged over the classes seen (Zhang et al. 2016).

    Sums of hits and counts per class are the states, so the value is exact under DDP. Images with an
    empty mask are left out. ``tolerance`` is in pixels at 224 px and scaled to each batch's image size.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, tolerance_at_224: float = 15.0, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.tolerance_at_224 = tolerance_at_224
        self.add_state("hits", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, maps: Tensor, masks: Tensor, labels: Tensor) -> None:
        tolerance = self.tolerance_at_224 * max(maps.shape[-2:]) / 224
        hits = pointing_game(maps, masks, tolerance)
        valid = ~hits.isnan()
        self.hits.index_add_(0, labels[valid], hits[valid].double())
        self.counts.index_add_(0, labels[valid], torch.ones_like(hits[valid], dtype=torch.float64))

    def compute(self) -> Tensor:
        seen = self.counts > 0
        if not seen.any():
            return torch.tensor(float("nan"))
        return (self.hits[seen] / self.counts[seen]).mean().float()
