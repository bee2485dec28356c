"""The checkpoint that resumes a run: ``<run>/checkpoints/last.ckpt``, every epoch or every N training steps.

Lightning resumes a checkpoint saved after a batch at which validation is due as if that validation had run:
its loop fast-forwards past it. A step checkpoint (``every_n_train_steps``, ``train_time_interval``) that falls
on an epoch's last batch is saved before the epoch's validation, so a run resumed from it skipped that
validation: its row in metrics.csv, its vote for the best checkpoint, and after the final epoch every
validation metric (the run then ended with "optimized_metric 'val/acc_best' was not logged").
:class:`LastCheckpoint` holds such a save until the validation has run: to the epoch's end, where the
per-epoch checkpoints are saved, when it is the epoch's validation; to the validation's end when it is one
inside the epoch (``trainer.val_check_interval`` < 1).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose step and time saves wait for a validation due at their batch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._holding: str | None = None  # while the batch-end hook runs: where a save it makes would go
        self._held_until: str | None = None  # a save held: "epoch_end" or "validation_end"

    @property
    def state_key(self) -> str:
        # the key Lightning's own ModelCheckpoint has: checkpoints written before and after stay interchangeable
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Lightning decides whether a save is due at this batch (steps, time); one it makes here is held
        if _validation_follows(trainer):
            last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
            self._holding = "epoch_end" if last_batch else "validation_end"
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            self._holding = None

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if self._holding:
            self._held_until = self._holding
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if self._holding:
            self._held_until = self._holding
            return
        super()._save_last_checkpoint(trainer, monitor_candidates)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._held_until == "validation_end" and not trainer.sanity_checking:
            self._save_held(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._held_until == "epoch_end":
            self._save_held(trainer)

    def _save_held(self, trainer: pl.Trainer) -> None:
        self._held_until = None
        # skipped where Lightning would skip (sanity check, fast_dev_run), or where this step is saved already
        # (every_n_epochs saves at the epoch's end too)
        if not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)


def _validation_follows(trainer: pl.Trainer) -> bool:
    """Whether Lightning runs a validation right after the current training batch (its own test)."""
    fit_loop = trainer.fit_loop
    return bool(fit_loop.epoch_loop._should_check_val_fx(fit_loop._data_fetcher))
