"""CIFAR-style ResNets (He et al. 2016, §4.2) as the paper's CIFAR experiments use them.

A 3×3 stem with 16 channels, three stages of 16/32/64 × expansion channels at strides 1/2/2, depth 6n + 2
with n blocks per stage; basic blocks below depth 44 and bottleneck blocks (expansion 4) from depth 44,
as in the ABN and LFI-CAM CIFAR code, so ResNet-110 ends with 256 channels. Projection shortcuts
(1×1 conv + BN) where the shape changes. The last stage is 8×8 at 32 px.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from lficam.core.errors import UserError
from lficam.models.backbones import Backbone, StageInfo, load_own_weights, register_backbone
from lficam.models.init import he_init


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, planes * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def cifar_resnet(depth: int, block: str = "auto") -> Backbone:
    """CIFAR ResNet trunk of the given depth (6n + 2); ``block`` is auto (bottleneck from 44), basic or bottleneck."""
    if depth < 8 or (depth - 2) % 6:
        raise UserError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}.")
    if block not in ("auto", "basic", "bottleneck"):
        raise UserError(f"block must be auto, basic or bottleneck, got {block!r}.")
    block_cls = Bottleneck if block == "bottleneck" or (block == "auto" and depth >= 44) else BasicBlock
    n = (depth - 2) // 6
    stem = nn.Sequential(_conv3x3(3, 16), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
    stages, info, cin = [], [], 16
    for i, (planes, stride) in enumerate([(16, 1), (32, 2), (64, 2)]):
        blocks = []
        for j in range(n):
            blocks.append(block_cls(cin, planes, stride if j == 0 else 1))
            cin = planes * block_cls.expansion
        stages.append(nn.Sequential(*blocks))
        info.append(StageInfo(cin, 2**i))
    backbone = Backbone(stem, stages, info, family="cifar")
    he_init(backbone)
    return backbone


def _register(depth: int) -> None:
    @register_backbone(f"cifar_resnet{depth}")
    def builder(block: str = "auto", weights: str | Path | None = None) -> Backbone:
        return load_own_weights(cifar_resnet(depth, block=block), weights, f"cifar_resnet{depth}")

    builder.__doc__ = (
        f"CIFAR ResNet-{depth} trunk; options: block (auto), weights (None or a file of its state dict)."
    )


for _depth in (20, 32, 44, 56, 110):
    _register(_depth)
