"""CIFAR DenseNet-BC (Huang et al., CVPR 2017, §3), the DenseNet of the official LFI-CAM code (method.md §1.3b).

Depth L = 6n + 4 with n bottleneck layers per dense block and growth rate k: a 3×3 stem to 2k channels,
three dense blocks separated by transitions (BN, ReLU, 1×1 conv halving the channels, 2×2 average pooling).
A bottleneck layer is pre-activation, BN → ReLU → 1×1 conv to 4k → BN → ReLU → 3×3 conv to k, and its output
is concatenated to its input. DenseNet-BC-100 with k = 12 has n = 16: 24 → 216 → 108 → 300 → 150 → 342
channels; the trunk ends with BN → ReLU before GAP → FC. 0.8 M parameters.

As in the official LFI-CAM code, F is the third dense block's output *before* that final BN-ReLU
(pre-activation, so it can be negative): C = 342 at 8×8 for 32 px inputs. The final BN-ReLU is the
backbone's ``post`` module, applied after the attention reweighting: logits = FC(GAP(ReLU(BN((1 + A)·F)))).
Stages: [block 1 + transition 1, block 2 + transition 2, block 3] (16×16, 8×8, 8×8 at 32 px), so that
ABN's attention branch is a copy of the third dense block on the second transition's output.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from lficam.core.errors import UserError
from lficam.models.backbones import Backbone, StageInfo, load_own_weights, register_backbone
from lficam.models.init import he_init


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class DenseLayer(nn.Module):
    """BN-ReLU-conv1×1(4k)-BN-ReLU-conv3×3(k); returns the input with the k new channels appended."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.body(x)], dim=1)


def _transition(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2)
    )


def cifar_densenet(depth: int = 100, growth: int = 12, compression: float = 0.5) -> Backbone:
    """DenseNet-BC trunk of depth 6n + 4 and growth rate ``growth``; transitions keep ``compression`` of the channels."""
    if depth < 10 or (depth - 4) % 6:
        raise UserError(f"CIFAR DenseNet-BC depth must be 6n + 4 (40, 100, 190, ...), got {depth}.")
    if growth < 1 or not 0 < compression <= 1:
        raise UserError(f"growth must be positive and compression in (0, 1], got {growth} and {compression}.")
    n = (depth - 4) // 6
    channels = 2 * growth
    stem = nn.Conv2d(3, channels, 3, padding=1, bias=False)
    stages, info = [], []
    for i in range(3):
        layers: list[nn.Module] = []
        for _ in range(n):
            layers.append(DenseLayer(channels, growth))
            channels += growth
        reduction = 2**i
        if i < 2:
            out = int(channels * compression)
            layers.append(_transition(channels, out))
            channels, reduction = out, 2 ** (i + 1)
        stages.append(nn.Sequential(*layers))
        info.append(StageInfo(channels, reduction))
    return he_init(Backbone(stem, stages, info, family="cifar", post=_bn_relu(channels)))


@register_backbone("cifar_densenet100")
def _densenet100(growth: int = 12, weights: str | Path | None = None) -> Backbone:
    """CIFAR DenseNet-BC-100 trunk; options: growth (12): C = 342, F before the final BN-ReLU; weights (None
    or a file of its state dict)."""
    return load_own_weights(cifar_densenet(100, growth=growth), weights, "cifar_densenet100")
