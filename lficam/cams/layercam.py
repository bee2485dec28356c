"""LayerCAM (Jiang et al., IEEE TIP 2021)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lficam.cams.gradcam import GradientCAM


class LayerCAM(GradientCAM):
    """LayerCAM: a weight per position instead of per channel.

    L^c = ReLU(Σ_k ReLU(∂y^c/∂A^k) ⊙ A^k)   (element-wise), so it also works on early layers.
    """

    name = "layercam"

    def map_from(self, activation: Tensor, gradient: Tensor) -> Tensor:
        return F.relu((F.relu(gradient) * activation).sum(dim=1))
