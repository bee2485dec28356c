"""The images every map is scored on: a checkpoint's data set, its test split, and the first N test images."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from lficam.data.base import first_items

log = logging.getLogger("lficam")


@dataclass
class Probe:
    """The first N test images of a data set, the same (by index) for every run and every method.

    ``images``: normalised model inputs on the device; ``labels``; ``masks`` (B×H×W object masks, None when the
    split has none); ``ids``: the images' indices in the split (stability pairs maps by them); ``display``: the
    images in [0, 1] on the CPU, for pictures."""

    images: Tensor
    labels: Tensor
    masks: Tensor | None
    ids: Tensor
    display: Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


def build_test_data(
    data_config: dict[str, Any], data_dir: str | None = None, overrides: dict[str, Any] | None = None
) -> Any:
    """The data module of ``data_config`` (a checkpoint's, with ``overrides`` on top) with its test split set
    up; a ``cache_dir`` is moved to this machine's ``data_dir``."""
    config = {**data_config, **(overrides or {})}
    if data_dir is not None and "cache_dir" in config:
        config["cache_dir"] = data_dir
    if "root" in config and config["root"] and not Path(str(config["root"])).exists():
        log.warning("The training data root %s does not exist here; pass data.root=...", config["root"])
    datamodule = instantiate(OmegaConf.create(config))
    datamodule.setup("test")
    return datamodule


def first_test_images(datamodule: Any, count: int, device: torch.device) -> Probe:
    """The first ``count`` images of the data module's test split (fewer when the split is smaller)."""
    batch = first_items(datamodule.test_set, count)
    images = batch["image"].float()
    denormalize = getattr(datamodule, "denormalize", lambda t: t.clamp(0, 1))
    return Probe(
        images=images.to(device),
        labels=batch["label"].long().to(device),
        masks=batch["mask"].to(device) if "mask" in batch else None,
        ids=batch["index"].long(),
        display=denormalize(images).cpu(),
    )
