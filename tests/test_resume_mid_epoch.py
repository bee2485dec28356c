"""Exact resume from a checkpoint taken inside an epoch (``every_n_train_steps``), for the map-style modules.

The end-of-epoch protocol (tests/test_resume.py) makes the order and every augmentation a function of (seed,
epoch, index); a mid-epoch resume also needs to start the epoch at the batch where the checkpoint was taken.
Before this was built, such a run (512 images, batch 16, 3 epochs) killed at step 35 ended with 128 of 153
tensors differing from the unbroken run's: a plain DataLoader restarts the epoch from its first batch.

1. Real ``python train.py`` processes: A unbroken without workers; B with 2 workers, SIGKILLed (with its
   workers) after its first checkpoint inside epoch 1; C resumes B from ``last.ckpt`` with 0 and 2 workers. Every C ends with A's
   weights, momentum buffers and validation metrics, bit for bit.
2. In process: the trap of Lightning issue 20550 (a ``configure_optimizers`` that reads
   ``trainer.estimated_stepping_batches`` makes Lightning drop a stateful loader's saved state). The position
   here is Lightning's own restored batch counter, read when the epoch's first batch is drawn, so that call
   changes nothing; and a control with the position switched off shows that the comparison can fail.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

import lficam
from lficam.data import ShapesDataModule
from lficam.data.base import ClassificationDataModule
from lficam.training.last_checkpoint import LastCheckpoint
from lficam.training.module import LitClassifier
from tests.conftest import start
from tests.kill_at_step import kill_at
from tests.test_resume import _finish

ROOT = Path(__file__).resolve().parents[1]
TRAIN, BATCH, EPOCHS, EVERY = 64, 16, 3, 3
STEPS_PER_EPOCH = TRAIN // BATCH  # 4: the checkpoints at steps 3, 6 and 9 are inside an epoch
KILL_AT = 6  # the broken run's SIGKILL: after its first checkpoint inside epoch 1 (tests/kill_at_step.py)
RUN = [
    "data.image_size=16",
    f"data.train_size={TRAIN}",
    "data.val_size=32",
    f"data.batch_size={BATCH}",
    "data.eval_batch_size=32",
    "data.cache_dir=null",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.deterministic=true",
    "test=false",
    f"callbacks.last_checkpoint.every_n_train_steps={EVERY}",
    "callbacks.last_checkpoint.every_n_epochs=null",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "callbacks.attention_overlays=null",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
]


def _start(*arguments: str, multirun: bool = False) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "train.py"), *(["-m"] if multirun else []), *RUN, *arguments]
    return start(command, dict(os.environ))


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _readable_step(path: Path) -> int | None:
    """The global step of a complete checkpoint file, or None while it is absent or half-written."""
    try:
        return int(_load(path)["global_step"]) if path.is_file() else None
    except Exception:  # being written: try again
        return None


def _killed_inside_second_epoch(process: subprocess.Popen, last: Path) -> int:
    """The step of the checkpoint that a run started with ``kill_at(KILL_AT)`` left when it killed itself."""
    output, _ = process.communicate(timeout=400)
    assert process.returncode == -signal.SIGKILL, output[-3000:]
    step = _readable_step(last)
    assert step == KILL_AT, output[-3000:]
    return step


def differing(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """Names of the weights, buffers and momentum buffers that are not bit-identical in two checkpoints."""
    names = [k for k, v in first["state_dict"].items() if not torch.equal(v, second["state_dict"][k])]
    other = second["optimizer_states"][0]["state"]
    return names + [
        f"momentum {i}"
        for i, state in first["optimizer_states"][0]["state"].items()
        if not torch.equal(state["momentum_buffer"], other[i]["momentum_buffer"])
    ]


@pytest.mark.slow
def test_run_killed_inside_an_epoch_resumes_to_the_unbroken_weights(tmp_path: Path) -> None:
    unbroken, broken, resumed = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    run_a = _start(f"hydra.run.dir={unbroken}", "data.num_workers=0")
    run_b = _start(f"hydra.run.dir={broken}", "data.num_workers=2", *kill_at(KILL_AT))
    killed_at = _killed_inside_second_epoch(run_b, broken / "checkpoints" / "last.ckpt")
    assert killed_at % STEPS_PER_EPOCH and killed_at < EPOCHS * STEPS_PER_EPOCH  # inside an epoch
    assert _load(broken / "checkpoints" / "last.ckpt")["epoch"] == killed_at // STEPS_PER_EPOCH
    _finish(run_a)

    output = _finish(
        _start(
            f"ckpt_path={broken / 'checkpoints' / 'last.ckpt'}",
            "data.num_workers=0,2",
            f"hydra.sweep.dir={resumed}",
            "hydra.sweep.subdir=w${data.num_workers}",
            multirun=True,
        )
    )
    assert "not resumable" not in output  # Lightning's warning for a loader that restarts its epoch

    final_a = _load(unbroken / "checkpoints" / "last.ckpt")
    assert final_a["global_step"] == EPOCHS * STEPS_PER_EPOCH
    report = {}
    for workers in (0, 2):
        final_c = _load(resumed / f"w{workers}" / "checkpoints" / "last.ckpt")
        assert final_c["global_step"] == final_a["global_step"]
        report[workers] = differing(final_a, final_c)
    tensors = len(final_a["state_dict"]) + len(final_a["optimizer_states"][0]["state"])
    assert report == {0: [], 2: []}, {w: f"{len(d)} of {tensors} differ: {d[:5]}" for w, d in report.items()}


# --- in process: Lightning's estimated_stepping_batches trap, and a control that must fail ---


class _StopAt(Callback):
    """Ends the run with an error right after ``step`` (a kill, as far as the checkpoints can tell)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise _Killed


