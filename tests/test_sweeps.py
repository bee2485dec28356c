"""Sweeps: a Hydra grid multirun, the Optuna search with a persistent SQLite study, failed trials, the SLURM
launcher config, and the mistakes a user can make with them."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

import lficam.train
from lficam.errors import UserError
from lficam.train import run_task
from tests.conftest import run_quietly

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.train_size=32",
    "data.val_size=16",
    "data.test_size=16",
    "data.image_size=16",
    "data.eval_batch_size=16",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "callbacks.attention_overlays=null",
    "test=false",
]


def train_py(tmp_path: Path, *arguments: str, multirun: bool = False) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "train.py",
        *(["-m"] if multirun else []),
        *TINY,
        *arguments,  # after TINY: the later of two values wins
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.data_dir={tmp_path / 'data'}",
    ]
    return run_quietly(command)


def compose_train(root: Path, *overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        paths = [f"paths.root_dir={root}", f"paths.log_dir={root}/logs", f"paths.output_dir={root}/run"]
        return compose("train", overrides=[*paths, *overrides], return_hydra_config=hydra)


@pytest.mark.slow
def test_grid_sweep_runs_each_job_in_its_own_folder(tmp_path):
    done = train_py(tmp_path, "attention=lficam,none", "data.batch_size=16", multirun=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    for job, attention in ((sweep / "0", "lficam"), (sweep / "1", "none")):
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert config["attention"]["name"] == attention
        summary = json.loads((job / "summary.json").read_text())
        assert summary["run_dir"] == str(job)
        assert 0.0 <= summary["metrics"]["val/acc_best"] <= 1.0
        assert sorted(p.name for p in (job / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
        assert (job / "csv" / "metrics.csv").is_file()


@pytest.mark.slow
def test_optuna_search_records_trials_in_sqlite_resumes_and_survives_a_failed_trial(tmp_path):
    import optuna

    search = [
        "hparams_search=lficam_optuna",
        "hydra.sweeper.study_name=tiny",
        "hydra.sweeper.sampler.seed=7",
        "data.batch_size=choice(8,16)",  # replaces the config's range: batches that fit 32 training images
    ]
    done = train_py(tmp_path, *search, "hydra.sweeper.n_trials=2")
    assert done.returncode == 0, done.stderr[-3000:]
    storage = f"sqlite:///{tmp_path / 'logs' / 'optuna.db'}"
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    for trial in trials:
        job = sweep / str(trial.number)
        summary = json.loads((job / "summary.json").read_text())
        assert trial.value == pytest.approx(summary["metrics"]["val/acc_best"])  # what main returned
        assert set(trial.params) == {"optimizer.lr", "optimizer.weight_decay", "data.batch_size"}
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        assert f"optimizer.lr={trial.params['optimizer.lr']}" in overrides
        assert trial.params["data.batch_size"] in (8, 16)
    # distinct lr per trial: the sampler really proposed each trial's values
    assert trials[0].params["optimizer.lr"] != trials[1].params["optimizer.lr"]

    # Run the same search again: the study resumes (trial numbers go on). Its one new trial fails (an image
    # size the data refuses): recorded as FAIL, and the sweep still ends normally.
    again = train_py(tmp_path, *search, "hydra.sweeper.n_trials=1", "data.image_size=8")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Shapes image_size must be between 16 and 512 pixels, got 8." in again.stdout + again.stderr
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2 + [
        optuna.trial.TrialState.FAIL
    ]
    assert len(list((tmp_path / "logs" / "train" / "multiruns").iterdir())) == 2  # a new sweep folder


def test_sweep_over_a_key_that_does_not_exist_is_one_clear_error(tmp_path):
    done = train_py(tmp_path, "no_such_key=1,2", multirun=True)
    # Hydra's own message: the key, and how to add a new key instead
    assert done.returncode != 0
    assert done.stderr.splitlines()[:2] == [
        "Could not override 'no_such_key'.",
        "To append to your config use +no_such_key=1",
    ]
    assert "Traceback" not in done.stderr
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    assert [p.name for p in sweep.iterdir()] == ["multirun.yaml"]  # refused before any job ran


def test_optuna_config_composes_with_a_search_space_of_real_keys(tmp_path):
    cfg = compose_train(tmp_path, "hparams_search=lficam_optuna", hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val/acc_best"
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert sweeper.storage == f"sqlite:///{tmp_path}/logs/optuna.db"
    assert sweeper.study_name == "lficam_cifar_resnet20_lficam"
    for key in sweeper.params:  # every searched key exists in the composed config
        assert OmegaConf.select(cfg, key, default="missing") != "missing", key
    # the Hydra callback that creates the database's folder before the study opens it
    callback = instantiate(cfg.hydra.callbacks.study_folder)
    callback.on_multirun_start(config=cfg)
    assert (tmp_path / "logs").is_dir()


def test_slurm_launcher_config_composes_one_task_per_gpu(tmp_path):
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    cfg = compose_train(tmp_path, *overrides, "hydra.launcher.partition=gpu", hydra=True)
    HydraConfig.instance().set_config(cfg)
    try:
        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    finally:
        HydraConfig.instance().cfg = None
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert launcher["partition"] == "gpu"
    assert isinstance(instantiate(launcher), SlurmLauncher)


@pytest.fixture(params=["grid", "optuna"])
def multirun(request, tmp_path):
    """Hydra's state inside one job of a grid multirun or an Optuna search."""
    overrides = ["hparams_search=lficam_optuna"] if request.param == "optuna" else []
    cfg = compose_train(tmp_path, *TINY, *overrides, hydra=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    HydraConfig.instance().set_config(cfg)
    yield request.param, cfg
    HydraConfig.instance().cfg = None


class _FakeWandb:
    def __init__(self) -> None:
        self.run, self.finished = object(), 0

    def finish(self) -> None:
        self.run, self.finished = None, self.finished + 1


@pytest.mark.parametrize("error", [UserError("data.image_size=8 is too small."), RuntimeError("a bug")])
def test_a_failed_job_of_a_sweep_lets_the_sweep_go_on_and_closes_wandb(multirun, monkeypatch, caplog, error):
    def fail(cfg):
        raise error

    wandb = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setattr(lficam.train, "train", fail)
    sweeper, cfg = multirun
    with caplog.at_level(logging.ERROR, logger="lficam"):
        if sweeper == "grid":  # the grid sweeper ignores results: NaN, and the sweep ends normally
            assert math.isnan(run_task(cfg))
        else:  # the Optuna sweeper records a raised error as a FAIL trial and goes on (NaN would crash it)
            with pytest.raises(type(error)):
                run_task(cfg)
    assert wandb.finished == 1
    assert str(error) in caplog.text
    if isinstance(error, RuntimeError):  # a bug keeps its traceback in the job's log
        assert "Traceback" in caplog.text


def test_a_crash_outside_a_sweep_keeps_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(lficam.train, "train", lambda cfg: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        run_task(compose_train(tmp_path, *TINY))


def test_optimized_metric_that_was_not_logged_is_a_clear_error(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(lficam.train, "train", lambda cfg: {"val/acc": 0.5, "val/loss": 1.0})
    cfg = compose_train(tmp_path, *TINY, "optimized_metric=val/accuracy")
    with caplog.at_level("ERROR", logger="lficam"), pytest.raises(SystemExit) as exit_:
        run_task(cfg)
    assert exit_.value.code == 2  # a user's mistake, like every other bad value, not a crash (1)
    assert (
        "optimized_metric 'val/accuracy' was not logged; set optimized_metric to one of ['val/acc', 'val/loss']."
        in caplog.text
    )
    assert run_task(compose_train(tmp_path, *TINY, "optimized_metric=val/acc")) == 0.5
