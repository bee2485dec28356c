"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci, Kasneci, ICML 2022) with noisy linear imputation.

The removed pixels are not set to a constant (which a model can detect from the shape of the hole) but filled
from their neighbours: each removed pixel equals the weighted mean of its 8 neighbours, weight 1/6 for the 4
direct and 1/12 for the 4 diagonal ones (renormalised over the neighbours inside the image at the border),
which couples the removed pixels into one sparse linear system per image and channel; then Gaussian noise
(σ = 0.01, in the normalised input space) is added to the filled pixels.

Solver (our choice): preconditioned conjugate gradients, batched over images × channels on the images'
device. Multiplying row i of the system by its weight sum W_i makes it symmetric positive definite:
    W_i x_i − Σ_{j removed, j ~ i} w_ij x_j = Σ_{j kept, j ~ i} w_ij x_j        for every removed pixel i,
a grounded graph Laplacian (every group of removed pixels borders a kept pixel as long as one pixel is kept),
so CG converges, in about as many iterations as the largest hole is wide. The matrix is never built: its
product with a vector is a weighted sum of eight shifted copies. Diagonal (Jacobi) preconditioner 1/W_i.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lficam.core.errors import UserError
from lficam.core.maps import at_image_size, is_flat, logits_of
from lficam.core.probing import evaluating
from lficam.metrics._common import Model, PerImageMeans, check_batch_size, clean_scores
from lficam.metrics.faithfulness import pixel_ranks

ROAD_PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _neighbour_sum(u: Tensor) -> Tensor:
    """Σ_j w_j u_j over the 8 neighbours (1/6 direct, 1/12 diagonal), zero outside the image.

    Shifted slices rather than a depthwise convolution: on a CPU a 3×3 grouped convolution of small
    images costs many times more than these eight additions.
    """
    h, w = u.shape[-2:]
    p = F.pad(u, (1, 1, 1, 1))
    direct = p[..., :h, 1 : w + 1] + p[..., 2:, 1 : w + 1] + p[..., 1 : h + 1, :w] + p[..., 1 : h + 1, 2:]
    diagonal = p[..., :h, :w] + p[..., :h, 2:] + p[..., 2:, :w] + p[..., 2:, 2:]
    return direct / 6 + diagonal / 12


def linear_imputation(
    images: Tensor, removed: Tensor, *, max_iterations: int | None = None, tolerance: float = 1e-5
) -> Tensor:
    """Fill the ``removed`` pixels (B×H×W bool) of B×C×H×W images by the neighbour-mean system (no noise).

    Solved by batched preconditioned CG (see the module docstring) until every image's residual norm is
    below ``tolerance`` times its right-hand side's norm, or after ``max_iterations`` (default 2·(H + W)).
    Kept pixels are returned unchanged. Every pixel removed: there is nothing to impute from, a UserError.
    """
    if removed.shape != (images.shape[0], *images.shape[-2:]):
        raise UserError(
            f"Expected removed shaped B×H×W = {(images.shape[0], *images.shape[-2:])}, got "
            f"{tuple(removed.shape)}."
        )
    if removed.flatten(1).all(dim=1).any():
        raise UserError("Cannot impute an image whose every pixel is removed: keep at least one pixel.")
    h, w = images.shape[-2:]
    x = images.float()
    m = removed.unsqueeze(1).float()  # B×1×H×W, 1 where unknown
    neighbours = _neighbour_sum
    weight_sum = neighbours(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device))  # W_i, smaller at borders

    def apply(u: Tensor) -> Tensor:  # the SPD operator on the removed pixels
        return m * (weight_sum * u - neighbours(m * u))

    rhs = m * neighbours(x * (1 - m))
    solution = torch.zeros_like(x)
    residual = rhs.clone()
    z = residual / weight_sum
    direction = z.clone()
    rz = (residual * z).sum(dim=(2, 3), keepdim=True)
    stop = tolerance * rhs.norm(dim=(2, 3))
    iterations = 2 * (h + w) if max_iterations is None else max_iterations
    for step in range(iterations):
        a_dir = apply(direction)
        denom = (direction * a_dir).sum(dim=(2, 3), keepdim=True)
        alpha = torch.where(denom > 0, rz / denom.clamp_min(1e-30), torch.zeros_like(rz))
        solution = solution + alpha * direction
        residual = residual - alpha * a_dir
        # Check convergence every 8 steps only: on an accelerator each check waits for the device.
        if step % 8 == 7 and (residual.norm(dim=(2, 3)) <= stop).all():
            break
        z = residual / weight_sum
        rz_next = (residual * z).sum(dim=(2, 3), keepdim=True)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(1e-30), torch.zeros_like(rz))
        direction = z + beta * direction
        rz = rz_next
    return (x * (1 - m) + solution * m).to(images.dtype)


