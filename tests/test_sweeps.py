"""Sweeps: a Hydra grid multirun, the Optuna search with a persistent SQLite study, failed trials, the SLURM
launcher config, and the mistakes a user can make with them."""

from __future__ import annotations

import json
import logging
import math
import socket
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

import lficam.training.task
from lficam import cli
from lficam.cli import run_task
from lficam.core.errors import UserError
from tests import warm_python
from tests.conftest import run_quietly, subprocess_env

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


# The README's search, shrunk (issue 17: as written, without paths.* on the command line, it failed before any
# trial with "HydraConfig was not set")
README_SEARCH = [
    "-m",
    "hparams_search=lficam_optuna",
    "hydra.sweeper.n_trials=1",
    "data.train_size=64",
    "data.val_size=32",
    "data.test_size=32",
    "data.image_size=16",
    "data.batch_size=16",
    "trainer.max_epochs=1",
]


def train_py_in(folder: Path, *arguments: str) -> subprocess.CompletedProcess:
    """``python train.py ...`` started in ``folder``: paths.root_dir follows the working directory, so the
    default outputs/ and data/ are made there, not in the repository."""
    env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
    return warm_python.run(
        [sys.executable, str(ROOT / "train.py"), *arguments],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_the_readme_optuna_search_runs_as_written_persists_resumes_and_survives_a_failed_trial(tmp_path):
    import optuna

    done = train_py_in(tmp_path, *README_SEARCH)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HydraConfig was not set" not in done.stdout + done.stderr
    # the study persists in the default log folder, under the name the config gives it
    storage = f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}"
    trials = optuna.load_study(study_name="lficam_cifar_resnet20_lficam", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["run_dir"] == str(sweep / "0")
    assert trials[0].value == pytest.approx(summary["metrics"]["val/acc_best"])  # what main returned
    # data.batch_size=16 on the command line fixes the batch size the search space would vary
    assert set(trials[0].params) == {"optimizer.lr", "optimizer.weight_decay"}
    overrides = (sweep / "0" / ".hydra" / "overrides.yaml").read_text()
    assert f"optimizer.lr={trials[0].params['optimizer.lr']}" in overrides

    # Again, into a sweep folder given with hydra.sweep.dir=: the study resumes (trial numbers go on). Its two
    # new trials fail (an image size the data refuses): recorded as FAIL, and the sweep still ends normally.
    again = train_py_in(
        tmp_path,
        *README_SEARCH,
        f"hydra.sweep.dir={tmp_path / 'again'}",
        "hydra.sweeper.n_trials=2",
        "data.image_size=8",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Shapes image_size must be between 16 and 512 pixels, got 8." in again.stdout + again.stderr
    trials = optuna.load_study(study_name="lficam_cifar_resnet20_lficam", storage=storage).trials
    assert [(t.number, t.state) for t in trials] == [
        (0, optuna.trial.TrialState.COMPLETE),
        (1, optuna.trial.TrialState.FAIL),
        (2, optuna.trial.TrialState.FAIL),
    ]
    # distinct lr per trial of a run: the sampler really proposed each trial's values
    assert trials[1].params["optimizer.lr"] != trials[2].params["optimizer.lr"]
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["0", "1", "optimization_results.yaml"]
    assert "data.image_size=8" in (tmp_path / "again" / "0" / ".hydra" / "overrides.yaml").read_text()
    assert len(list((tmp_path / "outputs" / "train" / "multiruns").iterdir())) == 1


def _closed_port() -> socket.socket:
    """A local TCP port bound but not listening: a connection to it is refused at once."""
    bound = socket.socket()
    bound.bind(("127.0.0.1", 0))
    return bound


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "hydra.sweeper.storage=bogus://x",
            "Error: hydra.sweeper.storage=bogus://x is not a database URL SQLAlchemy can open: give one, e.g. "
            "sqlite:///outputs/optuna.db or postgresql://user:password@host/database.",
        ),
        (
            "hydra.sweeper.storage=postgresql://lficam:secret@127.0.0.1:{port}/studies",
            "Error: hydra.sweeper.storage=postgresql://lficam:***@127.0.0.1:{port}/studies: cannot connect to the "
            'study\'s database (connection to server at "127.0.0.1", port {port} failed: Connection refused); '
            "start the database server or give a URL that reaches it (sqlite:///<file>.db needs no server).",
        ),
        (
            "hydra.sweeper.storage=mysql://lficam@127.0.0.1:{port}/studies",
            "Error: hydra.sweeper.storage=mysql://lficam@127.0.0.1:{port}/studies needs a database driver that is "
            "not installed (No module named 'MySQLdb'): install it (pip install mysqlclient) or use "
            "sqlite:///<file>.db, which needs none.",
        ),
        (
            "hydra.sweeper.n_trials=0",
            "Error: hydra.sweeper.n_trials=0 cannot run a search: give the number of trials to run, at least 1 "
            "(hydra.sweeper.n_trials=20).",
        ),
    ],
    ids=["unknown_database", "postgresql_not_listening", "driver_not_installed", "no_trials"],
)
def test_a_study_that_cannot_be_stored_or_run_is_one_sentence_before_any_trial(
    override, expected, tmp_path, capsys
):
    """They were tracebacks: NoSuchModuleError, ImportError (no PostgreSQL driver), "Record does not exist"."""
    port = _closed_port()
    try:
        number = port.getsockname()[1]
        argv = [*README_SEARCH, override.format(port=number), f"paths.log_dir={tmp_path / 'logs'}"]
        assert cli.train(argv) == 2
    finally:
        port.close()
    err = capsys.readouterr().err
    assert err.strip() == expected.format(port=number)
    assert not (tmp_path / "logs" / "train").exists()  # no sweep folder: no trial ran
    assert not (tmp_path / "logs" / "optuna.db").exists()  # nor was the default study opened
    assert not HydraConfig.initialized()  # what the multirun set for itself is gone with it


@pytest.mark.slow
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
    # the Hydra callback that checks the storage and creates the database's folder before the study opens it
    callback = instantiate(cfg.hydra.callbacks.study_storage)
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
    monkeypatch.setattr(lficam.training.task, "train", fail)
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
    monkeypatch.setattr(
        lficam.training.task, "train", lambda cfg: (_ for _ in ()).throw(RuntimeError("a bug"))
    )
    with pytest.raises(RuntimeError, match="a bug"):
        run_task(compose_train(tmp_path, *TINY))


def test_optimized_metric_that_was_not_logged_is_a_clear_error(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(lficam.training.task, "train", lambda cfg: {"val/acc": 0.5, "val/loss": 1.0})
    cfg = compose_train(tmp_path, *TINY, "optimized_metric=val/accuracy")
    with caplog.at_level("ERROR", logger="lficam"), pytest.raises(SystemExit) as exit_:
        run_task(cfg)
    assert exit_.value.code == 2  # a user's mistake, like every other bad value, not a crash (1)
    assert (
        "optimized_metric 'val/accuracy' was not logged; set optimized_metric to one of ['val/acc', 'val/loss']."
        in caplog.text
    )
    assert run_task(compose_train(tmp_path, *TINY, "optimized_metric=val/acc")) == 0.5
