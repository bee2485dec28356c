"""A resumed run continues the interrupted run's logs (lficam/training/loggers.py): CSV rows before the checkpoint's
step kept and later ones (written by the killed run after its checkpoint) dropped, TensorBoard events purged
from that step, the same W&B run id. End to end: a run killed part-way and resumed in its own folder leaves the
metrics.csv and the TensorBoard scalars of an unbroken run."""

from __future__ import annotations

import csv
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from lficam.training.loggers import CSVLogger, LogResume, instantiate_loggers, resume_step, wandb_run_id
from tests import warm_python
from tests.conftest import ROOT, run_quietly
from tests.test_loggers import wandb_records


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _config(**loggers: dict) -> OmegaConf:
    return OmegaConf.create(loggers)


def _csv(run: Path) -> dict:
    return {
        "_target_": "lficam.training.loggers.CSVLogger",
        "save_dir": str(run),
        "name": "csv",
        "version": "",
    }


def test_rows_reach_the_file_as_they_are_logged(tmp_path: Path) -> None:
    logger = CSVLogger(str(tmp_path))
    logger.log_metrics({"train/loss": 2.5}, step=0)
    assert _rows(tmp_path / "csv" / "metrics.csv") == [{"step": "0", "train/loss": "2.5"}]
    logger.log_metrics({"val/acc": 0.25}, step=1)  # a new column: the header grows, earlier rows stay
    assert _rows(tmp_path / "csv" / "metrics.csv") == [
        {"step": "0", "train/loss": "2.5", "val/acc": ""},
        {"step": "1", "train/loss": "", "val/acc": "0.25"},
    ]


def _interrupted_run(run: Path) -> None:
    """What a killed run leaves: epoch 0 (steps 0-3, its epoch-end rows at 3, checkpoint at step 4) and two
    rows of epoch 1 logged after that checkpoint; one column (val/extra) that only a dropped row has."""
    logger = CSVLogger(str(run))
    for step in range(4):
        logger.log_metrics({"epoch": 0, "train/loss_step": 2.0 - step / 10}, step=step)
    logger.log_metrics({"epoch": 0, "val/acc": 0.125}, step=3)
    logger.log_metrics({"epoch": 0, "train/loss_epoch": 1.85}, step=3)
    logger.log_metrics({"epoch": 1, "train/loss_step": 9.0}, step=4)
    logger.log_metrics({"epoch": 1, "val/extra": 9.0}, step=5)


@pytest.mark.parametrize("same_folder", [True, False])
def test_a_resumed_run_keeps_the_rows_before_the_checkpoint_and_drops_the_later_ones(
    tmp_path: Path, same_folder: bool
) -> None:
    previous = tmp_path / "killed"
    _interrupted_run(previous)
    run = previous if same_folder else tmp_path / "resumed"
    (logger,) = instantiate_loggers(_config(csv=_csv(run)), LogResume(previous, run, step=4))
    logger.log_metrics({"epoch": 1, "train/loss_step": 1.5}, step=4)
    logger.log_metrics({"epoch": 1, "val/acc": 0.5, "val/new": 1.0}, step=7)
    rows = _rows(run / "csv" / "metrics.csv")
    assert list(rows[0]) == ["epoch", "step", "train/loss_epoch", "train/loss_step", "val/acc", "val/new"]
    assert [(r["step"], r["train/loss_step"], r["val/acc"], r["train/loss_epoch"]) for r in rows] == [
        ("0", "2.0", "", ""),
        ("1", "1.9", "", ""),
        ("2", "1.8", "", ""),
        ("3", "1.7", "", ""),
        ("3", "", "0.125", ""),
        ("3", "", "", "1.85"),
        ("4", "1.5", "", ""),
        ("7", "", "0.5", ""),
    ]
    if not same_folder:  # the interrupted run's own file is left as it was
        assert [r["step"] for r in _rows(previous / "csv" / "metrics.csv")] == list("01233345")


def test_a_fresh_run_starts_a_new_file(tmp_path: Path) -> None:
    _interrupted_run(tmp_path)
    (logger,) = instantiate_loggers(_config(csv=_csv(tmp_path)))
    logger.log_metrics({"val/acc": 0.5}, step=0)
    assert _rows(tmp_path / "csv" / "metrics.csv") == [{"step": "0", "val/acc": "0.5"}]


def test_tensorboard_continues_from_the_checkpoints_step(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    previous, run = tmp_path / "killed", tmp_path / "resumed"
    tensorboard = {
        "_target_": "lficam.training.loggers.TensorBoardLogger",
        "name": "tensorboard",
        "version": "",
    }
    (killed,) = instantiate_loggers(_config(tb={**tensorboard, "save_dir": str(previous)}))
    for step in range(6):  # the checkpoint was written at step 4; steps 4 and 5 are logged again
        killed.log_metrics({"val/acc": float(step)}, step=step)
    # no finalize: a killed run; its events must already be on disk
    (resumed,) = instantiate_loggers(
        _config(tb={**tensorboard, "save_dir": str(run)}), LogResume(previous, run, step=4)
    )
    for step in (4, 5):
        resumed.log_metrics({"val/acc": 10.0 + step}, step=step)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("val/acc")] == [
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 14.0),
        (5, 15.0),
    ]


