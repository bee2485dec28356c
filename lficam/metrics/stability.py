"""Stability of maps: similarity of two maps, across epochs, under small input changes, under model randomisation.

Similarities (one value per image pair, method.md §1.5 and §4.3):
- :func:`map_iou`: the paper's IoU of the two maps binarised at 100/255 of their min-max range.
- :func:`rank_correlation`: Spearman's ρ, threshold-free.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lficam.core.errors import UnknownNameError, UserError
from lficam.core.maps import at_image_size, is_flat
from lficam.core.probing import evaluating
from lficam.metrics._common import (
    Model,
    PerImageMean,
    PerImageMeans,
    check_batch_size,
    check_pair,
)
from lficam.metrics.localisation import binarise, iou

PAPER_THRESHOLD = 100 / 255
MapFn = Callable[[Tensor], Tensor]


def map_iou(maps_a: Tensor, maps_b: Tensor, threshold: float = PAPER_THRESHOLD) -> Tensor:
    """IoU of two maps of the same images (LFI-CAM's stability, Lee et al., ICCV 2021, §4.3).

    Each map is min-max scaled per image to [0, 1] and binarised at > ``threshold`` (the paper's > 100 of
    0…255 is the default); iou = |A ∧ B| / |A ∨ B|, one value per image, no wrap-around. A flat map
    binarises to nothing: against a non-flat map it gives 0, and two maps that both select nothing (flat,
    or nothing above the threshold) give NaN (nothing to compare). Higher is more similar.
    """
    check_pair(maps_a, maps_b, ("maps_a", "maps_b"))
    return iou(binarise(maps_a, threshold), binarise(maps_b, threshold))


def average_ranks(values: Tensor) -> Tensor:
    """Ranks 1…N along the last axis of B×N values; tied values share the mean of their ranks."""
    ordered = values.sort(dim=1).values.contiguous()
    below = torch.searchsorted(ordered, values.contiguous(), right=False)  # values strictly smaller
    up_to = torch.searchsorted(ordered, values.contiguous(), right=True)  # values smaller or equal
    return (below + up_to + 1).double() / 2


def rank_correlation(maps_a: Tensor, maps_b: Tensor) -> Tensor:
    """Spearman's ρ between two maps of the same images, per image: the Pearson correlation of the pixels'
    average ranks (ties share their mean rank). In [−1, 1]; higher is more similar. A flat map (either one)
    has no ranking and gives NaN.
    """
    check_pair(maps_a, maps_b, ("maps_a", "maps_b"))
    b = maps_a.shape[0]
    ra = average_ranks(maps_a.reshape(b, -1).float())
    rb = average_ranks(maps_b.reshape(b, -1).float())
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    denom = (ra.square().sum(dim=1) * rb.square().sum(dim=1)).sqrt()
    rho = (ra * rb).sum(dim=1) / torch.where(denom > 0, denom, torch.ones_like(denom))
    undefined = is_flat(maps_a) | is_flat(maps_b)
    return torch.where(undefined, torch.full_like(rho, float("nan")), rho).float()


class MapIoU(PerImageMean):
    """Mean :func:`map_iou` over image pairs (pairs that both select nothing left out). ``update(maps_a, maps_b)``."""

    higher_is_better = True

    def __init__(self, threshold: float = PAPER_THRESHOLD, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold

    def update(self, maps_a: Tensor, maps_b: Tensor) -> None:
        self._accumulate(map_iou(maps_a, maps_b, self.threshold))


class RankCorrelation(PerImageMean):
    """Mean :func:`rank_correlation` over image pairs (flat maps left out). ``update(maps_a, maps_b)``."""

    higher_is_better = True

    def update(self, maps_a: Tensor, maps_b: Tensor) -> None:
        self._accumulate(rank_correlation(maps_a, maps_b))


def attention_map_fn(model: Model) -> MapFn:
    """images → the model's own map (``output[1]``) upsampled bilinearly to the images' size, in eval mode."""

    def maps(images: Tensor) -> Tensor:
        with evaluating(model):
            return at_image_size(images, model(images)[1])

    return maps


def _translate(x: Tensor, dy: int, dx: int) -> Tensor:
    """Content moved down by dy and right by dx (negative: up, left); the uncovered border is 0."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


class StabilityScores(NamedTuple):
    """Input-change stability per image (each a 1-D tensor of length B)."""

    iou: Tensor
    spearman: Tensor
    avg_sensitivity: Tensor
    max_sensitivity: Tensor


PERTURBATIONS = ("noise", "shift", "flip")


def perturbation_stability(
    model_map_fn: MapFn,
    images: Tensor,
    kind: str = "noise",
    *,
    noise_std: float = 0.1,
    samples: int = 4,
    shift: int = 2,
    threshold: float = PAPER_THRESHOLD,
    batch_size: int = 256,
    seed: int | None = 0,
    base_maps: Tensor | None = None,
) -> StabilityScores:
    """Stability of maps Φ under small input changes δ (method.md §4.3).

    kind:
      - ``noise``: ``samples`` draws of x + N(0, noise_std²) in the normalised input space;
      - ``shift``: x translated by ``shift`` px up, down, left and right (4 samples, the uncovered border set
        to 0, the mean colour); each map is translated back and both maps are compared on the part of the
        image that stayed in view;
      - ``flip``: x flipped left-right (1 sample); the map is flipped back.
    Per image, over the samples: ``iou`` = mean :func:`map_iou` and ``spearman`` = mean
    :func:`rank_correlation` between Φ(x) and the moved-back Φ(x + δ) (NaN samples left out);
    r = ‖Φ(x + δ) − Φ(x)‖₂ / ‖Φ(x)‖₂ on the raw maps, ``avg_sensitivity`` = mean of r and
    ``max_sensitivity`` = max of r over the samples (the relative form of Yeh et al., NeurIPS 2019, "On the
    (In)fidelity and Sensitivity of Explanations"; lower is more stable). Φ(x) = 0 gives NaN sensitivities.
    ``model_map_fn`` maps images to B×h×w maps (upsampled to the image size when smaller), e.g.
    :func:`attention_map_fn`; it is called on all perturbed images at once, ``batch_size`` at a time.
    ``base_maps``: Φ(x) when the caller already has it (saves one pass over the clean images).
    """
    check_batch_size(batch_size)
    if kind not in PERTURBATIONS:
        raise UnknownNameError("perturbation", kind, PERTURBATIONS)
    if kind == "noise" and samples < 1:
        raise UserError(f"samples must be at least 1, got {samples}.")
    h, w = images.shape[-2:]
    if kind == "shift" and not 0 < shift < min(h, w):
        raise UserError(
            f"shift must be between 1 and {min(h, w) - 1} pixels for {h}×{w} images, got {shift}."
        )

    def maps_of(x: Tensor) -> Tensor:
        return torch.cat([at_image_size(chunk, model_map_fn(chunk)) for chunk in x.split(batch_size)])

    b = images.shape[0]
    if kind == "noise":
        generator = None
        if seed is not None:
            generator = torch.Generator(device=images.device)
            generator.manual_seed(seed)
        jitter = torch.randn(
            (samples, *images.shape), generator=generator, device=images.device, dtype=images.dtype
        )
        perturbed = (images.unsqueeze(0) + noise_std * jitter).flatten(0, 1)
        moves = [(0, 0)] * samples
    elif kind == "shift":
        moves = [(shift, 0), (-shift, 0), (0, shift), (0, -shift)]
        perturbed = torch.cat([_translate(images, dy, dx) for dy, dx in moves])
    else:
        moves = [(0, 0)]
        perturbed = images.flip(-1)
    base = maps_of(images) if base_maps is None else at_image_size(images, base_maps)
    moved = maps_of(perturbed).view(len(moves), b, h, w)
    ious, rhos, changes = [], [], []
    for s, (dy, dx) in enumerate(moves):
        back = moved[s].flip(-1) if kind == "flip" else _translate(moved[s], -dy, -dx)
        rows = slice(max(-dy, 0), h - max(dy, 0))
        cols = slice(max(-dx, 0), w - max(dx, 0))
        a, c = base[:, rows, cols], back[:, rows, cols]
        ious.append(map_iou(a, c, threshold))
        rhos.append(rank_correlation(a, c))
        norm = a.flatten(1).norm(dim=1)
        change = (c - a).flatten(1).norm(dim=1) / torch.where(norm > 0, norm, torch.ones_like(norm))
        changes.append(torch.where(norm > 0, change, torch.full_like(change, float("nan"))))
    change = torch.stack(changes)
    all_nan = change.isnan().all(dim=0)
    worst = torch.where(change.isnan(), torch.full_like(change, -1.0), change).amax(dim=0)
    return StabilityScores(
        iou=torch.stack(ious).nanmean(dim=0),
        spearman=torch.stack(rhos).nanmean(dim=0),
        avg_sensitivity=change.nanmean(dim=0),
        max_sensitivity=torch.where(all_nan, torch.full_like(worst, float("nan")), worst),
    )


class InputStability(PerImageMeans):
    """Means over images of :func:`perturbation_stability`: ``compute()`` gives {"iou", "spearman",
    "avg_sensitivity", "max_sensitivity"}. ``update(model_map_fn, images)``. ``higher_is_better`` refers to
    iou and spearman; the sensitivities are better lower.
    """

    keys = StabilityScores._fields
    higher_is_better = True

    def __init__(
        self,
        kind: str = "noise",
        *,
        noise_std: float = 0.1,
        samples: int = 4,
        shift: int = 2,
        threshold: float = PAPER_THRESHOLD,
        batch_size: int = 256,
        seed: int | None = 0,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if kind not in PERTURBATIONS:
            raise UnknownNameError("perturbation", kind, PERTURBATIONS)
        self.kind = kind
        self.options = {
            "noise_std": noise_std,
            "samples": samples,
            "shift": shift,
            "threshold": threshold,
            "batch_size": batch_size,
            "seed": seed,
        }

    def update(self, model_map_fn: MapFn, images: Tensor, base_maps: Tensor | None = None) -> None:
        scores = perturbation_stability(model_map_fn, images, self.kind, base_maps=base_maps, **self.options)
        self._accumulate(scores._asdict())


class EpochStability(PerImageMeans):
    """Similarity of a fixed probe set's maps to the same images' maps one epoch earlier (method.md §4.3).

    Call ``update(maps)`` once per epoch with the probe set's maps (always the same images in the same
    order, e.g. the first N validation images of this rank): it compares them with the maps of the previous
    call (:func:`map_iou` and :func:`rank_correlation` per image) and then keeps them for the next epoch.
    ``compute()`` gives {"iou", "spearman"}, NaN after the first epoch (nothing to compare with); ``reset()``
    clears the sums but keeps the previous maps. Under DDP each rank keeps its own probe maps and the sums
    are reduced over ranks. Higher is more stable.
    """

    keys = ("iou", "spearman")
    higher_is_better = True

    def __init__(self, threshold: float = PAPER_THRESHOLD, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.previous: Tensor | None = None

    def update(self, maps: Tensor) -> None:
        maps = maps.detach().float()
        if self.previous is not None:
            if self.previous.shape != maps.shape:
                raise UserError(
                    f"EpochStability got probe maps shaped {tuple(maps.shape)} after {tuple(self.previous.shape)}: "
                    "pass the same probe images every epoch."
                )
            previous = self.previous.to(maps.device)
            self._accumulate(
                {"iou": map_iou(previous, maps, self.threshold), "spearman": rank_correlation(previous, maps)}
            )
        self.previous = maps.clone()

    @property
    def has_previous(self) -> bool:
        return self.previous is not None


def randomisation_layers(model: nn.Module) -> list[str]:
    """Submodule names from the top of the network down, for the cascading randomisation.

    A model with ``backbone.stages`` (every model of this project): its head modules (all children except
    the backbone, last registered first, e.g. ``fc`` then ``fin``), then the backbone's ``post`` where it has
    weights (DenseNet's final BN, which sits between the last stage and the head), ``backbone.stages.N-1`` …
    ``0`` and ``backbone.stem``. Any other model: every module with parameters of its own, last registered
    first.
    """
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "stages"):
        head = [n for n, m in model.named_children() if n != "backbone" and any(True for _ in m.parameters())]
        stages = [f"backbone.stages.{i}" for i in reversed(range(len(backbone.stages)))]
        post = getattr(backbone, "post", None)
        post = ["backbone.post"] if post is not None and any(True for _ in post.parameters()) else []
        stem = ["backbone.stem"] if hasattr(backbone, "stem") else []
        return head[::-1] + post + stages + stem
    own = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    return own[::-1]


def model_randomisation(
    model: nn.Module,
    images: Tensor,
    map_fn: Callable[[nn.Module, Tensor], Tensor] | None = None,
    *,
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Cascading model-parameter randomisation (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

    On a copy of the model (the model itself is untouched), the layers in ``layers`` (default
    :func:`randomisation_layers`, top first) are re-initialised one after the other with their own
    ``reset_parameters`` (batch norms back to identity statistics), cumulatively; after each, the maps of
    ``images`` are compared with the original model's by :func:`rank_correlation`. Returns
    {layer name: ρ per image (B)} in randomisation order. A map that depends on the learned weights drops
    towards ρ ≈ 0; one that stays high is an edge detector, not an explanation. ``map_fn(model, images)``
    gives B×h×w maps (default: the model's own map, :func:`attention_map_fn`). Seeded, so it repeats.
    """
    if map_fn is None:

        def map_fn(m: nn.Module, x: Tensor) -> Tensor:
            return attention_map_fn(m)(x)

    names = list(randomisation_layers(model) if layers is None else layers)
    original = at_image_size(images, map_fn(model, images))
    randomised = copy.deepcopy(model)
    modules = dict(randomised.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise UnknownNameError("layer", missing[0], [n for n in modules if n])
    results: dict[str, Tensor] = {}
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for name in names:
            for sub in modules[name].modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
            maps = at_image_size(images, map_fn(randomised, images))
            results[name] = rank_correlation(original, maps.detach())
    return results
