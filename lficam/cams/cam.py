"""CAM (Zhou et al., CVPR 2016, arXiv 1512.04150): class activation mapping from the FC weights."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lficam.cams.base import CAMMethod, weighted_sum
from lficam.cams.layers import find_classifier
from lficam.core.errors import UserError


class CAM(CAMMethod):
    """CAM: M^c = Σ_k w^c_k A^k with w^c the FC row of class c; one forward pass, no gradients.

    Exact for networks whose logits are FC(GAP(A)) of the target layer (plain ResNets, our ``attention=none``,
    where it equals the model's own map); for LFI-CAM models, whose FC sees (1 + attention)·A, it is the
    usual approximation. No ReLU, as in the paper: the map is only min-max scaled.

    classifier: the linear layer after global average pooling; default ``model.fc``, else the model's last
        ``nn.Linear``. Its input size must equal the target layer's channels.
    """

    name = "cam"

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        *,
        classifier: nn.Linear | None = None,
    ) -> None:
        super().__init__(model, target_layer)
        self.classifier = classifier if classifier is not None else find_classifier(model)
        if self.classifier is None:
            raise UserError(
                f"CAM needs a linear classifier after global average pooling and {type(model).__name__} has none: "
                "use gradcam or pass classifier=<the nn.Linear>."
            )

    def compute(self, x: Tensor, targets: Any) -> Tensor:
        recording = self.activations(x)
        activation = recording.activation.float()
        weight = self.classifier.weight
        if weight.shape[1] != activation.shape[1]:
            raise UserError(
                f"CAM's classifier takes {weight.shape[1]} features but the target layer has "
                f"{activation.shape[1]} channels: use the last convolutional stage as target_layer."
            )
        classes = self.resolve_targets(targets, recording.logits)
        return weighted_sum(weight[classes].float(), activation)
