"""CIFAR ResNeXt-29 (Xie et al., CVPR 2017, §5.2), the ResNeXt of the official LFI-CAM code (method.md §1.3b).

A 3×3 stem with 64 channels, then three stages of n = (depth − 2)/9 bottleneck blocks with outputs
64·w, 128·w, 256·w channels (w: the widen factor, 4: 256/512/1024) at strides 1/2/2. A block with output
width o and cardinality g is
    1×1 conv → D, BN, ReLU;  grouped 3×3 conv D → D (g groups, the stride), BN, ReLU;  1×1 conv D → o, BN
    plus the shortcut (identity, or 1×1 conv + BN where the shape changes), then ReLU,
with D = g·o/w: 8 groups of 64 channels in the first stage of ResNeXt-29 8×64d (D = 512, 1024, 2048).
F is the last stage's output, C = 1024 at 8×8 for 32 px inputs; 34.4 M parameters with the 10-class FC.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from lficam.core.errors import UserError
from lficam.models.backbones import Backbone, StageInfo, load_own_weights, register_backbone
from lficam.models.init import he_init


class ResNeXtBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, cardinality: int, widen_factor: int) -> None:
        super().__init__()
        width = cardinality * cout // widen_factor
        self.conv_reduce = nn.Conv2d(cin, width, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(width)
        self.conv_group = nn.Conv2d(width, width, 3, stride, 1, groups=cardinality, bias=False)
        self.bn_group = nn.BatchNorm2d(width)
        self.conv_expand = nn.Conv2d(width, cout, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            None
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn_reduce(self.conv_reduce(x)))
        out = self.relu(self.bn_group(self.conv_group(out)))
        out = self.bn_expand(self.conv_expand(out))
        return self.relu(out + identity)


def cifar_resnext(depth: int = 29, cardinality: int = 8, widen_factor: int = 4) -> Backbone:
    """CIFAR ResNeXt trunk: depth 9n + 2, ``cardinality`` groups, stages of 64/128/256 × ``widen_factor``."""
    if depth < 11 or (depth - 2) % 9:
        raise UserError(f"CIFAR ResNeXt depth must be 9n + 2 (11, 20, 29, ...), got {depth}.")
    if cardinality < 1 or widen_factor < 1:
        raise UserError(
            f"cardinality and widen_factor must be positive, got {cardinality} and {widen_factor}."
        )
    n = (depth - 2) // 9
    stem = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
    )
    stages, info, cin = [], [], 64
    for i, (base, stride) in enumerate([(64, 1), (128, 2), (256, 2)]):
        cout = base * widen_factor
        blocks = [
            ResNeXtBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1, cardinality, widen_factor)
            for j in range(n)
        ]
        stages.append(nn.Sequential(*blocks))
        info.append(StageInfo(cout, 2**i))
        cin = cout
    return he_init(Backbone(stem, stages, info, family="cifar"))


@register_backbone("cifar_resnext29")
def _resnext29(cardinality: int = 8, widen_factor: int = 4, weights: str | Path | None = None) -> Backbone:
    """CIFAR ResNeXt-29 trunk; options: cardinality (8), widen_factor (4): the 8×64d model, C = 1024;
    weights (None or a file of its state dict)."""
    backbone = cifar_resnext(29, cardinality=cardinality, widen_factor=widen_factor)
    return load_own_weights(backbone, weights, "cifar_resnext29")