def noisy_linear_imputation(
    images: Tensor,
    removed: Tensor,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    max_iterations: int | None = None,
) -> Tensor:
    """ROAD's imputation: :func:`linear_imputation` plus N(0, noise²) on the removed pixels only."""
    filled = linear_imputation(images, removed, max_iterations=max_iterations)
    jitter = torch.randn(filled.shape, generator=generator, device=filled.device, dtype=filled.dtype)
    return filled + noise * jitter * removed.unsqueeze(1).to(filled.dtype)


class RoadScores(NamedTuple):
    """ROAD per image: ``morf``, ``lerf``, ``combined`` (each B) and the curves (B×P) at ``percentages`` (P)."""

    morf: Tensor
    lerf: Tensor
    combined: Tensor
    morf_curve: Tensor
    lerf_curve: Tensor
    percentages: Tensor


def road(
    model: Model,
    images: Tensor,
    maps: Tensor,
    targets: Tensor | None = None,
    *,
    percentages: tuple[float, ...] = ROAD_PERCENTAGES,
    noise: float = 0.01,
    batch_size: int = 128,
    seed: int | None = 0,
    max_iterations: int | None = None,
) -> RoadScores:
    """ROAD (Rong et al., ICML 2022) with noisy linear imputation, for every image of the batch.

    For each p in ``percentages`` (10 … 90 %), k = round(p·H·W) pixels are removed: the k highest-ranked by
    the map (MoRF, most relevant first) or the k lowest (LeRF), and filled by
    :func:`noisy_linear_imputation`; q = softmax probability of c on the imputed image.
      MoRF_i = mean_p q_MoRF(p)   (lower is better: removing the relevant pixels should hurt)
      LeRF_i = mean_p q_LeRF(p)   (higher is better: removing the irrelevant ones should not)
      combined_i = (LeRF_i − MoRF_i) / 2   (higher is better)
    Ties in the map are ranked in raster order; a flat map gives NaN everywhere. The noise is drawn from a
    generator seeded with ``seed`` on the images' device (None: the global generator), so the value repeats.
    All B·2·P imputations run batched, ``batch_size`` images at a time, through CG and then the model.
    """
    check_batch_size(batch_size)
    if not percentages or not all(0 < p < 1 for p in percentages):
        raise UserError(f"ROAD percentages must lie strictly between 0 and 1, got {percentages}.")
    maps = at_image_size(images, maps)
    b, _, h, w = images.shape
    ranks = pixel_ranks(maps)  # B×H×W, 0 = most relevant
    ks = torch.tensor([round(p * h * w) for p in percentages], device=images.device)
    n_p = ks.numel()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=images.device)
        generator.manual_seed(seed)
    with evaluating(model):
        classes, _ = clean_scores(model, images, targets, batch_size)
        scores = []
        # One setting = (image i, order o ∈ {MoRF, LeRF}, percentage j), flattened as i·2P + o·P + j.
        for settings in torch.arange(b * 2 * n_p, device=images.device).split(batch_size):
            i, o, j = settings // (2 * n_p), (settings // n_p) % 2, settings % n_p
            r, k = ranks[i], ks[j].view(-1, 1, 1)
            removed = torch.where((o == 0).view(-1, 1, 1), r < k, r >= h * w - k)
            filled = noisy_linear_imputation(
                images[i], removed, noise=noise, generator=generator, max_iterations=max_iterations
            )
            probs = torch.softmax(logits_of(model(filled)).float(), dim=1)
            scores.append(probs.gather(1, classes[i, None]).squeeze(1))
    curves = torch.cat(scores).view(b, 2, n_p)
    curves[is_flat(maps)] = float("nan")
    morf, lerf = curves[:, 0].mean(dim=1), curves[:, 1].mean(dim=1)
    fractions = torch.tensor(percentages, device=images.device)
    return RoadScores(morf, lerf, (lerf - morf) / 2, curves[:, 0], curves[:, 1], fractions)


class Road(PerImageMeans):
    """ROAD over images: ``compute()`` gives {"morf", "lerf", "combined"} (flat maps left out).

    ``higher_is_better`` refers to the combined score; MoRF is better lower, LeRF higher.
    ``update(model, images, maps, targets=None)``.
    """

    keys = ("morf", "lerf", "combined")
    higher_is_better = True

    def __init__(
        self,
        *,
        batch_size: int = 128,
        noise: float = 0.01,
        seed: int | None = 0,
        percentages: tuple[float, ...] = ROAD_PERCENTAGES,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.options = {
            "batch_size": batch_size,
            "noise": noise,
            "seed": seed,
            "percentages": tuple(percentages),
        }

    def update(self, model: Model, images: Tensor, maps: Tensor, targets: Tensor | None = None) -> None:
        scores = road(model, images, maps, targets, **self.options)
        self._accumulate({"morf": scores.morf, "lerf": scores.lerf, "combined": scores.combined})
