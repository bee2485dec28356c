"""Abs-CAM (Zeng et al., Signal, Image and Video Processing 2022, arXiv 2207.03648)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lficam.cams.base import CAMMethod, weighted_sum
from lficam.core.errors import UnknownNameError
from lficam.core.maps import minmax, upsample

PHASE2 = ("mask", "none")


class AbsCAM(CAMMethod):
    """Abs-CAM: Grad-CAM with the absolute value of the gradients, then a second pass on the masked image.

    Phase 1 (as the paper states):
      α^c_k = (1/Z) Σ_ij |∂y^c/∂A^k_ij|;   L₀ = ReLU(Σ_k α^c_k A^k)
    Phase 2: the paper "linearly combines the initial saliency map with the original image"; its exact form
    is unverified here. This project's choice, ``phase2="mask"`` (the default): the image is masked by the
    initial map, x′ = x ⊙ s(Up(L₀)), and phase 1 is run again on x′ for the same class (the class chosen
    on x when targets is None); the final map is L₁ = ReLU(Σ_k α′_k A′^k) from x′.
    ``phase2="none"`` returns L₀ (one forward and one backward pass instead of two).
    """

    name = "abscam"

    def __init__(
        self, model: nn.Module, target_layer: nn.Module | str | None = None, *, phase2: str = "mask"
    ) -> None:
        super().__init__(model, target_layer)
        if phase2 not in PHASE2:
            raise UnknownNameError("Abs-CAM phase2", phase2, PHASE2)
        self.phase2 = phase2

    def _phase1(self, x: Tensor, targets: Any) -> tuple[Tensor, Tensor]:
        activation, gradient, classes = self.activations_and_gradients(x, targets)
        weights = gradient.float().abs().mean(dim=(2, 3))
        return F.relu(weighted_sum(weights, activation.float())), classes

    def compute(self, x: Tensor, targets: Any) -> Tensor:
        initial, classes = self._phase1(x, targets)
        if self.phase2 == "none":
            return initial
        mask = minmax(upsample(initial, tuple(x.shape[-2:])))
        final, _ = self._phase1(x * mask.unsqueeze(1).to(x.dtype), classes)
        return final