class _Killed(Exception):
    pass


class EstimatingClassifier(LitClassifier):
    """Reads ``trainer.estimated_stepping_batches`` in ``configure_optimizers`` (as OneCycleLR needs), the call
    after which Lightning 2.6 drops a stateful loader's restored state (Lightning issue 20550)."""

    estimated: ClassVar[list[int]] = []

    def configure_optimizers(self) -> dict[str, Any]:
        self.estimated.append(int(self.trainer.estimated_stepping_batches))
        return super().configure_optimizers()


def shapes() -> ShapesDataModule:
    return ShapesDataModule(
        image_size=16, train_size=TRAIN, val_size=16, test_size=16, batch_size=BATCH, shuffle_seed=3
    )


def fit(
    folder: Path,
    module_class: type[LitClassifier],
    *,
    stop_at: int | None = None,
    ckpt: Path | None = None,
    data: Callable[[], pl.LightningDataModule] = shapes,
    every: int = EVERY,
    callbacks: Sequence[Callback] = (),
    checkpoint_class: type[ModelCheckpoint] = LastCheckpoint,
    **trainer_options: Any,
) -> dict[str, Any] | None:
    """Train a tiny LFI-CAM for 2 epochs of 4 steps (last.ckpt every ``every`` steps, written as train.py
    writes it) in this process; returns the final checkpoint, or None when ``stop_at`` ends the run with an
    error after that step."""
    pl.seed_everything(0)
    data = data()
    net = lficam.create_model("cifar_resnet20", num_classes=10, attention="lficam")
    module = module_class(
        net=net,
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        num_classes=10,
        stability_probe_size=0,
        input_stability=[],
    )
    checkpoints = checkpoint_class(
        dirpath=folder, filename="last", every_n_train_steps=every, save_top_k=1, enable_version_counter=False
    )
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        deterministic=True,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[checkpoints, *callbacks] + ([_StopAt(stop_at)] if stop_at else []),
        **trainer_options,
    )
    if stop_at:
        with pytest.raises(_Killed):
            trainer.fit(module, datamodule=data)
        return None
    trainer.fit(module, datamodule=data, ckpt_path=ckpt, weights_only=True)
    trainer.save_checkpoint(folder / "final.ckpt")
    return _load(folder / "final.ckpt")


