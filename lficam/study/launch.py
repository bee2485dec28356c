"""Training the study's runs, each once: a run folder whose ``summary.json`` exists for the same overrides is reused.

Each run lives in ``<runs_dir>/<data set>/<model>/<setting>_seed<k>/``, the layout of any ``train.py`` run
(``summary.json``, ``checkpoints/``, ``csv/``, ``.hydra/config.yaml``) plus ``study_run.json``: the overrides,
the launcher, the wall time and the status. Launchers:
- ``subprocess`` (default): ``python train.py <overrides> hydra.run.dir=<run folder>``, output to ``train.out``;
  one process per run, so memory and global state never carry over and a crash ends one run only;
- ``inprocess``: the same overrides composed with Hydra's compose API and trained by :func:`lficam.training.task.train`
  in this process (no interpreter start-up: the test suite's launcher).
A run stopped half-way (``checkpoints/last.ckpt`` but no ``summary.json``) resumes from its last checkpoint. A run
that fails is recorded as failed, reported, and retried by the next invocation.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lficam.core.errors import UserError
from lficam.study.plan import CONF, ROOT, Run
from lficam.training.task import train

log = logging.getLogger("lficam")

RECORD = "study_run.json"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _plain(value: Any) -> Any:
    """NaN and infinities → None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def write_json(path: Path, value: Any) -> None:
    """Strict JSON (undefined numbers as null), indented, written whole."""
    path.write_text(json.dumps(_plain(value), indent=2, allow_nan=False, default=str) + "\n")


def trained(run: Run, run_dir: Path) -> bool:
    """True when the run folder holds a finished run with the same overrides; a folder of other overrides is the
    user's to move (never deleted here)."""
    record = read_json(run_dir / RECORD)
    if record is not None and list(record.get("overrides", [])) != list(run.overrides):
        raise UserError(
            f"{run_dir} holds run {run.name} trained with other overrides than the study config gives now; "
            "move or delete that folder, or set study.runs_dir=<a new folder>, to train it again."
        )
    return record is not None and record.get("status") == "done" and (run_dir / "summary.json").is_file()


def compose_train_config(overrides: list[str], run_dir: Path) -> DictConfig:
    """``conf/train.yaml`` with the overrides, writing into ``run_dir`` (Hydra's compose API, as train.py would)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    paths = [f"paths.root_dir={ROOT}", f"paths.output_dir={run_dir}"]
    if (
        GlobalHydra.instance().is_initialized()
    ):  # inside a Hydra app whose search path is conf/: compose there
        return compose("train", overrides=[*overrides, *paths])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*overrides, *paths])


def _train_in_process(overrides: list[str], run_dir: Path, out: Path) -> None:
    cfg = compose_train_config(overrides, run_dir)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    train(cfg)


def train_command(overrides: list[str], run_dir: Path) -> list[str]:
    """The exact command line of one run (what the report prints)."""
    return [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"]


def _train_in_subprocess(overrides: list[str], run_dir: Path, out: Path) -> None:
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "HYDRA_FULL_ERROR": "1"}
    with out.open("w") as handle:
        result = subprocess.run(
            train_command(overrides, run_dir), cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    if result.returncode:
        tail = "\n".join(out.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"train.py ended with exit code {result.returncode}:\n{tail}")


LAUNCHERS: dict[str, Callable[[list[str], Path, Path], None]] = {
    "subprocess": _train_in_subprocess,
    "inprocess": _train_in_process,
}


def train_run(run: Run, run_dir: Path, launcher: str) -> dict[str, Any]:
    """Train one run into ``run_dir`` (resuming a stopped one); returns its record (status done or failed)."""
    if launcher not in LAUNCHERS:
        raise UserError(f"Unknown study.launcher {launcher!r}: choose subprocess or inprocess.")
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = list(run.overrides)
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file() and read_json(run_dir / RECORD) is not None:  # stopped half-way with these overrides
        overrides.append(f"ckpt_path={last}")
    record: dict[str, Any] = {
        "run": run.name,
        "overrides": list(run.overrides),
        "launcher": launcher,
        "command": " ".join(["python", *train_command(overrides, run_dir)[1:]]),
        "status": "started",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(run_dir / RECORD, record)
    start = time.perf_counter()
    try:
        LAUNCHERS[launcher](overrides, run_dir, run_dir / "train.out")
        record["status"] = "done" if (run_dir / "summary.json").is_file() else "failed"
        if record["status"] == "failed":
            record["error"] = "train.py wrote no summary.json"
    except Exception as error:  # one failed run is reported and retried next time; the study goes on
        log.exception("Run %s failed", run.name)
        record["status"], record["error"] = "failed", f"{type(error).__name__}: {error}"[-2000:]
    record["wall_s"] = time.perf_counter() - start
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(run_dir / RECORD, record)
    return record


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``42s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """``[run 7/60] shapes/abn/s3_seed2: trained in 1m23s · elapsed 9m12s · ETA 41m`` on stdout.

    The ETA is the mean time of the runs trained so far in this invocation times the runs still to train.
    """

    def __init__(self, total: int, to_do: int, what: str = "run") -> None:
        self.total, self.to_do, self.what = total, to_do, what
        self.done = 0
        self.worked = 0
        self.start = time.perf_counter()
        self.busy = 0.0

    def step(self, name: str, message: str, seconds: float | None = None) -> None:
        self.done += 1
        if seconds is not None:
            self.worked += 1
            self.busy += seconds
        elapsed = time.perf_counter() - self.start
        left = self.to_do - self.worked
        eta = f" · ETA {duration(self.busy / self.worked * left)}" if self.worked and left > 0 else ""
        print(
            f"[{self.what} {self.done}/{self.total}] {name}: {message} · elapsed {duration(elapsed)}{eta}",
            flush=True,
        )
