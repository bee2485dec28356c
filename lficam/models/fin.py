"""The Feature Importance Network of LFI-CAM (Lee et al., ICCV 2021, §3.2)."""

from __future__ import annotations

from torch import Tensor, nn

from lficam.models.init import he_init


class FeatureImportanceNetwork(nn.Module):
    """Maps C masked grey images to one importance weight per channel: w = softmax_k(GAP(FIN(M))_k).

    Four bias-free 3×3 convolutions C→C with "same" padding, each followed by BatchNorm; ReLU after the
    2nd and 4th (``relu_every_layer=False``, the CIFAR code) or after every BN (``True``, the later
    ImageNet code); then global average pooling over space and a softmax over the C channels.
    Size: 4·9·C² conv weights (9.4 M for C = 512, 151 M for C = 2048). He-normal (fan_out) init.
    """

    def __init__(self, channels: int, *, relu_every_layer: bool = False, num_layers: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)]
            if relu_every_layer or i % 2 == 1:
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        he_init(self)

    def forward(self, masked: Tensor) -> Tensor:
        """masked: B×C×h×w → importance weights B×C (each row sums to 1)."""
        scores = self.body(masked).mean(dim=(2, 3))
        return scores.float().softmax(dim=1).to(scores.dtype)