@pytest.mark.slow
def test_resume_inside_an_epoch_survives_estimated_stepping_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unbroken = fit(tmp_path / "A", LitClassifier)
    fit(tmp_path / "B", EstimatingClassifier, stop_at=7)  # last.ckpt at step 6: epoch 1, batch 2 of 4
    assert _load(tmp_path / "B" / "last.ckpt")["global_step"] == 6
    resumed = fit(tmp_path / "C", EstimatingClassifier, ckpt=tmp_path / "B" / "last.ckpt")
    assert EstimatingClassifier.estimated[-1] == 2 * STEPS_PER_EPOCH  # the trap was really set
    assert resumed["global_step"] == unbroken["global_step"] == 2 * STEPS_PER_EPOCH
    assert differing(unbroken, resumed) == []

    # the control: without the position the resumed epoch starts again at its first batch
    monkeypatch.setattr(ClassificationDataModule, "trained_in_epoch", lambda self: 0)
    replayed = fit(tmp_path / "D", LitClassifier, ckpt=tmp_path / "B" / "last.ckpt")
    assert replayed["global_step"] == unbroken["global_step"]  # Lightning stops at the epoch's batch count
    assert len(differing(unbroken, replayed)) > 100  # of 153 (weights and buffers) + 66 (momenta)


