"""torchvision ResNet-18/34/50/101/152 as :class:`Backbone` trunks (random initialisation by default)."""

from __future__ import annotations

from pathlib import Path

import torchvision
from torch import nn

from lficam.core.errors import UserError
from lficam.models.backbones import Backbone, StageInfo, register_backbone
from lficam.models.pretrained import TORCHVISION_RESNETS, torchvision_state_dict
from lficam.models.weight_files import load_matching_state, load_weights_file, looks_like_path

DEPTHS = TORCHVISION_RESNETS


def _build(name: str, *, stem_stride: int = 2, weights: str | Path | None = None) -> Backbone:
    """A torchvision ResNet without its classifier.

    stem_stride: 2 is the standard stem (7×7 maps at 224 px); 1 gives 14×14 maps at 224 px, as the later
        official LFI-CAM ImageNet code does with a stride-1 conv1.
    weights: None (random), a torchvision weight name (``imagenet`` = ``DEFAULT``, ``IMAGENET1K_V1``,
        ``IMAGENET1K_V2``: fetched into torch hub's cache, read from it offline) or a local file (safetensors
        or a tensor-only torch file) with torchvision's key names, which timm's ResNets share; the ``fc.*``
        keys are ignored because the head is ours.
    """
    if stem_stride not in (1, 2):
        raise UserError(f"stem_stride must be 1 or 2, got {stem_stride!r}.")
    net = getattr(torchvision.models, name)(weights=None)
    if weights is not None:
        if looks_like_path(weights):
            state, source = load_weights_file(weights), f"file {str(weights)!r}"
        else:
            state, source = torchvision_state_dict(name, str(weights)), f"{weights!r}"
        load_matching_state(net, state, source=source, target=name, ignored=lambda k: k.startswith("fc."))
    net.conv1.stride = (stem_stride, stem_stride)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    expansion = 4 if DEPTHS[name] >= 50 else 1
    info = [StageInfo(64 * expansion * 2**i, (2 * stem_stride) * 2**i) for i in range(4)]
    return Backbone(stem, stages, info, family="imagenet")


def _register(name: str) -> None:
    @register_backbone(name)
    def builder(*, stem_stride: int = 2, weights: str | Path | None = None) -> Backbone:
        # named keywords, not **options: create_model routes options by these names
        return _build(name, stem_stride=stem_stride, weights=weights)

    builder.__doc__ = (
        f"torchvision {name} trunk; options: stem_stride (2), weights (None, imagenet or a file)."
    )


for _name in DEPTHS:
    _register(_name)
