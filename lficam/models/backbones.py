"""Backbones as trunks split into stages, so that any attention head can sit on any of them.

A :class:`Backbone` answers the questions a head asks (timm's ``feature_info`` in spirit): how many
channels and what stride each stage has, and it runs the stem and stages separately, because ABN needs
the output of the second-to-last stage and a copy of the last one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from lficam.core.errors import UnknownNameError, UserError
from lficam.models.init import he_init
from lficam.models.weight_files import load_matching_state, load_weights_file, looks_like_path


@dataclass(frozen=True)
class StageInfo:
    """Channels and total stride (input pixels per feature pixel) of one stage's output."""

    channels: int
    reduction: int


class Backbone(nn.Module):
    """A stem followed by a sequence of stages; ``forward`` returns the last stage's feature map F.

    ``post`` is what the trunk applies to F before global average pooling, after any attention has
    reweighted it: the identity for ResNets, BN → ReLU for the pre-activation CIFAR DenseNet, whose F is
    taken before its final BN-ReLU (method.md §1.3b). Heads compute ``FC(GAP(post(F')))``.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: list[nn.Module],
        info: list[StageInfo],
        family: str,
        *,
        post: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if len(stages) != len(info):
            raise ValueError(f"{len(stages)} stages but {len(info)} StageInfo entries: give one per stage.")
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.post = nn.Identity() if post is None else post
        self.feature_info = list(info)
        self.family = family  # "cifar" or "imagenet": picks defaults such as the FIN's activations
        self.name = type(self).__name__  # the registry name, set by create_backbone

    @property
    def out_channels(self) -> int:
        return self.feature_info[-1].channels

    def forward_until(self, x: Tensor, num_stages: int) -> Tensor:
        """Run the stem and the first ``num_stages`` stages."""
        x = self.stem(x)
        for stage in self.stages[:num_stages]:
            x = stage(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_until(x, len(self.stages))

    def last_stage_copy(self, stride: int = 1) -> nn.Module:
        """A freshly initialised copy of the last stage with its downsampling at ``stride`` (ABN's branch).

        Every strided convolution gets the stride; a pooling layer that only downsamples (kernel = stride,
        e.g. ResNet-D shortcuts or DenseNet transitions) becomes the identity at stride 1, and any other
        strided pooling gets the stride. With stride 1 the copy must then map the second-to-last stage's
        output to C channels at the same resolution; a stage whose downsampling is something else (a
        2×2 patch convolution, a strided attention block) cannot be copied this way: UserError.
        """
        stage = copy.deepcopy(self.stages[-1])
        for name, module in list(stage.named_modules()):
            if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
                module.stride = (stride, stride)
            elif isinstance(module, nn.MaxPool2d | nn.AvgPool2d) and _pair(module.stride) != (1, 1):
                if stride == 1 and _pair(module.kernel_size) == _pair(module.stride) and name:
                    stage.set_submodule(name, nn.Identity())
                else:
                    module.stride = stride
        if stride == 1 and len(self.stages) > 1:
            self._check_same_resolution(stage)
        return he_init(stage)

    def _check_same_resolution(self, stage: nn.Module) -> None:
        """Run the stride-1 copy on a probe of the second-to-last stage's shape; refuse it where it downsamples."""
        channels_in, side = self.feature_info[-2].channels, 8
        probe = torch.zeros(2, channels_in, side, side)
        parameter = next(stage.parameters(), None)
        if parameter is not None:
            probe = probe.to(parameter.device, parameter.dtype)
        training = stage.training
        try:
            with torch.no_grad():
                shape = tuple(stage.eval()(probe).shape)
        except RuntimeError as error:  # a shortcut that still downsamples cannot be added to the main path
            shape = (f"an error: {str(error).splitlines()[0][:80]}",)
        finally:
            stage.train(training)
        if shape != (2, self.out_channels, side, side):
            got = shape[0] if isinstance(shape[0], str) else shape[1:]
            raise UserError(
                f"ABN needs a stride-1 copy of the last stage of {self.name}, and this one cannot be made "
                f"(a {side}×{side} input gives {got}, not "
                f"{(self.out_channels, side, side)}): ABN works where the last stage downsamples with strided "
                "convolutions or pooling (ResNet, ResNeXt, SE-ResNet, RegNet, DenseNet, EfficientNet, "
                "MobileNetV3 and the CIFAR families); use attention=lficam or attention=none here."
            )


_REGISTRY: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    def wrap(builder: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _REGISTRY[name] = builder
        return builder

    return wrap


#: Families of backbones named by a prefix and a name of another library: ``timm/<name>``.
_PREFIXES: dict[str, Callable[..., Backbone]] = {}


def register_backbone_prefix(prefix: str, builder: Callable[..., Backbone]) -> None:
    """Route every backbone name ``<prefix><name>`` to ``builder(name, **options)``."""
    _PREFIXES[prefix] = builder


def backbone_builder(name: str) -> Callable[..., Backbone]:
    """The builder of a backbone name: a registered one, or a prefix family (``timm/resnet50``)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for prefix, builder in _PREFIXES.items():
        if isinstance(name, str) and name.startswith(prefix):
            return builder
    raise UnknownNameError("backbone", name, available_backbones())


def available_backbones() -> list[str]:
    """Registered names, and ``<prefix><name>`` for each prefix family (e.g. ``timm/<name>``)."""
    return sorted(_REGISTRY) + [f"{prefix}<name>" for prefix in sorted(_PREFIXES)]


def create_backbone(name: str, **options: object) -> Backbone:
    """Build a backbone by name, e.g. ``create_backbone("resnet50", stem_stride=1)``."""
    builder = backbone_builder(name)
    prefix = next((p for p in _PREFIXES if name not in _REGISTRY and name.startswith(p)), None)
    backbone = builder(name[len(prefix) :], **options) if prefix else builder(**options)
    backbone.name = name
    return backbone


def load_own_weights(backbone: Backbone, weights: str | Path | None, name: str) -> Backbone:
    """A backbone without published pretrained weights (the CIFAR families): ``weights`` may be a local file
    of this backbone's own state dict (keys ``stem.…``, ``stages.…``); a weight name is one sentence."""
    if weights is None:
        return backbone
    if not looks_like_path(weights):
        raise UserError(
            f"{name} has no published pretrained weights (weights={weights!r}; the paper trains its CIFAR models "
            "from scratch): drop model.options.weights, give a file of this backbone's state dict, or choose a "
            "backbone with ImageNet weights (resnet18…152 with weights=imagenet, or timm/<name> with "
            "pretrained=true)."
        )
    load_matching_state(backbone, load_weights_file(weights), source=f"file {str(weights)!r}", target=name)
    return backbone
