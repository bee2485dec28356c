"""Attention heads: each turns a :class:`Backbone` into a classifier returning :class:`ModelOutput`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lficam.core.errors import UnknownNameError
from lficam.core.maps import is_flat, minmax
from lficam.models.backbones import Backbone
from lficam.models.fin import FeatureImportanceNetwork
from lficam.models.fin_lite import LiteFeatureImportanceNetwork
from lficam.models.normalize import minmax_channels, minmax_spatial
from lficam.models.output import ModelOutput, check_images


class Classifier(nn.Module):
    """Base of every model: a backbone, a head, and the loss the model is trained with."""

    backbone: Backbone

    def loss(self, output: ModelOutput, targets: Tensor) -> Tensor:
        """Cross-entropy on the final logits, plus on the auxiliary logits where a model has them."""
        loss = F.cross_entropy(output.logits, targets)
        if output.aux_logits is not None:
            loss = loss + F.cross_entropy(output.aux_logits, targets)
        return loss

    @property
    def target_layer(self) -> nn.Module:
        """The layer whose activations post-hoc CAMs explain by default: the last stage, or the backbone's
        ``post`` module where it has one (DenseNet's final BN-ReLU), whose output is what GAP → FC sees."""
        post = self.backbone.post
        return self.backbone.stages[-1] if isinstance(post, nn.Identity) else post


class PlainClassifier(Classifier):
    """The backbone alone: logits = FC(GAP(F)); its map is the CAM of the predicted class (Zhou et al. 2016).

    CAM_c = Σ_k W[c, k] · F_k for c = argmax logits, min-max scaled to [0, 1] per image (a flat map, see
    :func:`lficam.core.maps.is_flat`, gives zeros). Free: no gradients and no extra pass.
    """

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.out_channels, num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        check_images(x)
        features = self.backbone.post(self.backbone(x))
        logits = self.fc(features.mean(dim=(2, 3)))
        weights = self.fc.weight[logits.argmax(dim=1)]
        cam = torch.einsum("bc,bchw->bhw", weights.to(features.dtype), features)
        return ModelOutput(logits, minmax(cam))


class LFICAMClassifier(Classifier):
    """LFI-CAM (Lee, Park, Oh, Kwak, ICCV 2021): attention from learned feature importance, used in the forward pass.

    With x the normalised input and F = trunk(x) (B×C×h×w):
      g  = Up_{h×w}(mean_rgb(x))                      grey image at feature resolution (may be negative)
      N  = minmax_space(F) per channel; 0/0 → 1; N = 0 where F = 0
      w  = softmax_C(GAP(FIN(N · g)))                 one importance per channel
      S  = ReLU(Σ_k w_k F_k);  A = minmax_space(S)     (a constant S is kept as is, so S = 0 gives A = 0)
      F' = (1 + A) · F;  logits = FC(GAP(post(F')))     post: the backbone's (identity; DenseNet: BN-ReLU)
    Trained with cross-entropy on the logits only; nothing is detached, so the FIN learns through A.

    The logits are the official code's, constant S included. The reported ``attention`` is A where S varies
    and zeros where S is flat (:func:`lficam.core.maps.is_flat`: one value up to float rounding, e.g. every
    1×1 map), where the official A would be S itself and could exceed 1: a flat map points nowhere.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        fin: str = "paper",
        fin_relu_every_layer: bool | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        channels = backbone.out_channels
        relu_every = backbone.family == "imagenet" if fin_relu_every_layer is None else fin_relu_every_layer
        self.fin = create_fin(fin, channels, relu_every_layer=relu_every)
        self.fc = nn.Linear(channels, num_classes)

    def saliency(self, x: Tensor, features: Tensor) -> Tensor:
        """S (B×h×w) from the input and the trunk's features, method.md §1.2 steps 1–5."""
        grey = x.mean(dim=1, keepdim=True)
        grey = F.interpolate(grey, size=features.shape[-2:], mode="bilinear", align_corners=False)
        masked = minmax_channels(features).to(features.dtype) * grey.to(features.dtype)
        importance = self.fin(masked)
        return F.relu(torch.einsum("bc,bchw->bhw", importance.to(features.dtype), features))

    def forward(self, x: Tensor) -> ModelOutput:
        check_images(x)
        features = self.backbone(x)
        saliency = self.saliency(x, features)
        attention = minmax_spatial(saliency)  # step 6, as the official code: a constant S stays S
        reweighted = (1 + attention.unsqueeze(1).to(features.dtype)) * features
        logits = self.fc(self.backbone.post(reweighted).mean(dim=(2, 3)))
        flat = is_flat(saliency).view(-1, 1, 1)
        return ModelOutput(logits, torch.where(flat, torch.zeros_like(attention), attention))


def create_fin(kind: str, channels: int, *, relu_every_layer: bool) -> nn.Module:
    """The FIN variant by name.

    ``paper``: the published network (:class:`FeatureImportanceNetwork`, 36·C² conv weights).
    ``lite``: this project's light variant (:class:`~lficam.models.fin_lite.LiteFeatureImportanceNetwork`,
    a C/8 bottleneck with depthwise-separable 3×3 convolutions, 2·C·m + 2·m² + 24·m + 2·C parameters);
    ``relu_every_layer`` only applies to ``paper``.
    """
    builders = {
        "paper": lambda: FeatureImportanceNetwork(channels, relu_every_layer=relu_every_layer),
        "lite": lambda: LiteFeatureImportanceNetwork(channels),
    }
    if kind not in builders:
        raise UnknownNameError("FIN variant", kind, builders)
    return builders[kind]()
