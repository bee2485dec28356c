"""What a SLURM job asks of each node, from the trainer: a config resolver for ``conf/hydra/launcher/slurm.yaml``.

Registered when :mod:`lficam.cli` is imported, before Hydra resolves the launcher's config.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """The GPUs a job asks of each node: ``trainer.devices`` for a GPU trainer, none for a CPU one (a CPU
    partition refuses any gres request: "Invalid generic resource (gres) specification")."""
    if str(accelerator) in ("gpu", "cuda") and str(devices).isdigit() and int(devices) > 0:
        return int(devices)
    return None


if not OmegaConf.has_resolver("lficam_gpus_per_node"):
    OmegaConf.register_new_resolver("lficam_gpus_per_node", gpus_per_node)
