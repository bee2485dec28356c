"""Loggers whose history survives a crash and a resume.

Lightning's CSV logger opens ``metrics.csv`` afresh (a resumed run erased every earlier row) and keeps up to
100 rows in memory (a killed run lost them). Here rows reach the file as they are logged, and a run resumed
from a checkpoint continues the interrupted run's logs:

- CSV (:class:`CSVLogger`): the interrupted run's rows *before* the checkpoint's step are kept, in the same
  folder or copied into the new one; later rows were written by the killed run after the checkpoint and are
  logged again by the resumed run, so they are dropped. The header grows as new metrics appear.
- TensorBoard (:class:`TensorBoardLogger`, flushed as it logs): events from the checkpoint's step on are
  purged (``SummaryWriter(purge_step=…)``); resumed into another folder, the interrupted run's event files are
  copied there first.
- Weights & Biases: the same run id (``id=…, resume="allow"``), read from the interrupted run's ``wandb/``
  folder, so the resumed run is the same W&B run.

The step that splits old from new is Lightning's logging step (``_batches_that_stepped``, the ``step``
column): an epoch's validation and epoch-end rows are logged at the step of its last batch, S − 1, and its
checkpoint holds S, the first step of the next epoch.
"""

from __future__ import annotations

import csv
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import get_class, instantiate
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

log = logging.getLogger("lficam")

_WANDB_RUN_DIR = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(?P<id>[A-Za-z0-9]+)$")


@dataclass(frozen=True)
class LogResume:
    """Where an interrupted run's logs are, and the first logging step a run resumed from its checkpoint logs.

    previous_run: the interrupted run's folder (the checkpoint's ``<run>/checkpoints/..`` parent).
    run_dir: this run's folder (the same folder for a resume in place).
    step: rows and events at this step or later came after the checkpoint.
    """

    previous_run: Path
    run_dir: Path
    step: int

    def previous(self, path: str | Path) -> Path | None:
        """The interrupted run's counterpart of a path in this run's folder (None outside the folder)."""
        try:
            return self.previous_run / Path(path).resolve().relative_to(self.run_dir.resolve())
        except ValueError:
            return None


def resume_step(checkpoint: dict[str, Any]) -> int:
    """The logging step a run resumed from ``checkpoint`` starts at."""
    loop = (checkpoint.get("loops") or {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    return int(loop.get("_batches_that_stepped", checkpoint.get("global_step", 0)))


def run_folder_of_checkpoint(path: str | Path) -> Path:
    """``<run>/checkpoints/last.ckpt`` → ``<run>``: checkpoints live in their run's ``checkpoints/`` folder."""
    return Path(path).resolve().parent.parent


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, starting from the rows of an earlier file before a step instead of deleting it."""

    def __init__(self, log_dir: str, source: Path | None, before_step: int | None) -> None:
        self._source, self._before_step = source, before_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:  # called by the base __init__: the one place that deletes
        if self._before_step is None:
            super()._check_log_dir_exists()
            return
        rows = []
        if self._source is not None and self._source.is_file():
            with self._source.open(newline="") as file:
                rows = [row for row in csv.DictReader(file) if _step(row) < self._before_step]
        target = Path(self.metrics_file_path)
        if not rows:
            target.unlink(missing_ok=True)
            return
        # the columns that hold a value in a kept row: one that only dropped rows had comes back when logged
        self.metrics_keys = sorted(
            {key for row in rows for key, value in row.items() if value not in ("", None)}
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


def _step(row: dict[str, str]) -> float:
    """A row's logging step; a row without one (a hand-edited file) sorts before every step and is kept."""
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return float("-inf")


class CSVLogger(LightningCSVLogger):
    """``metrics.csv`` and ``hparams.yaml`` as Lightning writes them, written row by row
    (``flush_logs_every_n_steps=1``), and continued rather than erased by a resumed run
    (:meth:`continue_run`)."""

    def __init__(self, save_dir: str, name: str = "csv", version: str = "", **kwargs: Any) -> None:
        kwargs.setdefault("flush_logs_every_n_steps", 1)
        super().__init__(save_dir, name=name, version=version, **kwargs)
        self._resume: LogResume | None = None

    def continue_run(self, resume: LogResume) -> None:
        """Start ``metrics.csv`` with the interrupted run's rows before ``resume.step``; call before logging."""
        if self._experiment is not None:
            raise RuntimeError("continue_run must be called before the first row is logged.")
        self._resume = resume

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            resume = self._resume
            source = (
                resume.previous(Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE) if resume else None
            )
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, source, resume.step if resume else None)
        return self._experiment


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger, with every call's events flushed to the event file at once: a
    ``SummaryWriter`` keeps them up to two minutes in memory, which a killed run loses."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        self.experiment.flush()


def wandb_run_id(wandb_dir: Path) -> str | None:
    """The id of the latest W&B run (online or offline) under a ``wandb/`` folder, or None."""
    if not wandb_dir.is_dir():
        return None
    # names hold the start time (after an "offline-" prefix): the last one is the run's latest attempt
    runs = sorted(
        (p.name.removeprefix("offline-") for p in wandb_dir.iterdir() if _WANDB_RUN_DIR.match(p.name)),
    )
    return _WANDB_RUN_DIR.match(runs[-1])["id"] if runs else None


def _resume_arguments(target: type, config: DictConfig, resume: LogResume) -> dict[str, Any]:
    """Constructor arguments that make a stock Lightning logger continue the interrupted run."""
    if issubclass(target, LightningTensorBoardLogger):
        return {"purge_step": resume.step}  # handed on to SummaryWriter
    if issubclass(target, WandbLogger) and config.get("id") is None and config.get("version") is None:
        previous = resume.previous(config.get("save_dir") or config.get("dir") or ".")
        run_id = wandb_run_id(previous / "wandb") if previous is not None else None
        if run_id is None:
            log.warning("No W&B run found under %s; the resumed run starts a new W&B run.", previous)
            return {}
        return {"id": run_id, "resume": "allow"}
    return {}


def _copy_tensorboard_events(logger: LightningTensorBoardLogger, resume: LogResume) -> None:
    """Resumed into another folder: start from the interrupted run's event files (purged from the step on)."""
    source = resume.previous(logger.log_dir)
    target = Path(logger.log_dir)
    if source is None or source.resolve() == target.resolve() or not source.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    for events in sorted(source.glob("events.out.tfevents.*")):
        shutil.copy2(events, target / events.name)


def instantiate_loggers(group: DictConfig | None, resume: LogResume | None = None) -> list[Logger]:
    """The loggers of the ``logger`` config group; with ``resume``, each continues the interrupted run's logs
    (a logger of another kind starts afresh)."""
    loggers: list[Logger] = []
    for config in (group or {}).values():
        if config is None or "_target_" not in config:
            continue
        extra = _resume_arguments(get_class(config._target_), config, resume) if resume else {}
        logger = instantiate(config, **extra)
        if resume is not None:
            if isinstance(logger, CSVLogger):
                logger.continue_run(resume)
            elif isinstance(logger, LightningTensorBoardLogger) and rank_zero_only.rank == 0:
                _copy_tensorboard_events(logger, resume)
            elif isinstance(logger, LightningCSVLogger):
                log.warning(
                    "%s starts a new metrics.csv on resume; lficam.training.loggers.CSVLogger continues it.",
                    config._target_,
                )
        loggers.append(logger)
    return loggers