def test_wandb_resumes_the_interrupted_runs_id(tmp_path: Path, monkeypatch) -> None:
    import wandb

    previous, run = tmp_path / "killed", tmp_path / "resumed"
    for name in ("offline-run-20250101_120000-first1", "run-20250102_080000-latest2", "latest-run"):
        (previous / "wandb" / name).mkdir(parents=True)
    assert wandb_run_id(previous / "wandb") == "latest2"
    calls = []
    monkeypatch.setattr(
        wandb, "init", lambda **kwargs: calls.append(kwargs) or SimpleNamespace(id=kwargs["id"])
    )
    monkeypatch.setattr(wandb, "run", None)
    config = {"_target_": "lightning.pytorch.loggers.WandbLogger", "project": "p", "save_dir": str(run)}
    (logger,) = instantiate_loggers(_config(wandb=config), LogResume(previous, run, step=4))
    assert logger.experiment.id == "latest2"
    assert (calls[0]["id"], calls[0]["resume"], calls[0]["dir"]) == ("latest2", "allow", str(run))


# End to end: three real `python train.py` processes on CPU, deterministic.
EPOCHS = 2
STEPS_PER_EPOCH = 256 // 16
RUN = [
    "data.image_size=16",
    "data.train_size=256",
    "data.val_size=32",
    "data.batch_size=16",
    "data.eval_batch_size=32",
    "data.cache_dir=null",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
    "test=false",
    # epoch-to-epoch map stability needs the previous epoch's maps, which checkpoints do not hold
    "module.stability_probe_size=0",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "callbacks.attention_overlays=null",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
]


def _start(run_dir: Path, *extra: str):
    import subprocess

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "train.py"), *RUN, f"hydra.run.dir={run_dir}", *extra]
    return warm_python.popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _logged_steps(path: Path) -> list[int]:
    try:
        return [int(r["step"]) for r in _rows(path) if r.get("step", "").isdigit()]
    except (OSError, csv.Error, KeyError):  # absent, or being rewritten with a new header
        return []


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_killed_run_resumed_in_its_folder_has_the_logs_of_an_unbroken_run(tmp_path: Path) -> None:
    unbroken, broken = tmp_path / "A", tmp_path / "B"
    run_a = _start(unbroken, "logger=[csv,tensorboard]")
    run_b = _start(broken, "logger=many")
    # kill B (SIGKILL: no clean-up) in epoch 1, once it has logged rows after its epoch-0 checkpoint
    while (
        run_b.poll() is None
        and max(_logged_steps(broken / "csv" / "metrics.csv"), default=-1) <= STEPS_PER_EPOCH
    ):
        time.sleep(0.02)
    os.kill(run_b.pid, signal.SIGKILL)
    output, _ = run_b.communicate()
    assert run_b.returncode == -signal.SIGKILL, output[-3000:]
    checkpoint = torch.load(broken / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0 and resume_step(checkpoint) == STEPS_PER_EPOCH
    killed_rows = _rows(broken / "csv" / "metrics.csv")
    assert max(int(r["step"]) for r in killed_rows) > STEPS_PER_EPOCH  # rows that must not come back twice

    # the folder of a SIGKILLed run is not locked: its own run resumes in it
    resumed = run_quietly(
        [
            sys.executable,
            str(ROOT / "train.py"),
            *RUN,
            f"hydra.run.dir={broken}",
            "logger=many",
            f"ckpt_path={broken / 'checkpoints' / 'last.ckpt'}",
        ]
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    output, _ = run_a.communicate()
    assert run_a.returncode == 0, output[-3000:]

    rows_a, rows_b = _rows(unbroken / "csv" / "metrics.csv"), _rows(broken / "csv" / "metrics.csv")
    assert len(rows_a) == EPOCHS * (STEPS_PER_EPOCH + 3)  # per epoch: lr, one row per step, val, train epoch
    assert {"val/acc", "val/acc_best", "train/loss_epoch", "train/loss_step", "lr-SGD"} <= set(rows_a[0])
    assert rows_b == rows_a

    scalars_a, scalars_b = _scalars(unbroken), _scalars(broken)
    assert len(scalars_a["val/acc"]) == EPOCHS
    assert scalars_b == scalars_a

    # W&B: the resumed process continued the killed one's run (same id), offline. Both folders carry the id in
    # their names; the killed process's own file may hold only its header, as W&B buffers records until a
    # clean exit and SIGKILL gives it none.
    folders = sorted((broken / "wandb").glob("offline-run-*"))
    assert len(folders) == 2
    run_id = wandb_run_id(broken / "wandb")
    assert [f.name.rsplit("-", 1)[1] for f in folders] == [run_id, run_id]
    resumed_file = folders[1] / f"run-{run_id}.wandb"
    records = [r for r in wandb_records(resumed_file) if r.WhichOneof("record_type") == "run"]
    assert records and records[0].run.run_id == run_id
