"""One run per folder: a run started into a folder that another run is using is refused with one sentence.

Two runs in one folder overwrite each other's checkpoints, config and logs. A run holds an exclusive
``fcntl.flock`` on ``<run folder>/.lock`` from the moment Hydra chooses the folder (:class:`RunFolderLock`, a
Hydra callback, before Hydra writes ``.hydra/``) to its end; a sweep job or a run started without Hydra takes it
in the training task (:func:`hold`). The kernel drops a flock when the process that holds it ends, however it
ends (exit, exception, SIGKILL), so a lock is never stale: the folder of a killed run can be resumed at once.
The file keeps the holder's pid, host and start time for the message; it stays behind, unlocked, after the run.

DDP: only the process of global rank 0 locks. The other ranks of its job (started by Lightning's launcher,
torchrun or SLURM, which set the rank variables below) write into the same folder and are not refused.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lficam.core.errors import UserError
from lficam.training.sweeps import hydra_config_of

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

LOCK_FILE = ".lock"
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
# folder → (file descriptor, how many holders in this process): hold() nests inside the Hydra callback's lock
_held: dict[Path, list[int]] = {}


class RunFolderInUseError(UserError):
    """Another process holds the run folder's lock."""


def _is_rank_zero() -> bool:
    """Whether this process is the global rank 0 of its job (or not part of a multi-process job)."""
    return all(os.environ.get(key, "0").strip() in ("", "0") for key in _RANK_VARIABLES)


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it: 'process 123 on host, started 2025-01-01 12:00:00'."""
    try:
        text = os.pread(fd, 512, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process"


def acquire(run_dir: str | Path) -> None:
    """Lock ``run_dir`` for this process (again, if it already holds it); refuse with one sentence when
    another process holds it. A folder that cannot be created or written is left to the writes that follow."""
    if fcntl is None or not _is_rank_zero():
        return
    folder = Path(os.path.realpath(run_dir))
    if folder in _held:
        _held[folder][1] += 1
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunFolderInUseError(
            f"The run folder {str(folder)!r} is in use by another run ({holder}); start this run in a folder "
            "of its own (leave out hydra.run.dir or choose another one), or wait until that run has ended."
        ) from None
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
    _held[folder] = [fd, 1]


def release(run_dir: str | Path) -> None:
    """Give up this process's hold on ``run_dir``; the lock goes when the last holder releases it."""
    folder = Path(os.path.realpath(run_dir))
    if folder not in _held:
        return
    _held[folder][1] -= 1
    if _held[folder][1] == 0:
        fd, _ = _held.pop(folder)
        os.close(fd)  # closing the descriptor drops the flock


@contextmanager
def hold(run_dir: str | Path) -> Iterator[None]:
    """``run_dir`` locked for the duration of the block (see :func:`acquire`)."""
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)


class RunFolderLock(Callback):
    """A Hydra callback that locks a single run's folder before Hydra writes into it (``.hydra/``, the log).

    A refused run prints its one sentence and exits with code 2 without touching the folder.
    """

    def __init__(self) -> None:
        self._run_dir: str | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra sets HydraConfig only in run_job, after this; the default folder needs it (paths.log_dir →
        # ${hydra:runtime.cwd}), and ${now:...} keeps the value resolved here, so Hydra makes this very folder
        with hydra_config_of(config):
            run_dir = str(config.hydra.run.dir)
        try:
            acquire(run_dir)
        except RunFolderInUseError as error:
            print(error, file=sys.stderr)
            raise SystemExit(2) from None
        self._run_dir = run_dir

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._run_dir is not None:
            release(self._run_dir)
            self._run_dir = None
