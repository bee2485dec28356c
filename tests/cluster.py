"""What the cluster tests share: the real one-node SLURM cluster as a fixture, and ``train.py`` runs on it.

The cluster is ``scripts/slurm_cluster.py`` (Debian's slurmctld, slurmd and munge, state in a temporary
folder, free local ports), started once per test module (its ``slurm_cluster`` fixture yields from :func:`running_cluster`) and
stopped after it, jobs and daemons included, even
when a test fails. Where the binaries or root are missing the tests skip and say why (``make slurm``).
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_resume import TINY_RUN as RESUME_RUN

ROOT = Path(__file__).resolve().parents[1]

_spec = importlib.util.spec_from_file_location("slurm_cluster", ROOT / "scripts" / "slurm_cluster.py")
slurm_cluster_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(slurm_cluster_module)
SlurmCluster = slurm_cluster_module.SlurmCluster

# test_resume's run of a few seconds (16 px shapes, no overlays, progress bars or test stage), without its
# epoch count and determinism: each cluster test sets its own
TINY_RUN = [a for a in RESUME_RUN if not a.startswith(("trainer.max_epochs=", "trainer.deterministic="))]
# the launcher on the test cluster: one CPU per task fits its node
ON_CLUSTER = ["hydra/launcher=slurm", "hydra.launcher.partition=cpu", "hydra.launcher.cpus_per_task=1"]


def running_cluster() -> Iterator[SlurmCluster]:
    """The body of each test module's ``slurm_cluster`` fixture: a started cluster, stopped afterwards."""
    missing = slurm_cluster_module.missing_binaries()
    if missing:
        pytest.skip(
            f"no SLURM here ({', '.join(missing)} missing): `make slurm` installs slurm-wlm and munge"
        )
    if os.geteuid() != 0:
        pytest.skip("the test cluster's slurmd starts jobs as their user, which needs root")
    # a short path: munge's socket path must fit a sockaddr_un (108 bytes)
    folder = tempfile.mkdtemp(prefix="lficam-slurm-", dir="/tmp")
    cluster = SlurmCluster(folder)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


def train_command(*arguments: str, multirun: bool = True) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *(["-m"] if multirun else []), *TINY_RUN, *arguments]


def metrics_rows(run: Path) -> list[dict[str, str]]:
    """The rows of a run folder's csv/metrics.csv."""
    with (run / "csv" / "metrics.csv").open() as file:
        return list(csv.DictReader(file))


def assert_metrics_equal_but_the_first_resumed_stability(run: Path, reference: Path) -> None:
    """``run``'s metrics.csv equals the unbroken ``reference``'s row for row, but for the epoch-to-epoch map
    stability of the first resumed epoch: it compares with maps the killed process held in memory, which no
    checkpoint keeps (as with any ``ckpt_path=`` resume), so that epoch has none."""
    resumed, unbroken = metrics_rows(run), metrics_rows(reference)
    probe = {"val/attn/stability_epoch_iou", "val/attn/stability_epoch_spearman"}
    missing = [
        i for i, (row, ref) in enumerate(zip(resumed, unbroken)) if any(row[k] != ref[k] for k in probe)
    ]
    assert len(missing) == 1 and all(resumed[missing[0]][k] == "" for k in probe)
    assert [{k: v for k, v in row.items() if k not in probe} for row in resumed] == [
        {k: v for k, v in row.items() if k not in probe} for row in unbroken
    ]
