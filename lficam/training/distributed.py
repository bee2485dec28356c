"""Multi-process training under Hydra: the GPU check and the extra DDP ranks of a job.

Lightning's DDP launcher starts rank k > 0 by running ``sys.argv`` again. Under Hydra that would start a
run folder per rank, and under a multirun a whole sweep per rank; :func:`ranks_join_this_run` makes every
rank of a job write into that job's one folder, and ends the ranks before the next job of a sweep.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from lficam.core.errors import UserError

log = logging.getLogger("lficam")


def requested_gpus(devices: Any) -> int:
    """How many GPUs ``trainer.devices`` asks for: a count, a list of ids, "0,1", or "auto"/-1 (at least one)."""
    if isinstance(devices, int):
        return 1 if devices == -1 else devices
    if isinstance(devices, str):
        ids = [d for d in devices.split(",") if d.strip()]
        if len(ids) == 1 and ids[0].strip().lstrip("-").isdigit():
            count = int(ids[0])
            return 1 if count == -1 else count
        return len(ids) if devices.strip() != "auto" else 1
    return len(devices)  # a list of device ids


def check_devices(cfg: DictConfig) -> None:
    """Refuse a GPU trainer (``trainer=gpu``, ``trainer=ddp``) on a machine with fewer GPUs than it asks for."""
    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator not in ("gpu", "cuda"):
        return
    devices = trainer.get("devices", "auto")
    devices = OmegaConf.to_container(devices) if OmegaConf.is_config(devices) else devices
    wanted, available = requested_gpus(devices), torch.cuda.device_count()
    if wanted > available:
        raise UserError(
            f"trainer.accelerator={accelerator} with trainer.devices={devices} asks for {wanted} GPU(s) but this "
            f"machine has {available}: use trainer=ddp_cpu to run DDP on CPU processes, trainer=cpu for one "
            "process, or a smaller trainer.devices."
        )


#: How long a node other than the first waits for the first node's rendezvous endpoint (seconds); the
#: environment variable of this name changes it.
RENDEZVOUS_TIMEOUT_VARIABLE = "LFICAM_RENDEZVOUS_TIMEOUT"
_RENDEZVOUS_TIMEOUT_S = 300.0


def check_rendezvous(cfg: DictConfig) -> None:
    """On a node other than the first of a multi-node run started by hand (``MASTER_ADDR``/``MASTER_PORT``,
    ``NODE_RANK`` > 0), wait until the first node's endpoint answers, for ``LFICAM_RENDEZVOUS_TIMEOUT``
    seconds, and otherwise stop with one sentence, before any rank is started: gloo/NCCL would wait 30 minutes
    for it and end in a traceback. torchrun's workers are past their rendezvous already (their agent holds it),
    and SLURM's nodes start together, so neither is checked here."""
    import socket
    import time

    trainer = cfg.get("trainer") or {}
    if int(trainer.get("num_nodes", 1) or 1) < 2 or "TORCHELASTIC_RUN_ID" in os.environ:
        return
    address, port, node = (os.environ.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK"))
    if not (address and port.isdigit() and node.isdigit() and int(node) > 0):
        return
    if os.environ.get("LOCAL_RANK", "0") != "0":  # a node's extra ranks start after its first one checked
        return
    text = os.environ.get(RENDEZVOUS_TIMEOUT_VARIABLE, "")
    try:
        timeout = float(text) if text else _RENDEZVOUS_TIMEOUT_S
    except ValueError:
        raise UserError(f"{RENDEZVOUS_TIMEOUT_VARIABLE}={text} is not a number of seconds.") from None
    deadline, why = time.monotonic() + timeout, "no answer"
    while True:
        left = max(0.0, deadline - time.monotonic())
        try:
            with socket.create_connection((address, int(port)), timeout=max(0.1, min(left, 5.0))):
                return
        except OSError as error:
            why = error.strerror or type(error).__name__
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(1.0, left))
    raise UserError(
        f"Node {node} of trainer.num_nodes={trainer.get('num_nodes')} cannot reach the rendezvous endpoint "
        f"MASTER_ADDR:MASTER_PORT = {address}:{port} ({why.lower()} for {timeout:g} s): start the first node "
        "(NODE_RANK=0) with the same MASTER_ADDR and MASTER_PORT, set them to that node's address and a free "
        f"port reachable from here, or wait longer with {RENDEZVOUS_TIMEOUT_VARIABLE}=<seconds>."
    )


