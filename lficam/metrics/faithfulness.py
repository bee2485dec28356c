"""Faithfulness of a map to the model: deletion and insertion AUC (RISE), Average Drop and Increase in Confidence.

Common conventions (method.md §4.1):
- images are B×3×H×W in the model's normalised input space; maps are B×H×W (upsampled bilinearly to the
  images' size when smaller); a model returns logits or a ``ModelOutput`` (its ``[0]``).
- The score is the softmax probability of class c, where c is ``targets`` or, when None, the class the model
  predicts on the clean image. c stays fixed while the image is perturbed: a prediction that flips to another
  class simply shows as a low probability of c.
- The model is put in eval mode without autograd while it is probed, and each module's own training flag is
  restored afterwards.
- Every perturbed image of a batch goes through the model in chunks of ``batch_size`` (no per-image,
  per-step loop), on the images' device.
- Each function returns one value per image (a 1-D tensor of length B), NaN where it is undefined.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lficam.core.errors import UserError
from lficam.core.maps import at_image_size, is_flat, logits_of, minmax
from lficam.core.probing import evaluating
from lficam.metrics._common import (
    Model,
    PerImageMean,
    check_batch_size,
    clean_scores,
    probabilities,
)

REFERENCE_STEPS = 224  # RISE removes 224 px per step of a 224×224 image: 224 steps over the whole image


def pixel_ranks(maps: Tensor) -> Tensor:
    """B×H×W ranks: 0 for the most relevant pixel, H·W − 1 for the least; ties go in raster order."""
    b = maps.shape[0]
    flat = maps.reshape(b, -1).float()
    order = flat.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=maps.device).expand(b, -1))
    return ranks.view(maps.shape)


def gaussian_blur(images: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """Separable Gaussian blur per channel with replicated borders (RISE's insertion start: kernel 11, σ 5).

    Replicated borders rather than zeros, so the blurred image has no dark frame whatever the image size.
    """
    half = kernel_size // 2
    x = torch.arange(kernel_size, device=images.device, dtype=torch.float32) - half
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(images.dtype)
    c = images.shape[1]
    out = F.pad(images, (half, half, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, half, half), mode="replicate")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def default_pixels_per_step(height: int, width: int, steps: int = REFERENCE_STEPS) -> int:
    """ceil(H·W / steps): about ``steps`` steps at any size; 224 by default, as RISE's 224 px per step of a
    224×224 image."""
    return max(1, math.ceil(height * width / steps))


def _step_counts(
    hw: int, pixels_per_step: int | None, height: int, width: int, device: torch.device
) -> Tensor:
    n = default_pixels_per_step(height, width) if pixels_per_step is None else int(pixels_per_step)
    if n < 1:
        raise UserError(f"pixels_per_step must be a positive integer, got {pixels_per_step!r}.")
    n = min(n, hw)  # never more pixels per step than the image has
    steps = math.ceil(hw / n)
    return (torch.arange(steps + 1, device=device) * n).clamp(max=hw)


def switch_curve(
    images: Tensor,
    maps: Tensor,
    start: Tensor,
    end: Tensor | None,
    score: Callable[[Tensor, Tensor], Tensor],
    *,
    pixels_per_step: int | None = None,
    batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """(fractions S+1, B×(S+1) scores) while the top-ranked pixels switch from ``start`` to ``end``.

    Step s switches the pixels of rank < min(s·n, H·W) from ``start`` to ``end`` (0 when None): deletion is
    (images → 0), insertion (blurred images → images). ``score(perturbed, i)`` scores a chunk of perturbed
    images, ``i`` the index of each one's image: the probability of its class for a classifier, the
    similarity to its match for an embedding network. The B·(S+1) perturbed images are built chunk by chunk
    from (image index, step) pairs, so memory stays at one chunk whatever B and S are. A flat map ranks
    nothing and gives NaN.
    """
    check_batch_size(batch_size)
    maps = at_image_size(images, maps)
    b, _, h, w = images.shape
    counts = _step_counts(h * w, pixels_per_step, h, w, images.device)
    n_points = counts.numel()
    ranks = pixel_ranks(maps).unsqueeze(1)  # B×1×H×W
    scores = []
    for pairs in torch.arange(b * n_points, device=images.device).split(batch_size):
        i, s = pairs // n_points, pairs % n_points
        switched = ranks[i] < counts[s].view(-1, 1, 1, 1)
        target = torch.zeros((), dtype=images.dtype, device=images.device) if end is None else end[i]
        scores.append(score(torch.where(switched, target, start[i]), i))
    curve = torch.cat(scores).view(b, n_points)
    curve[is_flat(maps)] = float("nan")
    return counts.float() / (h * w), curve


def _switch_curve(
    model: Model,
    images: Tensor,
    maps: Tensor,
    targets: Tensor | None,
    start: Tensor,
    end: Tensor | None,
    pixels_per_step: int | None,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """:func:`switch_curve` of the probability of class c (``targets``, else the clean prediction)."""
    check_batch_size(batch_size)
    with evaluating(model):
        classes, _ = clean_scores(model, images, targets, batch_size)

        def class_probability(perturbed: Tensor, i: Tensor) -> Tensor:
            probs = torch.softmax(logits_of(model(perturbed)).float(), dim=1)
            return probs.gather(1, classes[i, None]).squeeze(1)

        return switch_curve(
            images,
            maps,
            start,
            end,
            class_probability,
            pixels_per_step=pixels_per_step,
            batch_size=batch_size,
        )


def deletion_curve(
    model: Model,
    images: Tensor,
    maps: Tensor,
    targets: Tensor | None = None,
    *,
    pixels_per_step: int | None = None,
    batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """RISE deletion curve: (fractions removed, S+1; probabilities of c, B×(S+1)). See :func:`deletion_auc`."""
    return _switch_curve(model, images, maps, targets, images, None, pixels_per_step, batch_size)


def insertion_curve(
    model: Model,
    images: Tensor,
    maps: Tensor,
    targets: Tensor | None = None,
    *,
    pixels_per_step: int | None = None,
    batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """RISE insertion curve: (fractions inserted, S+1; probabilities of c, B×(S+1)). See :func:`insertion_auc`."""
    blurred = gaussian_blur(images)
    return _switch_curve(model, images, maps, targets, blurred, images, pixels_per_step, batch_size)


def deletion_auc(
    model: Model,
    images: Tensor,
    maps: Tensor,
    targets: Tensor | None = None,
    *,
    pixels_per_step: int | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Deletion AUC (Petsiuk, Das, Saenko, RISE, BMVC 2018). Lower is better.

    Pixels are ranked by the map (ties in raster order). Step s = 0…S sets the pixels of rank
    < min(s·n, H·W) to 0 in normalised space (the data set's mean colour) in all channels; p_s is the
    softmax probability of c on that image. AUC = trapezoid of p_s over the removed fraction
    x_s = min(s·n, H·W)/(H·W) ∈ [0, 1]. n = ``pixels_per_step``, by default ceil(H·W/224) (RISE's 224 px
    per step at 224×224, so about 224 steps at any size); n larger than the image is clamped to it.
    A flat map ranks nothing and gives NaN.
    """
    fractions, curve = deletion_curve(
        model, images, maps, targets, pixels_per_step=pixels_per_step, batch_size=batch_size
    )
    return torch.trapezoid(curve, fractions, dim=1)


def insertion_auc(
    model: Model,
    images: Tensor,
    maps: Tensor,
    targets: Tensor | None = None,
    *,
    pixels_per_step: int | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Insertion AUC (Petsiuk, Das, Saenko, RISE, BMVC 2018). Higher is better.

    Starts from the image blurred by a Gaussian (kernel 11, σ 5, replicated borders) and pastes the original
    pixels back in map order: step s restores the pixels of rank < min(s·n, H·W). AUC = trapezoid of the
    softmax probability of c over the inserted fraction in [0, 1]; n as in :func:`deletion_auc`. A flat
    map gives NaN.
    """
    fractions, curve = insertion_curve(
        model, images, maps, targets, pixels_per_step=pixels_per_step, batch_size=batch_size
    )
    return torch.trapezoid(curve, fractions, dim=1)


def masked_scores(
    model: Model, images: Tensor, maps: Tensor, targets: Tensor | None = None, *, batch_size: int = 256
) -> tuple[Tensor, Tensor]:
    """(Y, O) per image: softmax probability of c on x and on x ⊙ s(Up(L)).

    The mask s(Up(L)) ∈ [0, 1] (per-image min-max of the map at the image's size) multiplies the normalised
    image in every channel, so a masked-out pixel becomes 0, the data set's mean colour. A flat map has
    s = 0 everywhere (it explains nothing) and O is the score of the all-mean image.
    """
    check_batch_size(batch_size)
    maps = at_image_size(images, maps)
    with evaluating(model):
        classes, clean = clean_scores(model, images, targets, batch_size)
        masked = probabilities(model, images * minmax(maps).unsqueeze(1).to(images.dtype), batch_size)
    return clean, masked.gather(1, classes[:, None]).squeeze(1)


def average_drop(
    model: Model, images: Tensor, maps: Tensor, targets: Tensor | None = None, *, batch_size: int = 256
) -> Tensor:
    """Average Drop % per image (Chattopadhay et al., Grad-CAM++, WACV 2018): 100 · max(0, Y − O) / Y.

    Y and O as in :func:`masked_scores` (softmax probabilities of c on x and on x ⊙ s(Up(L))). Relative to Y,
    as the paper defines it (pytorch-grad-cam's drop in confidence leaves the division out). Lower is better.
    Y = 0 gives NaN.
    """
    return drop_from_scores(*masked_scores(model, images, maps, targets, batch_size=batch_size))


def drop_from_scores(clean: Tensor, masked: Tensor) -> Tensor:
    """:func:`average_drop` from the scores Y (``clean``) and O (``masked``): 100 · max(0, Y − O) / Y, NaN at Y = 0."""
    drop = 100 * (clean - masked).clamp_min(0) / torch.where(clean > 0, clean, torch.ones_like(clean))
    return torch.where(clean > 0, drop, torch.full_like(drop, float("nan")))


def increase_from_scores(clean: Tensor, masked: Tensor) -> Tensor:
    """:func:`increase_in_confidence` from the scores Y (``clean``) and O (``masked``): 100 · 1[O > Y]."""
    return 100 * (masked > clean).float()


def increase_in_confidence(
    model: Model, images: Tensor, maps: Tensor, targets: Tensor | None = None, *, batch_size: int = 256
) -> Tensor:
    """Increase in Confidence % per image (Grad-CAM++, WACV 2018): 100 · 1[O > Y], so the mean over images is
    the percentage of images whose score of c rises on x ⊙ s(Up(L)). Higher is better. Equal scores do not count.
    """
    return increase_from_scores(*masked_scores(model, images, maps, targets, batch_size=batch_size))


class _ModelMetric(PerImageMean):
    """A per-image mean whose update probes a model: ``update(model, images, maps, targets=None)``.

    The model is an argument of ``update`` and never stored, so it does not enter the metric's state_dict.
    """

    def __init__(self, *, batch_size: int = 256, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.batch_size = batch_size


class DeletionAUC(_ModelMetric):
    """Mean :func:`deletion_auc` over images (flat maps left out). Lower is better."""

    higher_is_better = False

    def __init__(self, *, pixels_per_step: int | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.pixels_per_step = pixels_per_step

    auc = staticmethod(deletion_auc)

    def update(self, model: Model, images: Tensor, maps: Tensor, targets: Tensor | None = None) -> None:
        self._accumulate(
            self.auc(
                model, images, maps, targets, pixels_per_step=self.pixels_per_step, batch_size=self.batch_size
            )
        )


class InsertionAUC(DeletionAUC):
    """Mean :func:`insertion_auc` over images (flat maps left out). Higher is better."""

    higher_is_better = True
    auc = staticmethod(insertion_auc)


class AverageDrop(_ModelMetric):
    """Average Drop % over images (:func:`average_drop`). Lower is better."""

    higher_is_better = False

    def update(self, model: Model, images: Tensor, maps: Tensor, targets: Tensor | None = None) -> None:
        self._accumulate(average_drop(model, images, maps, targets, batch_size=self.batch_size))


class IncreaseInConfidence(_ModelMetric):
    """Increase in Confidence % over images (:func:`increase_in_confidence`). Higher is better."""

    higher_is_better = True

    def update(self, model: Model, images: Tensor, maps: Tensor, targets: Tensor | None = None) -> None:
        self._accumulate(increase_in_confidence(model, images, maps, targets, batch_size=self.batch_size))
