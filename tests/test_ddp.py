"""Distributed data parallel: configs, the GPU check, and a real 2-process DDP sweep on CPU (gloo).

The DDP run is a subprocess: Lightning starts rank 1 by running the command line again, which inside pytest
would be pytest itself.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.plugins import TorchSyncBatchNorm
from lightning.pytorch.strategies import DDPStrategy

from lficam.cli import run_task
from lficam.core.errors import UserError
from lficam.models import create_model
from lficam.training.distributed import _end_child_ranks, check_devices, job_command, requested_gpus
from tests.conftest import module_from_checkpoint, quiet_trainer, run_quietly

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.train_size=64",
    "data.val_size=32",  # 16 per rank, one batch each: DistributedSampler pads nothing
    "data.test_size=32",
    "data.image_size=16",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "trainer.max_epochs=1",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "callbacks.attention_overlays=null",
]


def compose_train(root: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "train", overrides=[f"paths.root_dir={root}", f"paths.output_dir={root}/run", *TINY, *overrides]
        )


def test_ddp_configs_compose_into_ddp_trainers(tmp_path):
    gpu = compose_train(tmp_path, "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2").trainer
    assert (gpu.accelerator, gpu.strategy, gpu.devices, gpu.num_nodes) == ("gpu", "ddp", 8, 2)
    assert gpu.sync_batchnorm is False

    cfg = compose_train(tmp_path, "trainer=ddp_cpu", "trainer.sync_batchnorm=true")
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.world_size == 2
    assert trainer.num_devices == 2
    assert cfg.trainer.accelerator == "cpu"
    # sync_batchnorm=true: at fit time every BatchNorm of the model becomes a SyncBatchNorm
    layer_sync = trainer.strategy._layer_sync
    assert isinstance(layer_sync, TorchSyncBatchNorm)
    net = layer_sync.apply(create_model("cifar_resnet20", num_classes=4))
    kinds = {type(m) for m in net.modules()}
    assert torch.nn.SyncBatchNorm in kinds
    assert torch.nn.BatchNorm2d not in kinds


@pytest.mark.parametrize(
    ("devices", "count"), [(4, 4), (-1, 1), ("auto", 1), ("2", 2), ("0,1,3", 3), ([0, 2], 2)]
)
def test_requested_gpus(devices, count):
    assert requested_gpus(devices) == count


def test_ddp_config_without_gpus_is_one_sentence(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    cfg = compose_train(tmp_path, "trainer=ddp", "trainer.devices=4")
    with pytest.raises(UserError) as error:
        check_devices(cfg)
    message = str(error.value)
    assert "trainer.devices=4 asks for 4 GPU(s) but this machine has 0" in message
    assert "trainer=ddp_cpu" in message
    assert "\n" not in message
    assert message.count(". ") == 0  # one sentence
    assert message.endswith(".")

    with pytest.raises(SystemExit) as exit_:  # the entry point prints that sentence, no traceback
        run_task(cfg)
    assert exit_.value.code == 2
    assert message in caplog.text
    assert not (tmp_path / "run").exists()  # refused before anything was built or written
    check_devices(compose_train(tmp_path, "trainer=ddp_cpu"))  # CPU processes need no GPU


def test_job_command_reruns_one_job_of_a_sweep_alone():
    argv = ["train.py", "-m", "--config-dir", "/extra", "seed=1,2", "hydra.job.chdir=true", "trainer=ddp_cpu"]
    hydra = ["hydra.mode=MULTIRUN", "hydra.job.chdir=true"]
    task = ["seed=2", "trainer=ddp_cpu"]
    assert job_command(argv, hydra, task) == [
        "train.py",
        "--config-dir",
        "/extra",
        "hydra.job.chdir=true",
        "seed=2",
        "trainer=ddp_cpu",
        "hydra.mode=RUN",
    ]


def _sleeper(seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])


@pytest.mark.parametrize("failed", [False, True])
@pytest.mark.slow
def test_a_job_ends_the_ranks_it_started_without_lightning_killing_the_sweep(failed):
    from types import SimpleNamespace

    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    child = _sleeper(0.2 if not failed else 60)
    # Lightning's watchdog, pointed at a stand-in for the sweep process: it kills that when a child fails
    sweep = _sleeper(60)
    watchdog = _ChildProcessObserver(main_pid=sweep.pid, child_processes=[child], sleep_period=0.05)
    watchdog.start()
    trainer = SimpleNamespace(strategy=SimpleNamespace(launcher=SimpleNamespace(procs=[child])))
    try:
        _end_child_ranks([trainer], failed=failed)
        assert child.returncode == (-9 if failed else 0)  # a failed job's ranks are stopped, not left waiting
        watchdog.join(timeout=5)
        assert not watchdog.is_alive()
        with pytest.raises(subprocess.TimeoutExpired):
            sweep.wait(timeout=1)  # the sweep process lives on
    finally:
        for proc in (child, sweep):
            proc.kill()
            proc.wait()


def _val_row(metrics_csv: Path) -> dict[str, float]:
    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get("val/acc")]
    assert len(rows) == 1  # one validation epoch, logged once (by rank 0)
    return {k: float(v) for k, v in rows[0].items() if v and k.startswith("val/")}


def _single_process_validation(job: Path, data_cfg) -> dict[str, float]:
    module = module_from_checkpoint(job / "checkpoints" / "last.ckpt")
    (metrics,) = quiet_trainer(devices=1).validate(module, datamodule=instantiate(data_cfg), verbose=False)
    return metrics


@pytest.mark.slow
def test_ddp_sweep_on_cpu_writes_one_folder_per_job_and_syncs_metrics(tmp_path):
    logs = tmp_path / "logs"
    data_cfg = compose_train(tmp_path, f"paths.data_dir={tmp_path / 'data'}").data
    # Render the cached splits once beforehand: both ranks would render them at the same time otherwise, and
    # ShapesDataModule's temporary file name (torch.randint under the same seed) is then the same on both.
    instantiate(data_cfg).setup()
    command = [
        sys.executable,
        "train.py",
        "-m",
        "trainer=ddp_cpu",
        "seed=1,2",
        *TINY,
        f"paths.log_dir={logs}",
        f"paths.data_dir={tmp_path / 'data'}",
    ]
    done = run_quietly(command)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert output.count("Starting with 2 processes") == 2  # both jobs really ran two ranks

    # one sweep folder with one folder per job; nothing written anywhere else (no folder per rank)
    (sweep,) = (logs / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in (logs / "train").iterdir()) == ["multiruns"]
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    for number, job in enumerate(sorted(p for p in sweep.iterdir() if p.is_dir())):
        assert f"- seed={number + 1}" in (job / ".hydra" / "overrides.yaml").read_text()
        assert sorted(p.name for p in (job / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
        assert list(job.rglob("metrics.csv")) == [job / "csv" / "metrics.csv"]
        assert list(job.rglob("*.log")) == [job / "train.log"]
        assert list(job.rglob("config.yaml")) == [job / ".hydra" / "config.yaml"]
        assert (job / "summary.json").is_file()

        # the DDP validation pass (16 images per rank, reduced over both) equals one process over all 32
        ddp = _val_row(job / "csv" / "metrics.csv")
        single = _single_process_validation(job, data_cfg)
        for key in ("val/acc", "val/acc_top5", "val/loss", "val/attn/pointing_game"):
            assert ddp[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
