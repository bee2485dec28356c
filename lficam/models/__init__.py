"""Models: backbones × attention heads, all returning :class:`ModelOutput` ``(logits, attention, aux_logits)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from lficam.core.errors import UnknownNameError, UserError
from lficam.models import (  # noqa: F401  (register the backbones)
    cifar_densenet,
    cifar_resnet,
    cifar_resnext,
    timm_backbone,
    torchvision_resnet,
)
from lficam.models.abn import ABNClassifier
from lficam.models.backbones import (
    _REGISTRY,
    Backbone,
    available_backbones,
    backbone_builder,
    create_backbone,
)
from lficam.models.heads import Classifier, LFICAMClassifier, PlainClassifier
from lficam.models.output import ModelOutput

_HEADS: dict[str, Callable[..., Classifier]] = {
    "abn": ABNClassifier,
    "lficam": LFICAMClassifier,
    "none": PlainClassifier,
}


def register_attention(name: str, head: Callable[..., Classifier]) -> None:
    """Make a head available to :func:`create_model` and the ``attention`` config group."""
    _HEADS[name] = head


def available_attentions() -> list[str]:
    return sorted(_HEADS)


def _registered() -> set[str]:
    return set(_REGISTRY)


def _option_names(fn: Callable[..., object], skip: int) -> set[str]:
    params = list(inspect.signature(fn).parameters.values())[skip:]
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def create_model(
    backbone: str, *, num_classes: int, attention: str = "lficam", **options: object
) -> Classifier:
    """Build a classifier: ``create_model("resnet18", num_classes=10, attention="lficam")``.

    backbone: a name of :func:`available_backbones` (CIFAR ResNets ``cifar_resnet20…110``, CIFAR
        ``cifar_resnext29`` and ``cifar_densenet100``, torchvision ``resnet18…152``) or ``timm/<name>`` for
        any timm model with a features_only form (``timm/convnext_tiny``, ``timm/resnet50.a1_in1k``).
    attention: ``lficam`` (the paper's model), ``abn`` (the Attention Branch Network baseline), ``none``
        (the plain backbone, its map is its CAM) or another head added with :func:`register_attention`.
    options: keyword options of the backbone (e.g. ``stem_stride``, ``weights``, ``pretrained``, ``block``) or of the head
        (e.g. ``fin``); each goes where it belongs, an unknown one is an error.
    The forward pass of the result maps B×3×H×W images to ``ModelOutput(logits, attention, aux_logits)``.
    """
    if attention not in _HEADS:
        raise UnknownNameError("attention", attention, _HEADS)
    builder = backbone_builder(backbone)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"num_classes must be an integer of at least 2, got {num_classes!r}.")
    backbone_keys = _option_names(builder, 0 if backbone in _registered() else 1)
    head_keys = _option_names(_HEADS[attention], 2)
    unknown = set(options) - backbone_keys - head_keys
    if unknown:
        raise UserError(
            f"Unknown option(s) {sorted(unknown)} for backbone {backbone!r} with attention {attention!r}; "
            f"valid options are {sorted(backbone_keys | head_keys)}."
        )
    trunk = create_backbone(backbone, **{k: v for k, v in options.items() if k in backbone_keys})
    return _HEADS[attention](trunk, num_classes, **{k: v for k, v in options.items() if k in head_keys})


__all__ = [
    "ABNClassifier",
    "Backbone",
    "Classifier",
    "LFICAMClassifier",
    "ModelOutput",
    "PlainClassifier",
    "available_attentions",
    "available_backbones",
    "create_backbone",
    "create_model",
    "register_attention",
]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
