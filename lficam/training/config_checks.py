"""Values that cannot train, refused with one sentence before anything is trained or written.

Without these, a batch size of 0 or a negative learning rate ended in a traceback from deep inside PyTorch,
and a training split smaller than one batch (incomplete batches are dropped) "trained" zero steps, tested an
untrained model and wrote its summary. :func:`check_config` looks at the config alone; :func:`check_data`
at the data module once it is set up, with the number of processes that share its training images.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lficam.core.errors import UserError
from lficam.training.optimizers import split_optimizer_config


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_count(data: DictConfig, key: str, why: str, other: str = "") -> None:
    value = data.get(key)
    if not _whole(value) or value < 1:
        raise UserError(f"data.{key}={value!r} {why}; use a whole number of at least 1{other}.")


def check_config(cfg: DictConfig) -> None:
    """Batch sizes, split sizes and optimiser settings that no training can use."""
    data = cfg.get("data") or {}
    if "batch_size" in data:
        _check_count(data, "batch_size", "is not a number of images per training batch")
    if data.get("eval_batch_size") is not None:
        _check_count(data, "eval_batch_size", "is not a number of images per evaluation batch")
    fits = cfg.get("train", True)
    # a split size of None means "all of it" (Fashion-MNIST's 60 000, a folder's every image)
    if fits and data.get("train_size") is not None:
        _check_count(data, "train_size", "leaves nothing to train on")
    if fits and data.get("val_size") is not None:
        _check_count(
            data, "val_size", "leaves no validation images, which choose the best checkpoint (val/acc)"
        )
    if cfg.get("test", True) and data.get("test_size") is not None:
        _check_count(data, "test_size", "leaves nothing to test", " or test=false")
    if cfg.get("optimizer"):
        _check_optimizer(cfg.optimizer)


def _check_optimizer(optimizer: DictConfig) -> None:
    lr = optimizer.get("lr")
    if lr is not None and not (
        isinstance(lr, int | float) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0
    ):
        raise UserError(
            f"optimizer.lr={lr!r} is not a learning rate; use a positive number such as optimizer.lr=0.05."
        )

    torch_optimizer, _ = split_optimizer_config(optimizer)  # backbone_lr_scale is ours, not the optimiser's
    try:  # PyTorch's own checks (a negative momentum, weight decay, beta …), on a stand-in parameter
        instantiate(torch_optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as error:
        raise UserError(
            f"{optimizer.get('_target_')} refuses the optimizer settings ({error}); correct the optimizer.* "
            "value it names."
        ) from None


def check_data(datamodule: pl.LightningDataModule, cfg: DictConfig, processes: int = 1) -> None:
    """For a fit (``train=true``), after ``datamodule.setup("fit")``: at least one training batch for each of
    ``processes`` DDP processes (each gets ⌈n / processes⌉ images) when incomplete batches are dropped, and
    some validation images."""
    if not cfg.get("train", True) or not hasattr(datamodule, "train_dataloader"):
        return
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    images = len(loader.dataset)
    named = f" (data.train_size={cfg.data.train_size})" if "train_size" in (cfg.get("data") or {}) else ""
    if images == 0:
        raise UserError(
            f"The training split has no images{named}; give it some, or choose another data.root."
        )
    each = math.ceil(images / processes)
    if loader.drop_last and loader.batch_size and each < loader.batch_size:
        share = f"the {images} training images{named}"
        if processes > 1:
            share = f"the {each} training images that each of the {processes} DDP processes gets of {images}"
            share += named
        raise UserError(
            f"data.batch_size={loader.batch_size} is more than {share}, and incomplete training batches are "
            f"dropped, so not one training step would run: use data.batch_size={each} or less, or more "
            "training images."
        )
    val_set = getattr(datamodule, "val_set", None)
    if val_set is not None and len(val_set) == 0:
        raise UserError(
            "The validation split has no images, and validation chooses the best checkpoint (val/acc); "
            "give it some (data.val_size, or the val/ folder of data.root)."
        )
