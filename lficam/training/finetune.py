"""Fine-tuning a pretrained backbone under a fresh head and FIN: a frozen start and the input normalisation the pretrained weights expect.

- ``optimizer.backbone_lr_scale``: the backbone's learning-rate scale (:mod:`lficam.training.optimizers`).
- ``callbacks.freeze_backbone.epochs``: :class:`FreezeBackbone` keeps the backbone fixed for the first N epochs
  (weights and BatchNorm statistics), so that a randomly initialised FIN and FC do not push their first,
  large gradients into pretrained features.
- ``model.normalization``: :func:`resolve_normalization` makes the data module normalise as the pretrained
  weights were trained (timm's ``pretrained_cfg`` mean/std, torchvision's weight transforms).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig, open_dict
from torch import nn

from lficam.core.errors import UserError
from lficam.models.pretrained import pretrained_normalization
from lficam.training.model_config import model_config_of

log = logging.getLogger("lficam")

NORMALIZATIONS = ("auto", "dataset", "pretrained")


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
