"""Fine-tuning a pretrained backbone under a fresh head and FIN: learning-rate groups, a frozen start, and the
input normalisation the pretrained weights expect.

- ``optimizer.backbone_lr_scale``: the backbone's parameters learn at ``lr · scale``, the head's and the FIN's
  at ``lr`` (:func:`parameter_groups`); 1 keeps one group, as before.
- ``callbacks.freeze_backbone.epochs``: :class:`FreezeBackbone` keeps the backbone fixed for the first N epochs
  (weights and BatchNorm statistics), so that a randomly initialised FIN and FC do not push their first,
  large gradients into pretrained features.
- ``model.normalization``: :func:`resolve_normalization` makes the data module normalise as the pretrained
  weights were trained (timm's ``pretrained_cfg`` mean/std, torchvision's weight transforms).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from lficam.errors import UserError

log = logging.getLogger("lficam")

NORMALIZATIONS = ("auto", "dataset", "pretrained")


# Learning-rate groups


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


# Freezing the backbone


def _batchnorms(module: nn.Module) -> Iterator[nn.Module]:
    return (m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def set_backbone_frozen(net: nn.Module, frozen: bool) -> None:
    """Freeze (``requires_grad=False``, BatchNorm in eval mode: its running statistics stay) or release
    ``net.backbone``."""
    for parameter in net.backbone.parameters():
        parameter.requires_grad_(not frozen)
    for bn in _batchnorms(net.backbone):
        bn.train(not frozen and net.training)


class FreezeBackbone(pl.Callback):
    """Keep the backbone fixed for the first ``epochs`` training epochs, then train it (``epochs=0``: never).

    Frozen means no gradient for its parameters and its BatchNorm layers in eval mode, so neither the
    weights nor the running statistics change; gradients still flow through it where a head needs them
    (LFI-CAM's FIN reads the backbone's features, not its weights). Lightning puts the model in train mode
    at each epoch start and after each validation, so the BatchNorm mode is set again before every batch.
    The state is a function of the epoch, so a resumed run freezes as an unbroken one. Under DDP, parameters
    without gradients stall the gradient reduction: use ``trainer.strategy=ddp_find_unused_parameters_true``.
    """

    def __init__(self, epochs: int = 0) -> None:
        if not isinstance(epochs, int) or epochs < 0:
            raise UserError(f"callbacks.freeze_backbone.epochs must be an integer ≥ 0, got {epochs!r}.")
        self.epochs = epochs

    def _frozen(self, trainer: pl.Trainer) -> bool:
        return trainer.current_epoch < self.epochs

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.epochs:  # off: leave whatever the model's own requires_grad flags are
            return
        frozen = self._frozen(trainer)
        if trainer.current_epoch in (0, self.epochs):
            log.info("Backbone %s at epoch %d.", "frozen" if frozen else "trained", trainer.current_epoch)
        if frozen or trainer.current_epoch == self.epochs:
            set_backbone_frozen(pl_module.net, frozen)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int
    ) -> None:
        if self._frozen(trainer):
            for bn in _batchnorms(pl_module.net.backbone):
                bn.eval()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.epochs:
            set_backbone_frozen(pl_module.net, False)  # testing and export see an ordinary model


# Input normalisation of pretrained weights


def _user_overrides() -> list[str]:
    """The command-line overrides of this Hydra run ([] outside a Hydra run, e.g. composed in tests)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def _takes_mean_and_std(data: DictConfig) -> bool:
    """Whether the data module of ``data`` (its ``_target_``) has ``mean`` and ``std`` arguments."""
    if "mean" in data and "std" in data:
        return True
    try:
        from hydra.utils import get_class

        parameters = inspect.signature(get_class(data._target_)).parameters
    except Exception:  # no _target_, or one that cannot be imported: instantiating it will say so
        return False
    return "mean" in parameters and "std" in parameters


def resolve_normalization(cfg: DictConfig) -> str:
    """Set ``cfg.data.mean``/``std`` to the pretrained weights' normalisation where ``model.normalization`` asks,
    and record the choice in ``cfg.model.normalization_used``; returns it.

    ``model.normalization``: ``auto`` (default): the pretrained weights' mean/std when the model starts from
    weights that carry one (timm's ``pretrained_cfg``, torchvision's weight transforms) and the command
    line does not set ``data.mean`` or ``data.std``; else the data set's. ``dataset``: always the data set's.
    ``pretrained``: the weights', an error if they carry none.
    """
    from lficam.models.pretrained import pretrained_normalization
    from lficam.train import model_config_of

    choice = str(cfg.model.get("normalization", "auto"))
    if choice not in NORMALIZATIONS:
        raise UserError(f"model.normalization={choice!r}: choose one of {', '.join(NORMALIZATIONS)}.")
    found = None if choice == "dataset" else pretrained_normalization(model_config_of(cfg))
    if choice == "pretrained" and found is None:
        raise UserError(
            f"model.normalization=pretrained, but {cfg.model.backbone} starts from weights without a known "
            "normalisation (random, or a local file): use model.normalization=dataset or set data.mean/std."
        )
    user_set = [
        o.split("=")[0].lstrip("+")
        for o in _user_overrides()
        if o.lstrip("+").startswith(("data.mean", "data.std"))
    ]
    used = "dataset"
    if found is not None and choice == "auto" and user_set:
        log.info("Normalising with the data set's mean/std: %s set on the command line.", ", ".join(user_set))
    elif found is not None and not _takes_mean_and_std(cfg.data):
        log.warning(
            "data=%s takes no mean/std: its inputs are not normalised as %s.",
            cfg.data.get("_target_"),
            found[2],
        )
    elif found is not None:
        mean, std, source = found
        with open_dict(cfg):
            cfg.data.mean, cfg.data.std = mean, std
        used = f"pretrained: {source}"
        log.info("Normalising inputs as %s: data.mean=%s, data.std=%s.", source, mean, std)
    with open_dict(cfg):
        cfg.model.normalization_used = used
    return used
