"""``hydra/launcher=slurm`` against a real one-node SLURM cluster (tests/cluster.py): a DDP sweep on a CPU
partition, the GPU request of a GPU trainer, and one sentence for each way a sweep cannot run there."""

from __future__ import annotations

import os
import pickle
import shutil
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lficam.cli.slurm_resources import gpus_per_node
from tests import warm_python
from tests.cluster import ON_CLUSTER, ROOT, running_cluster, train_command
from tests.conftest import finish, start


@pytest.fixture(scope="module")
def slurm_cluster():
    yield from running_cluster()


def _launcher(*overrides: str) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    return {key: cfg.hydra.launcher[key] for key in ("gpus_per_node", "tasks_per_node", "nodes")}


def test_launcher_asks_gpus_only_of_a_gpu_trainer() -> None:
    assert _launcher("trainer=ddp_cpu") == {"gpus_per_node": None, "tasks_per_node": 2, "nodes": 1}
    assert _launcher("trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2") == {
        "gpus_per_node": 4,
        "tasks_per_node": 4,
        "nodes": 2,
    }
    assert _launcher("trainer=cpu")["gpus_per_node"] is None
    assert (gpus_per_node("cuda", 2), gpus_per_node("auto", 1), gpus_per_node("cpu", 4)) == (2, None, None)
    # a list of ids or "0,1" is that many GPUs, -1 and "auto" at least one (as the GPU check reads them)
    assert [gpus_per_node("gpu", d) for d in ([0, 1], "0,1", -1, "auto")] == [2, 2, 1, 1]


@pytest.mark.slow
def test_a_local_run_on_a_machine_with_srun_says_nothing_of_srun(tmp_path: Path) -> None:
    # an `srun` of its own on PATH, so that the test means the same with or without slurm-wlm installed
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_folder / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_folder}{os.pathsep}{os.environ['PATH']}", "WANDB_MODE": "offline"}
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "HYDRA_FULL_ERROR"))}
    env["PYTHONWARNINGS"] = "default"  # every warning shown, as a user's shell would
    assert shutil.which("srun", path=env["PATH"]) == str(bin_folder / "srun")
    command = [
        *train_command(
            "trainer=cpu", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}", multirun=False
        )
    ]
    done = warm_python.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert "srun" not in output, [line for line in output.splitlines() if "srun" in line]


@pytest.mark.slow
def test_ddp_sweep_on_the_cpu_partition_is_one_run_of_two_ranks(slurm_cluster, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    command = train_command(
        *ON_CLUSTER, "trainer=ddp_cpu", "trainer.max_epochs=2", f"hydra.sweep.dir={sweep}"
    )
    output = finish(start(command, slurm_cluster.env()), timeout=400)
    assert "Traceback" not in output, output[-4000:]
    runs = sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".") and p.is_dir())
    assert runs == ["0"], output[-3000:]
    script = next(sweep.glob(".submitit/*/*_submission.sh")).read_text()
    assert "--ntasks-per-node=2" in script
    assert "gpus" not in script and "gres" not in script, script
    # each rank sees 32 of the 64 images: 2 steps of 16 per epoch, so the second epoch ends at step 3
    rows = (sweep / "0" / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    val_rows = [
        dict(zip(header, r.split(","))) for r in rows[1:] if dict(zip(header, r.split(",")))["val/acc"]
    ]
    assert [(row["epoch"], row["step"]) for row in val_rows] == [("0", "1"), ("1", "3")]
    # both SLURM tasks ran the job, and both hand the sweep the same synced metric
    results = sorted(sweep.glob(".submitit/*/*_result.pkl"))
    assert len(results) == 2
    values = [pickle.loads(path.read_bytes())[1].return_value for path in results]
    assert values[0] == values[1] and 0 <= values[0] <= 1
    # no job accounting on the test cluster: neither sacct's own error nor submitit's warning about it
    assert "accounting storage is disabled" not in output
    assert output.count("sacct") <= 1


@pytest.mark.slow
def test_each_way_a_sweep_cannot_run_is_one_sentence(slurm_cluster, tmp_path: Path) -> None:
    def sweep(*overrides: str, env: dict | None = None) -> str:
        command = train_command("trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides)
        process = start(command, env or slurm_cluster.env())
        output = finish(process, timeout=120)
        assert process.returncode == 2, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        return output

    # the launcher's default 8 CPUs per task × 2 tasks on a 2-CPU node: SLURM keeps it pending for ever
    never = sweep("hydra/launcher=slurm", "hydra.launcher.partition=cpu", "trainer=ddp_cpu")
    assert (
        "can never start on partition cpu (reason PartitionConfig): each of its 1 node(s) must hold 2 task(s) × 8 CPU(s)"
        in never
    )
    assert "cpus_per_task" in never
    # cancelled, not left pending (squeue may list a cancelled job for a moment after scancel returns)
    deadline = time.monotonic() + 15
    while slurm_cluster.jobs() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert slurm_cluster.jobs() == []

    unknown = sweep(*ON_CLUSTER[:1], "hydra.launcher.partition=gpu-large")
    assert (
        "hydra.launcher.partition=gpu-large is not a partition of this SLURM cluster; it has cpu" in unknown
    )

    # a GPU asked of a partition without any: sbatch itself refuses the job
    refused = sweep(*ON_CLUSTER, "hydra.launcher.gpus_per_node=1")
    assert (
        "Error: sbatch refused the sweep's jobs: sbatch: error: Invalid generic resource (gres) specification"
        in refused
    ), refused[-3000:]

    no_slurm = sweep(*ON_CLUSTER, env={**slurm_cluster.env(), "PATH": str(tmp_path / "empty")})
    assert "submits jobs with sbatch, which is not on PATH here" in no_slurm

    failed = sweep(*ON_CLUSTER, "hydra.launcher.setup=['echo the module system is broken >&2','exit 3']")
    assert "ended FAILED without a result; its log is" in failed
    assert "the module system is broken" in failed
    log_path = failed.split("its log is ")[1].split()[0]
    assert Path(log_path).is_file()
