"""Grad-CAM (Selvaraju et al., ICCV 2017, arXiv 1610.02391), and the base of every gradient-weighted CAM."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from lficam.cams.base import CAMMethod, weighted_sum


class GradientCAM(CAMMethod):
    """A CAM built from A and ∂y^c/∂A of one forward pass; subclasses give the channel weights or the map."""

    def compute(self, x: Tensor, targets: Any) -> Tensor:
        activation, gradient, _ = self.activations_and_gradients(x, targets)
        return self.map_from(activation.float(), gradient.float())

    def map_from(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """ReLU(Σ_k w^c_k A^k) with the weights of :meth:`channel_weights`."""
        return F.relu(weighted_sum(self.channel_weights(activation, gradient), activation))

    def channel_weights(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """B×C weights of the channels from the activation and the gradient of the class score (B×C×h×w).

        Channel-weighting methods override this; element-wise ones (LayerCAM) override :meth:`map_from`."""
        raise TypeError(f"{type(self).__name__} defines neither channel_weights nor map_from.")


class GradCAM(GradientCAM):
    """Grad-CAM: α^c_k = (1/Z) Σ_ij ∂y^c/∂A^k_ij;  L^c = ReLU(Σ_k α^c_k A^k).

    y^c is the class score before softmax, Z the number of positions.

    >>> cam = lficam.cams.create("gradcam", model)
    >>> maps = cam(images)            # B×H×W in [0, 1], for the predicted classes
    """

    name = "gradcam"

    def channel_weights(self, activation: Tensor, gradient: Tensor) -> Tensor:
        return gradient.mean(dim=(2, 3))
