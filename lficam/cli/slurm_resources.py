"""What a SLURM job asks of each node, from the trainer: a config resolver for ``conf/hydra/launcher/slurm.yaml``.

Registered when :mod:`lficam.cli` is imported, before Hydra resolves the launcher's config.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from lficam.training.distributed import requested_gpus


def gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """The GPUs a job asks of each node: what ``trainer.devices`` asks for on a GPU trainer, read as the GPU
    check reads it (a count, a list of ids, "0,1"; -1 and "auto" at least one); none for a CPU trainer (a CPU
    partition refuses any gres request: "Invalid generic resource (gres) specification")."""
    if str(accelerator) not in ("gpu", "cuda"):
        return None
    count = requested_gpus(OmegaConf.to_container(devices) if OmegaConf.is_config(devices) else devices)
    return count if count > 0 else None


if not OmegaConf.has_resolver("lficam_gpus_per_node"):
    OmegaConf.register_new_resolver("lficam_gpus_per_node", gpus_per_node)
