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

import csv
import os
import signal
import time
from pathlib import Path

import pytest

from tests.cluster import ON_CLUSTER, finish, running_cluster, start, train_command
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


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


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
    rows, reference_rows = _rows(run / "csv" / "metrics.csv"), _rows(unbroken / "csv" / "metrics.csv")
    # the epoch-to-epoch map stability compares with maps the killed process held in memory, which no
    # checkpoint keeps (as with any ckpt_path= resume): the first resumed epoch has none; all else is equal
    probe = {"val/attn/stability_epoch_iou", "val/attn/stability_epoch_spearman"}
    missing = [
        i for i, (row, ref) in enumerate(zip(rows, reference_rows)) if any(row[k] != ref[k] for k in probe)
    ]
    assert len(missing) == 1 and all(rows[missing[0]][k] == "" for k in probe)
    assert [{k: v for k, v in row.items() if k not in probe} for row in rows] == [
        {k: v for k, v in row.items() if k not in probe} for row in reference_rows
    ]
