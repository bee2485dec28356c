"""What a sweep needs from a job: a failure that does not end the sweep, and folders made before it starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def failed_sweep_job(error: Exception) -> float:
    """What a failed job of a sweep hands back so that the sweep goes on.

    Hydra's grid sweeper ignores results but stops at the end of a batch when a job raised, so it gets NaN.
    Sweepers that read results get the error itself: the Optuna sweeper records a FAIL trial for an exception
    and goes on (``max_failure_rate``), whereas a NaN result would make it crash (optuna 2.10 refuses NaN).
    """
    from hydra.core.hydra_config import HydraConfig

    if str(HydraConfig.get().sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return float("nan")
    raise error


class CreateFolder(Callback):
    """A Hydra callback that creates a folder before a multirun starts (an SQLite study's folder, say)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
