"""A run restarted into its own folder resumes from that folder's last checkpoint by itself.

``ckpt_path=auto`` asks for it; a job that SLURM restarts (requeue, preemption: ``SLURM_RESTART_COUNT`` > 0)
or torchrun restarts (``--max-restarts``: a later attempt of the worker group, :func:`elastic_attempt`; or
``TORCHELASTIC_RESTART_COUNT`` > 0) gets it without asking, as the
same command runs again in the same folder and would otherwise start from epoch 0 over its own checkpoints
and metrics. The folder's ``checkpoints/last.ckpt`` then becomes ``ckpt_path``, which resumes exactly as an
explicit ``ckpt_path=`` does (:mod:`lficam.training.resume`); without one the run starts fresh and says so.

Preemption: under ``hydra/launcher=slurm`` submitit owns the warning signal (SIGUSR2 ``signal_delay_s`` before
the end, or a preemption): it requeues the job, which then resumes here. Lightning's own SLURM requeue handler
is switched off in submitit's jobs (:func:`cluster_plugins`): both would requeue, and Lightning's saves an
``hpc_ckpt_N.ckpt`` of its own beside the run's ``last.ckpt``, which the restart resumes from instead.
In a job without submitit (``sbatch`` with ``--signal=USR1@90``) Lightning's handler is the only one, and stays:
it requeues the job, and the restart still resumes from ``last.ckpt`` where there is one (Lightning loads its
``hpc_ckpt`` only when no ``ckpt_path`` is given).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only
from omegaconf import DictConfig

log = logging.getLogger("lficam")

AUTO = "auto"


#: the agent's store and this process's start of torchrun's worker group (0: the first), once counted
_ELASTIC: dict[str, Any] = {}


def elastic_attempt() -> int | None:
    """Which start of torchrun's worker group this process belongs to, the same number on every node; None
    outside torchrun. torchrun counts restarts per agent (``TORCHELASTIC_RESTART_COUNT`` stays 0 on a node
    whose own workers did not fail, though its group restarts too), so every rank counts itself in the agent's
    store instead: the n-th start of a group of ``WORLD_SIZE`` ranks is attempt ``(n - 1) // WORLD_SIZE``."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if "attempt" not in _ELASTIC:
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=timedelta(seconds=300),
        )
        joined = store.add("lficam/ranks_joined", 1)
        _ELASTIC.update(store=store, attempt=(joined - 1) // int(os.environ["WORLD_SIZE"]))
    return _ELASTIC["attempt"]


def restart() -> str | None:
    """Who restarted this process into its run, or None for a first start."""
    attempt = elastic_attempt()
    if attempt:
        return f"torchrun restarted the worker group (attempt {attempt + 1})"
    slurm, elastic = (
        os.environ.get("SLURM_RESTART_COUNT", "0"),
        os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"),
    )
    if slurm.isdigit() and int(slurm) > 0:
        return f"SLURM restarted job {os.environ.get('SLURM_JOB_ID', '?')} (restart {slurm})"
    if elastic.isdigit() and int(elastic) > 0:
        return f"torchrun restarted the worker group (restart {elastic})"
    return None


def resolve_ckpt_path(cfg: DictConfig, last: Path) -> None:
    """Turn ``ckpt_path=auto``, or no ``ckpt_path`` in a restarted run, into ``last`` where it exists, else into
    none; log one line that says which (the run's first)."""
    asked, restarted = cfg.get("ckpt_path") == AUTO, restart()
    if not asked and not (restarted and cfg.get("ckpt_path") is None and cfg.get("train", True)):
        return
    why = "ckpt_path=auto" if asked else restarted
    cfg.ckpt_path = str(last) if last.is_file() else None
    if rank_zero_only.rank != 0:
        return
    if cfg.ckpt_path:
        log.info("%s: resuming from this run folder's %s.", why, last)
    else:
        log.info("%s: %s does not exist yet, so this run starts fresh.", why, last)


class AttemptDDPStrategy(DDPStrategy):
    """Lightning's DDP whose process group lives under this attempt's prefix of torchrun's agent store: the
    keys a killed attempt left there (its ranks' gloo addresses) are not read by the next one, which otherwise
    fails in gloo's connectFullMesh on the dead addresses."""

    def setup_distributed(self) -> None:
        if not dist.is_initialized():
            self.set_world_ranks()
            backend = self._get_process_group_backend()
            store = dist.PrefixStore(f"lficam/attempt_{_ELASTIC['attempt']}/", _ELASTIC["store"])
            dist.init_process_group(
                backend, store=store, rank=self.global_rank, world_size=self.world_size, timeout=self._timeout
            )
            rank_zero_info(
                f"{'-' * 100}\ndistributed_backend={backend}\n"
                f"All distributed processes registered. Starting with {self.world_size} processes\n"
                f"{'-' * 100}\n"
            )
        super().setup_distributed()


def cluster_plugins(trainer_cfg: Any) -> dict[str, Any]:
    """Trainer arguments for clusters: under torchrun, DDP on this attempt's part of the agent's store
    (:class:`AttemptDDPStrategy`) where ``trainer.strategy`` is plain ``ddp``; in submitit's SLURM jobs, preemption
    left to submitit: Lightning's SLURM environment without its requeue handler, where Lightning would detect
    SLURM and no plugin is configured."""
    if elastic_attempt() is not None and trainer_cfg.get("strategy") == "ddp":
        return {"strategy": AttemptDDPStrategy()}
    under_submitit = os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
    if trainer_cfg.get("plugins") or not under_submitit or not SLURMEnvironment.detect():
        return {}
    return {"plugins": [SLURMEnvironment(auto_requeue=False)]}
