"""``ckpt_path=auto`` and restarts into the run's own folder (lficam/training/auto_resume.py), without training:
which checkpoint a run resumes from, and what it says. The restarts themselves run in
tests/test_cluster_requeue.py (SLURM) against real daemons."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lficam.training.auto_resume import cluster_plugins, resolve_ckpt_path, restart


@pytest.fixture
def last(tmp_path: Path) -> Path:
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    path.write_bytes(b"a checkpoint")
    return path


@pytest.fixture(autouse=True)
def _first_start(monkeypatch) -> None:
    for name in ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)


def _resolved(ckpt_path: str | None, last: Path, train: bool = True) -> str | None:
    cfg = OmegaConf.create({"ckpt_path": ckpt_path, "train": train})
    resolve_ckpt_path(cfg, last)
    return cfg.ckpt_path


def test_auto_resumes_from_the_folders_last_checkpoint_or_starts_fresh(last: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="lficam"):
        assert _resolved("auto", last) == str(last)
        assert _resolved("auto", last.with_name("none.ckpt")) is None
    assert caplog.messages == [
        f"ckpt_path=auto: resuming from this run folder's {last}.",
        f"ckpt_path=auto: {last.with_name('none.ckpt')} does not exist yet, so this run starts fresh.",
    ]
    assert _resolved(None, last) is None  # a first start without ckpt_path=auto is a new run
    assert _resolved("other.ckpt", last) == "other.ckpt"


@pytest.mark.parametrize(
    ("variable", "said"),
    [
        ("SLURM_RESTART_COUNT", "SLURM restarted job 77 (restart 2)"),
        ("TORCHELASTIC_RESTART_COUNT", "torchrun restarted the worker group (restart 2)"),
    ],
)
def test_a_restart_into_the_run_folder_resumes_by_itself(
    monkeypatch, last: Path, variable, said, caplog
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv(variable, "2")
    assert restart() == said
    with caplog.at_level(logging.INFO, logger="lficam"):
        assert _resolved(None, last) == str(last)
    assert caplog.messages == [f"{said}: resuming from this run folder's {last}."]
    assert _resolved("chosen.ckpt", last) == "chosen.ckpt"  # a checkpoint the command names wins
    assert _resolved(None, last, train=False) is None  # evaluation only: nothing to resume


def test_lightnings_slurm_requeue_handler_is_off_in_submitits_jobs(monkeypatch) -> None:
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert cluster_plugins(OmegaConf.create({})) == {}
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "submitit")
    # a job of one's own sbatch script keeps Lightning's handler (tests/test_sigterm.py)
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    assert cluster_plugins(OmegaConf.create({})) == {}
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    (plugin,) = cluster_plugins(OmegaConf.create({}))["plugins"]
    assert plugin.auto_requeue is False
    assert cluster_plugins(OmegaConf.create({"plugins": ["mine"]})) == {}
