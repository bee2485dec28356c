"""A training run that SIGKILLs itself at a chosen step, for the resume tests.

``python train.py ... +callbacks.kill._target_=tests.kill_at_step.KillAtStep +callbacks.kill.step=6``: as the
training batch after step 6 starts, the run's process group (the run and its data-loading workers) gets
SIGKILL. The checkpoint of step 6 is on disk and nothing later is, whatever the machine's load: a kill sent from
the test once it saw the checkpoint could land a few steps later, after the next one.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning.pytorch as pl


class KillAtStep(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            # its own process group, as the tests start it (a session of its own); never the test's
            if os.getpgid(0) == os.getpid():
                os.killpg(0, signal.SIGKILL)
            else:
                os.kill(os.getpid(), signal.SIGKILL)


def kill_at(step: int) -> list[str]:
    """The ``train.py`` overrides that make the run kill itself at ``step``."""
    return [f"+callbacks.kill._target_={KillAtStep.__module__}.KillAtStep", f"+callbacks.kill.step={step}"]
