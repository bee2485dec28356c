"""A SLURM job preempted after its first epoch is requeued and resumes by itself, ending as an unbroken run.

On the real test cluster (tests/cluster.py): job B of ``hydra/launcher=slurm`` gets SIGUSR2 (what SLURM sends
``signal_delay_s`` before a time limit, and what submitit's own preemption test sends) as soon as its first
epoch's checkpoint is on disk. submitit's handler requeues the job; SLURM starts it again in the same run
folder with ``SLURM_RESTART_COUNT=1``, and the run resumes from its ``last.ckpt`` without being asked
(lficam/training/auto_resume.py). Its final weights and momenta must equal those of run A, the same run
unbroken on this machine, bit for bit (the protocol of tests/test_resume.py), and its metrics.csv must hold
A's rows: none lost, none doubled.

Which handler owns preemption: submitit's (the job's process is submitit's; it requeues the same Hydra job);
Lightning's SLURM requeue handler is switched off, and the job's log says neither "SLURM auto-requeueing
enabled" nor that an ``hpc_ckpt`` was saved.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.cluster import (
    ON_CLUSTER,
    assert_metrics_equal_but_the_first_resumed_stability,
    running_cluster,
    train_command,
)
from tests.conftest import finish, start
from tests.test_resume import _load, _readable_epoch, differing_tensors

EPOCHS = 3
# long enough epochs (32 steps) that the signal lands before the run ends
SETTINGS = [
    "trainer.deterministic=true",
    f"trainer.max_epochs={EPOCHS}",
    "data.train_size=512",
    "data.image_size=32",
]


@pytest.fixture(scope="module")
def slurm_cluster():
    yield from running_cluster()


@pytest.mark.slow
def test_preempted_job_is_requeued_and_ends_as_an_unbroken_run(slurm_cluster, tmp_path: Path) -> None:
    unbroken = tmp_path / "A"
    sweep = tmp_path / "B"
    run = sweep / "0"
    job = start(train_command(*ON_CLUSTER, *SETTINGS, f"hydra.sweep.dir={sweep}"), slurm_cluster.env())
    reference = start(train_command(*SETTINGS, f"hydra.run.dir={unbroken}", multirun=False), dict(os.environ))
    try:
        deadline = time.monotonic() + 300
        while _readable_epoch(run / "checkpoints" / "last.ckpt") is None:
            assert job.poll() is None, finish(job)[-3000:]
            assert time.monotonic() < deadline, "the job wrote no checkpoint in 300 s"
            time.sleep(0.05)
        (job_id,) = slurm_cluster.jobs()
        slurm_cluster.run("scancel", "--signal=USR2", job_id)
        output = finish(job, timeout=400)
    finally:
        for process in (job, reference):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert job.returncode == 0, output[-4000:]
    finish(reference)
    assert reference.returncode == 0

    log = (run / "train.log").read_text()
    assert f"SLURM restarted job {job_id} (restart 1): resuming from this run folder's" in log, log[-3000:]
    submitit_log = "\n".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "this job is preempted" in submitit_log  # submitit's handler took the signal and requeued
    assert "SLURM auto-requeueing enabled" not in submitit_log
    assert not list(run.rglob("hpc_ckpt_*.ckpt"))

    resumed, reference_state = (
        _load(run / "checkpoints" / "last.ckpt"),
        _load(unbroken / "checkpoints" / "last.ckpt"),
    )
    assert resumed["epoch"] == reference_state["epoch"] == EPOCHS - 1
    assert differing_tensors(reference_state, resumed) == ([], [])
    assert_metrics_equal_but_the_first_resumed_stability(run, unbroken)
