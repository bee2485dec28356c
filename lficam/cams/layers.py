"""Which layer a CAM explains, and which linear layer is a model's classifier."""

from __future__ import annotations

from torch import nn

from lficam.core.errors import UserError


def _contains_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _timm_last_feature_module(model: nn.Module) -> nn.Module | None:
    """A timm classifier's module of its last ``feature_info`` stage (``layer4``, ``stages.3``,
    ``features.norm5``), where that stage feeds the pooled head (its channels are ``num_features``; not so
    for EfficientNet, whose 1×1 ``conv_head`` follows the last stage)."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list) or not info or not isinstance(info[-1], dict) or "module" not in info[-1]:
        return None
    if info[-1].get("num_chs") != getattr(model, "num_features", None):
        return None
    try:
        return model.get_submodule(info[-1]["module"])
    except AttributeError:
        return None


def default_target_layer(model: nn.Module) -> nn.Module:
    """``model.target_layer`` (our models: the last backbone stage, whose channels and resolution are the
    backbone's last ``feature_info`` entry, timm backbones included), else a timm classifier's last
    ``feature_info`` module, else ``model.layer4`` (torchvision ResNets), else the last child module that
    contains a Conv2d (VGG's and DenseNet's ``features``...)."""
    layer = getattr(model, "target_layer", None)
    if isinstance(layer, nn.Module):
        return layer
    layer = _timm_last_feature_module(model)
    if layer is not None:
        return layer
    layer = getattr(model, "layer4", None)
    if isinstance(layer, nn.Module):
        return layer
    for child in reversed(list(model.children())):
        if _contains_conv(child):
            return child
    if _contains_conv(model):
        return model
    raise UserError(
        f"{type(model).__name__} has no convolutional layer to explain: pass target_layer= a module of the model "
        "that outputs B×C×h×w feature maps."
    )


def resolve_target_layer(model: nn.Module, target_layer: nn.Module | str | None) -> nn.Module:
    """The module to explain: the default, a module of ``model``, or its dotted name (``"layer4.1.conv2"``)."""
    if target_layer is None:
        return default_target_layer(model)
    if isinstance(target_layer, str):
        try:
            return model.get_submodule(target_layer)
        except AttributeError:
            names = [name for name, _ in model.named_children()]
            raise UserError(
                f"{type(model).__name__} has no layer {target_layer!r}; its top-level layers are {names} "
                "(use dots for nested ones, e.g. 'layer4.1')."
            ) from None
    if not isinstance(target_layer, nn.Module):
        raise UserError(
            f"target_layer must be a module of the model or its name, got {type(target_layer).__name__}."
        )
    if not any(m is target_layer for m in model.modules()):
        raise UserError(
            f"target_layer {type(target_layer).__name__} is not part of {type(model).__name__}: pass one of its "
            "own modules (e.g. model.layer4)."
        )
    return target_layer


def find_classifier(model: nn.Module) -> nn.Linear | None:
    """The linear classifier after global average pooling: ``model.fc`` if it is linear, else the last Linear."""
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):
        return fc
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None
