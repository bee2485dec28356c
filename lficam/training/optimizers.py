"""The optimiser every run builds: its parameter groups (the backbone at a scaled learning rate) and the
``optimizer`` config without our own key.

``optimizer.backbone_lr_scale``: the backbone's parameters learn at ``lr · scale``, the head's and the FIN's at
``lr`` (:func:`parameter_groups`); 1 keeps one group.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lficam.core.errors import UserError


def parameter_groups(net: nn.Module, base_lr: float, backbone_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: ``[{"params": head and FIN, "lr": base_lr}, {"params": backbone,
    "lr": base_lr · backbone_lr_scale}]``; a single group of every parameter when the scale is 1.

    The backbone is ``net.backbone`` (stem, stages and post module); ABN's attention branch, the FIN and the
    FC are the head. Frozen parameters stay in their group, so unfreezing needs no new optimiser.
    """
    if backbone_lr_scale < 0:
        raise UserError(f"optimizer.backbone_lr_scale must be at least 0, got {backbone_lr_scale}.")
    if backbone_lr_scale == 1:
        return [{"params": list(net.parameters()), "lr": base_lr}]
    backbone = {id(p) for p in net.backbone.parameters()}
    head = [p for p in net.parameters() if id(p) not in backbone]
    return [
        {"params": head, "lr": base_lr},
        {"params": list(net.backbone.parameters()), "lr": base_lr * backbone_lr_scale},
    ]


def _base_lr(factory: Callable[..., torch.optim.Optimizer]) -> float:
    """The ``lr`` a partial optimiser will use: its keyword, else the optimiser class's default."""
    if isinstance(factory, functools.partial):
        if "lr" in factory.keywords:
            return float(factory.keywords["lr"])
        factory = factory.func
    default = inspect.signature(factory).parameters.get("lr")
    if default is None or default.default is inspect.Parameter.empty:
        raise UserError(f"The optimiser {factory!r} has no default lr: set optimizer.lr.")
    return float(default.default)


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer], net: nn.Module, backbone_lr_scale: float = 1.0
) -> torch.optim.Optimizer:
    """``factory(params=parameter_groups(net, lr, backbone_lr_scale))`` with the factory's own ``lr``."""
    return factory(params=parameter_groups(net, _base_lr(factory), backbone_lr_scale))


def split_optimizer_config(optimizer: DictConfig) -> tuple[DictConfig, float]:
    """The optimiser config without ``backbone_lr_scale`` (which is ours, not the optimiser's), and the scale."""
    config = OmegaConf.create(OmegaConf.to_container(optimizer, resolve=True))
    scale = float(config.pop("backbone_lr_scale", 1.0))
    return config, scale
