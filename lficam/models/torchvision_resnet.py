"""torchvision ResNet-18/34/50/101/152 as :class:`Backbone` trunks (random initialisation by default)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from lficam.errors import UserError
from lficam.models.backbones import Backbone, StageInfo, load_weights_file, register_backbone

_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}


def _build(name: str, *, stem_stride: int = 2, weights: str | Path | None = None) -> Backbone:
    """A torchvision ResNet without its classifier.

    stem_stride: 2 is the standard stem (7×7 maps at 224 px); 1 gives 14×14 maps at 224 px, as the later
        official LFI-CAM ImageNet code does with a stride-1 conv1.
    weights: an optional local file (safetensors or a tensor-only torch file) with torchvision's key names;
        the ``fc.*`` keys are ignored because the head is ours. Nothing is downloaded.
    """
    if stem_stride not in (1, 2):
        raise UserError(f"stem_stride must be 1 or 2, got {stem_stride!r}.")
    net = getattr(torchvision.models, name)(weights=None)
    if weights is not None:
        load_into(net, weights, name)
    net.conv1.stride = (stem_stride, stem_stride)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    expansion = 4 if _DEPTHS[name] >= 50 else 1
    info = [StageInfo(64 * expansion * 2**i, (2 * stem_stride) * 2**i) for i in range(4)]
    return Backbone(stem, stages, info, family="imagenet")


def load_into(net: nn.Module, weights: str | Path, name: str) -> None:
    """Copy a local weights file with torchvision's key names into ``net`` (its ``fc.*`` keys are ignored:
    the head is ours); one sentence for a file whose keys or shapes do not fit."""
    state = {
        k: v
        for k, v in load_weights_file(weights).items()
        if not (isinstance(k, str) and k.startswith("fc."))
    }
    expected = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    missing = [k for k in expected if k not in state]
    unexpected = [str(k) for k in state if k not in expected]
    mismatched = [
        k
        for k, v in expected.items()
        if k in state and not (torch.is_tensor(state[k]) and state[k].shape == v.shape)
    ]
    if missing or unexpected or mismatched:
        raise UserError(
            f"Weights file {str(weights)!r} does not fit {name}: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}) and "
            f"{len(mismatched)} of another shape (e.g. {mismatched[:2]})."
        )
    try:
        net.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of a layout or dtype that cannot be copied in
        raise UserError(
            f"Weights file {str(weights)!r} cannot be loaded into {name} ({str(error)[:120]})."
        ) from None


def _register(name: str) -> None:
    @register_backbone(name)
    def builder(*, stem_stride: int = 2, weights: str | Path | None = None) -> Backbone:
        # named keywords, not **options: create_model routes options by these names
        return _build(name, stem_stride=stem_stride, weights=weights)

    builder.__doc__ = f"torchvision {name} trunk; options: stem_stride (2), weights (None)."


for _name in _DEPTHS:
    _register(_name)