_CHILD_RANK_GRACE_S = 300
_LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_FLAGS_WITH_VALUE = {"-cn", "-cp", "-cd", "--config-name", "--config-path", "--config-dir"}


def job_command(argv: list[str], hydra_overrides: list[str], task_overrides: list[str]) -> list[str]:
    """The command line that runs one job of a sweep again, alone: Hydra's flags (``--config-dir …``) without
    ``-m``, the job's own overrides (``seed=2``, not ``seed=1,2``) and run mode."""
    flags, rest = [], iter(argv[1:])
    for arg in rest:
        if arg.startswith("-") and arg not in ("-m", "--multirun"):
            flags.append(arg)
            if arg in _FLAGS_WITH_VALUE:
                flags.append(next(rest, ""))
    hydra = [o for o in hydra_overrides if not o.startswith("hydra.mode=")]
    return [argv[0], *flags, *hydra, *task_overrides, "hydra.mode=RUN"]


def _end_child_ranks(trainers: list[pl.Trainer], *, failed: bool) -> None:
    """Wait for the rank processes a job started to finish (kill them if the job failed) before the job's process
    group is closed: closing it under a rank still in its last collective makes that rank fail, and a rank
    left waiting for a failed rank 0 would hang for the 30-minute DDP timeout.

    Lightning's watchdog thread kills this whole process (the sweep) when a child ends with an error; the job is
    over, so it is disarmed first (it has no public off switch: its list of processes is emptied).
    """
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    procs = [proc for t in trainers for proc in getattr(getattr(t.strategy, "launcher", None), "procs", [])]
    if not procs:
        return
    for thread in threading.enumerate():
        if isinstance(thread, _ChildProcessObserver) and any(p in thread._child_processes for p in procs):
            thread._child_processes = []
    for proc in procs:
        if failed:
            proc.kill()
        try:
            proc.wait(timeout=_CHILD_RANK_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning(
                "DDP rank process %d did not finish %d s after rank 0; stopping it.",
                proc.pid,
                _CHILD_RANK_GRACE_S,
            )
            proc.kill()
            proc.wait()
        if proc.returncode and not failed:
            log.warning("DDP rank process %d ended with exit code %d.", proc.pid, proc.returncode)


@contextmanager
def ranks_join_this_run() -> Iterator[list[pl.Trainer]]:
    """Let the extra ranks that Lightning's DDP launcher starts join this job and write into its run folder.

    Lightning starts rank k > 0 by running ``sys.argv`` again, adding ``hydra.run.dir=<HydraConfig run.dir>``.
    In a single run that is this run's folder; in a multirun it is not (a job lives in ``sweep.dir/subdir``)
    and ``sys.argv`` holds the whole sweep (``-m seed=1,2`` would start a sweep per rank). For the job's
    duration argv holds this job's own overrides in run mode and run.dir this job's folder; afterwards argv,
    run.dir and the launcher's environment variables are put back, the ranks it started have ended and the
    process group is closed, so the next job of a sweep starts ranks of its own. The caller appends its trainer
    to the list this yields. Where SLURM or torchrun start the ranks, nothing changes.
    """
    from hydra.core.hydra_config import HydraConfig
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from omegaconf import read_write

    started_elsewhere = "LOCAL_RANK" in os.environ or SLURMEnvironment.detect()
    trainers: list[pl.Trainer] = []
    if not HydraConfig.initialized() or started_elsewhere:
        yield trainers
        return
    hydra_cfg = HydraConfig.get()
    saved_argv = sys.argv[:]
    saved_run_dir = OmegaConf.to_container(hydra_cfg.run, resolve=False)["dir"]  # keep its interpolation
    saved_env = {key: os.environ.get(key) for key in _LAUNCHER_ENV}
    sys.argv = job_command(sys.argv, hydra_cfg.overrides.hydra, hydra_cfg.overrides.task)
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    failed = True
    try:
        yield trainers
        failed = False
    finally:
        _end_child_ranks(trainers, failed=failed)
        sys.argv = saved_argv
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = saved_run_dir
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
