"""Shared fixtures: composed configs shrunk for speed, tiny data modules, and the repository root."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from tests import warm_python

# the longest test modules first (make test's workers end together): tests/longest_first.py
pytest_plugins = ["tests.longest_first"]

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
# Under pytest-xdist (make test) the cores are shared between the workers: more threads than cores would make
# every worker slower, not faster.
# The processes the tests start (train.py, eval.py, the notebook's kernel) inherit the same share through
# OMP_NUM_THREADS, which torch reads when it starts.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))

# Overrides that make any training config run in seconds on a CPU.
TINY = [
    "data.image_size=32",
    "data.train_size=256",
    "data.val_size=64",
    "data.test_size=64",
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
]


def compose_train(overrides: list[str], tmp_path: Path) -> DictConfig:
    """The real training config with the given overrides, writing into ``tmp_path``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.data_dir = str(tmp_path / "data")
    return cfg


@pytest.fixture(autouse=True)
def _no_shared_wandb_service(monkeypatch) -> None:
    """Forget a W&B service an earlier test's ``wandb.init`` started in this process.

    wandb records its service's address in ``WANDB_SERVICE``, and a child process inherits it: a training run
    started by a test would then share this process's service, which outlives the child. A child killed with
    SIGKILL leaves its run open in that service ("run ID ... is in use" on resume) and its offline file
    unfinished. Each run of this project owns its service, as it does outside the tests.
    """
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> DictConfig:
    return compose_train(TINY, tmp_path)


#: The small LFI-CAM model the checkpoint fixtures train.
SMALL_MODEL = {"backbone": "cifar_resnet20", "num_classes": 3, "attention": "lficam"}


def quiet_trainer(**options):
    """A Lightning Trainer on the CPU that writes and prints nothing of its own: no logger, checkpoints,
    progress bar, model summary or sanity check. ``options`` override or add Trainer arguments."""
    import lightning.pytorch as pl

    defaults = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return pl.Trainer(**{**defaults, **options})


def one_step_checkpoint(folder: Path, model_config: dict = SMALL_MODEL) -> Path:
    """A checkpoint saved by a Lightning Trainer after one SGD step on 16 px noise, as train.py writes them."""
    import functools

    import lficam
    from lficam.training.module import LitClassifier

    torch.manual_seed(0)
    module = LitClassifier(
        lficam.create_model(**model_config),
        functools.partial(torch.optim.SGD, lr=0.1),
        num_classes=model_config["num_classes"],
        model_config=model_config,
    )
    classes = model_config["num_classes"]
    batches = [{"image": torch.randn(3, 16, 16), "label": torch.tensor(i % classes)} for i in range(4)]
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=4))
    path = folder / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def module_from_checkpoint(path: Path):
    """The LitClassifier of a checkpoint train.py wrote, its weights loaded (safe loader: weights only)."""
    import functools

    from lficam.models import create_model
    from lficam.training.module import LitClassifier

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    module = LitClassifier(
        create_model(**hparams["model_config"]),
        functools.partial(torch.optim.SGD, lr=0.1),
        num_classes=hparams["num_classes"],
    )
    module.load_state_dict(checkpoint["state_dict"])
    return module


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["WANDB_MODE"] = "offline"
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_quietly(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command in its own process group; on a timeout, stop the whole group (DDP ranks included)
    instead of waiting on a pipe that a left-over rank still holds."""
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = warm_python.popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(command[1:4])} … ran over {timeout} s:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """A process in its own session (a SIGKILL to the group takes its children), output in one pipe.

    ``python train.py …`` (a sweep that submits SLURM jobs, an Optuna worker, a reference run) is forked from the
    warm interpreter (tests/warm_python.py); torchrun agents and the jobs SLURM starts get fresh interpreters."""
    env = {**env, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    launch = warm_python.popen if len(command) > 1 and command[1].endswith("train.py") else subprocess.Popen
    return launch(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    """The process's output once it has ended; a process over ``timeout`` is killed and the test fails."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{' '.join(process.args[:4])} ... ran over {timeout} s:\n{output[-4000:]}")
    return output