class _Validations(Callback):
    """The val/acc of each validation of a run, in order; saved in its checkpoints and restored on resume, so
    a resumed run's list is the history its checkpoint had plus what it validated itself."""

    def __init__(self) -> None:
        self.accuracies: list[float] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.accuracies.append(float(trainer.callback_metrics["val/acc"]))

    def state_dict(self) -> dict[str, Any]:
        return {"accuracies": list(self.accuracies)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.accuracies = list(state_dict["accuracies"])


@pytest.mark.slow
def test_a_step_checkpoint_on_an_epochs_last_batch_waits_for_its_validation(tmp_path: Path) -> None:
    """Every 4 steps, 4 steps an epoch: each step save falls on an epoch's last batch, after which the epoch's
    validation runs. Lightning resumes such a checkpoint as if that validation had run, so it must be in it."""
    every, seen = STEPS_PER_EPOCH, {name: _Validations() for name in ("A", "B", "C", "B0", "C0")}
    unbroken = fit(tmp_path / "A", LitClassifier, every=every, callbacks=[seen["A"]])
    assert len(seen["A"].accuracies) == 2

    fit(tmp_path / "B", LitClassifier, stop_at=5, every=every, callbacks=[seen["B"]])
    saved = _load(tmp_path / "B" / "last.ckpt")
    assert saved["global_step"] == STEPS_PER_EPOCH
    # saved after epoch 0's validation: its best accuracy is in the checkpoint
    assert saved["state_dict"]["val_acc_best.max_value"].item() == pytest.approx(seen["A"].accuracies[0])
    resumed = fit(
        tmp_path / "C", LitClassifier, ckpt=tmp_path / "B" / "last.ckpt", every=every, callbacks=[seen["C"]]
    )
    assert seen["C"].accuracies == seen["A"].accuracies  # epoch 0's from the checkpoint, then epoch 1's
    assert differing(unbroken, resumed) == []  # weights, momenta and the best accuracy

    # the control, Lightning's own ModelCheckpoint: saved before the validation, which the resumed run skips, so
    # epoch 0 is never validated in the resumed run's history
    fit(
        tmp_path / "B0",
        LitClassifier,
        stop_at=5,
        every=every,
        callbacks=[seen["B0"]],
        checkpoint_class=ModelCheckpoint,
    )
    saved = _load(tmp_path / "B0" / "last.ckpt")
    assert saved["global_step"] == STEPS_PER_EPOCH
    assert saved["state_dict"]["val_acc_best.max_value"].item() == float("-inf")
    fit(
        tmp_path / "C0",
        LitClassifier,
        ckpt=tmp_path / "B0" / "last.ckpt",
        every=every,
        callbacks=[seen["C0"]],
    )
    assert seen["C0"].accuracies == seen["A"].accuracies[1:]  # epoch 0's validation is lost


@pytest.mark.slow
def test_a_step_checkpoint_at_a_validation_inside_the_epoch_waits_for_it(tmp_path: Path) -> None:
    """Validation every 2 batches (val_check_interval=2) and a step save every 2: the save at step 6, inside
    epoch 1, is written once that validation has ended, and the resumed run goes on from there."""
    seen = {name: _Validations() for name in ("A", "B", "C")}
    options = {"every": 2, "val_check_interval": 2}
    unbroken = fit(tmp_path / "A", LitClassifier, callbacks=[seen["A"]], **options)
    assert len(seen["A"].accuracies) == 4  # two a epoch

    fit(tmp_path / "B", LitClassifier, stop_at=7, callbacks=[seen["B"]], **options)
    saved = _load(tmp_path / "B" / "last.ckpt")
    assert saved["global_step"] == 6
    # after the third validation: the best of the first three is in it
    assert saved["state_dict"]["val_acc_best.max_value"].item() == pytest.approx(
        max(seen["A"].accuracies[:3])
    )
    resumed = fit(
        tmp_path / "C", LitClassifier, ckpt=tmp_path / "B" / "last.ckpt", callbacks=[seen["C"]], **options
    )
    assert seen["C"].accuracies == seen["A"].accuracies  # three from the checkpoint, then the fourth
    assert differing(unbroken, resumed) == []

    # the control, Lightning's own ModelCheckpoint: saved before the third validation, which the resumed run skips
    control = {"callbacks": [_Validations()], "checkpoint_class": ModelCheckpoint, **options}
    fit(tmp_path / "B0", LitClassifier, stop_at=7, **control)
    lost = _Validations()
    fit(
        tmp_path / "C0",
        LitClassifier,
        ckpt=tmp_path / "B0" / "last.ckpt",
        callbacks=[lost],
        checkpoint_class=ModelCheckpoint,
        **options,
    )
    assert lost.accuracies == seen["A"].accuracies[:2] + seen["A"].accuracies[3:]


@pytest.mark.slow
def test_a_run_resumed_from_a_finished_training_tests_and_reports_its_best(tmp_path: Path) -> None:
    """The unbroken run's step checkpoint on the final batch (step 12, every 3) waits for the final validation;
    resumed, nothing is left to train, and the run still ends with its summary (a job requeued while it tested
    ended with "optimized_metric 'val/acc_best' was not logged")."""
    first, again = tmp_path / "A", tmp_path / "C"
    _finish(_start(f"hydra.run.dir={first}", "test=true"))
    last = first / "checkpoints" / "last.ckpt"
    best = json.loads((first / "summary.json").read_text())["metrics"]["val/acc_best"]
    saved = _load(last)
    assert saved["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert saved["state_dict"]["val_acc_best.max_value"].item() == pytest.approx(best)

    _finish(_start(f"hydra.run.dir={again}", "test=true", f"ckpt_path={last}"))
    summary = json.loads((again / "summary.json").read_text())["metrics"]
    assert summary["val/acc_best"] == pytest.approx(best)
    assert 0 <= summary["test/acc"] <= 1
    assert (
        f"Nothing was left to train: {last} had trained {EPOCHS} of trainer.max_epochs={EPOCHS} epochs (raise "
        f"trainer.max_epochs to train on); its best val/acc is {best:.4f}."
        in (again / "train.log").read_text()
    )
