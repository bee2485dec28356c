"""The model a training config asks for, as the keyword arguments of :func:`lficam.models.create_model`."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def model_config_of(cfg: DictConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`lficam.create_model` chosen by the ``model`` and ``attention`` groups."""
    options = {**(cfg.model.get("options") or {}), **(cfg.attention.get("options") or {})}
    return {
        "backbone": cfg.model.backbone,
        # None until a data set that counts its classes (image_folder) has been built
        "num_classes": None if cfg.data.get("num_classes") is None else int(cfg.data.num_classes),
        "attention": cfg.attention.name,
        **OmegaConf.to_container(OmegaConf.create(options), resolve=True),
    }
