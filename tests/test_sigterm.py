"""SIGTERM (a batch system's stop, a time limit) ends training as Ctrl-C does: the resume hint, a non-zero exit.

Lightning's signal connector notes SIGTERM and its loops stop at the next batch with ``SIGTERMException``, a
``SystemExit`` of code 0: a batch system read the stopped run as a success. Now the run exits with 143 (128 +
SIGTERM) and names the ``last.ckpt`` that resumes it, and on SLURM with auto-requeue Lightning still saves its
checkpoint and requeues the job before the SIGTERM that follows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import open_dict

import lficam
from lficam import cli
from lficam.cli import run_task
from tests import warm_python
from tests.conftest import ROOT, compose_train

TINY_RUN = [
    "data.image_size=16",
    "data.train_size=64",
    "data.val_size=32",
    "data.test_size=32",
    "data.batch_size=16",
    "data.eval_batch_size=32",
    "trainer.accelerator=cpu",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "callbacks.attention_overlays=null",
]


def _hint(last: Path, run_dir: Path) -> str:
    return (
        f"Interrupted; resume from the last complete epoch with the same command and ckpt_path={last} "
        f"(run folder {run_dir})."
    )


@pytest.mark.slow
def test_sigterm_after_the_first_checkpoint_exits_143_and_says_how_to_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    process = warm_python.popen(
        [
            sys.executable,
            str(ROOT / "train.py"),
            *TINY_RUN,
            "trainer.max_epochs=200",  # far more than the test waits for: the signal stops it
            f"hydra.run.dir={run_dir}",
            f"paths.data_dir={tmp_path / 'data'}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert last.is_file(), f"no last.ckpt (rc={process.poll()})"
        process.send_signal(signal.SIGTERM)  # what `scancel`, `kill` or a batch system's time limit send
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == _hint(last, run_dir)
    assert "Traceback" not in err
    assert not (run_dir / "summary.json").exists()  # stopped, not finished
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] < 199
    model = lficam.load(last)  # the checkpoint is whole: it loads as a model
    assert model.lficam_metadata["model_config"]["num_classes"] == 10


class SignalsAt(pl.Callback):
    """Sends this process the given signals at the start of an epoch, as a batch system does."""

    def __init__(self, epoch: int, signals: list[int]) -> None:
        self.epoch, self.signals = epoch, signals

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            for number in self.signals:
                os.kill(os.getpid(), number)


SLURM = {
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "train",
    "SLURM_NODELIST": "node1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


def test_on_slurm_the_job_is_still_requeued_and_the_exit_is_143(tmp_path, monkeypatch, capsys) -> None:
    """Lightning's SLURM auto-requeue: the requeue signal (SIGUSR1) saves hpc_ckpt_1.ckpt and calls
    ``scontrol requeue``; the SIGTERM that follows ends the run with the resume hint and 143, not 0."""
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    for key, value in SLURM.items():
        monkeypatch.setenv(key, value)
    requeued: list[list[str]] = []

    def scontrol(command, shell=False):
        requeued.append(command)
        return 0

    monkeypatch.setattr("lightning.pytorch.trainer.connectors.signal_connector.call", scontrol)
    smaller = ["data.train_size=32", "data.val_size=16", "trainer.max_epochs=2", "test=false"]
    cfg = compose_train([*TINY_RUN, *smaller], tmp_path)
    with open_dict(cfg):
        cfg.callbacks.stop = {
            "_target_": f"{__name__}.SignalsAt",
            "epoch": 1,
            "signals": [int(signal.SIGUSR1), int(signal.SIGTERM)],
        }
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        with pytest.raises(SystemExit) as exit_:
            run_task(cfg)
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    assert exit_.value.code == 143
    assert requeued == [["scontrol", "requeue", "4242"]]
    assert (tmp_path / "hpc_ckpt_1.ckpt").is_file()
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert capsys.readouterr().err.strip().splitlines()[-1] == _hint(last, tmp_path)
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0


@pytest.mark.parametrize(
    ("stop", "code"),
    [(SIGTERMException(), 143), (KeyboardInterrupt(), 130)],
)
def test_sigterm_and_ctrl_c_share_one_path_with_their_own_exit_codes(stop, code, capsys) -> None:
    def body():
        raise stop

    with pytest.raises(SystemExit) as exit_:
        cli.guarded(body, on_interrupt=lambda: "resume with ckpt_path=x/last.ckpt")
    assert exit_.value.code == code
    assert capsys.readouterr().err == "resume with ckpt_path=x/last.ckpt\n"
    assert not cli.terminated(SystemExit(0))  # a plain exit is not a SIGTERM


def test_sigterm_with_step_checkpoints_names_the_step_checkpoint_not_an_epoch(tmp_path, capsys) -> None:
    """With ``callbacks.last_checkpoint.every_n_train_steps`` the hint names the step checkpoint, from which a
    resume continues the epoch, not "the last complete epoch"; before the first such step, that none exists."""
    from lficam.training.task import resume_hint

    steps = [
        "data.train_size=32",  # 2 steps an epoch
        "data.val_size=16",
        "trainer.max_epochs=3",
        "test=false",
        "callbacks.last_checkpoint.every_n_train_steps=3",
        "callbacks.last_checkpoint.every_n_epochs=null",
    ]
    cfg = compose_train([*TINY_RUN, *steps], tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert resume_hint(cfg) == (
        f"Interrupted before the first checkpoint (every 3 training steps), so none was written ({last} does "
        f"not exist): there is nothing to resume; start the run again (run folder {tmp_path})."
    )
    with open_dict(cfg):
        cfg.callbacks.stop = {
            "_target_": f"{__name__}.SignalsAt",
            "epoch": 2,
            "signals": [int(signal.SIGTERM)],
        }
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exit_:
            run_task(cfg)
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert exit_.value.code == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "Interrupted; resume from the last checkpoint (written every 3 training steps; the run continues at the "
        f"batch after it) with the same command and ckpt_path={last} (run folder {tmp_path})."
    )
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3  # inside epoch 1
    with open_dict(cfg):  # the epoch checkpoints' text is unchanged
        cfg.callbacks.last_checkpoint.every_n_train_steps = 0
        cfg.callbacks.last_checkpoint.every_n_epochs = 1
    assert resume_hint(cfg) == _hint(last, tmp_path)
