"""One run per folder (lficam/training/run_folder.py): a run started into a folder in use is refused with one sentence
and exit code 2, the folder untouched; the lock of a killed run is gone at once; DDP ranks of the run join it."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lficam.training import run_folder
from lficam.training.run_folder import RunFolderInUseError
from tests import warm_python
from tests.conftest import CONF, ROOT, run_quietly, subprocess_env

# Another run's hold on a folder as lficam.training.run_folder takes it (an exclusive flock on <folder>/.lock, which
# describes its holder), in a process that starts in milliseconds.
_HOLD = """
import fcntl, os, sys, time
fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.pwrite(fd, f"process {os.getpid()} on a host, started 2025-01-01 12:00:00".encode(), 0)
print("locked", flush=True)
time.sleep(600)
"""
_ADVICE = (
    "; start this run in a folder of its own (leave out hydra.run.dir or choose another one), or wait until "
    "that run has ended."
)


def _holder(folder: Path) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def _rank_zero(monkeypatch) -> None:
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)


def test_a_held_folder_is_refused_and_a_killed_holders_lock_is_gone(tmp_path: Path, monkeypatch) -> None:
    _rank_zero(monkeypatch)
    folder = tmp_path / "run"
    holder = _holder(folder)
    try:
        with pytest.raises(RunFolderInUseError) as error:
            run_folder.acquire(folder)
        assert str(error.value) == (
            f"The run folder {str(folder)!r} is in use by another run (process {holder.pid} on a host, started "
            f"2025-01-01 12:00:00){_ADVICE}"
        )
        # a DDP rank > 0 of the holder's job writes into the same folder: not refused by its own job's lock
        monkeypatch.setenv("LOCAL_RANK", "1")
        with run_folder.hold(folder):
            pass
        monkeypatch.delenv("LOCAL_RANK")
    finally:
        holder.send_signal(signal.SIGKILL)  # no chance to clean up: the lock file stays behind
        holder.wait()
    assert (folder / run_folder.LOCK_FILE).read_text().startswith(f"process {holder.pid} on ")
    with run_folder.hold(folder):  # the kernel dropped the dead process's lock
        with run_folder.hold(folder):  # nested holds of one process (Hydra callback, then the task)
            pass
        assert (folder / run_folder.LOCK_FILE).read_text().startswith(f"process {os.getpid()} on ")
        assert folder.resolve() in run_folder._held
    assert folder.resolve() not in run_folder._held


@pytest.mark.slow
def test_train_py_into_a_folder_in_use_exits_2_and_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    files = {
        ".hydra/config.yaml": b"seed: 1\n",
        "checkpoints/last.ckpt": b"the first run's checkpoint",
        "csv/metrics.csv": b"epoch,step,val/acc\n0,3,0.5\n",
        "train.log": b"the first run's log\n",
    }
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    with run_folder.hold(folder):  # this test's process is the first run
        holder = (folder / run_folder.LOCK_FILE).read_text().strip()
        done = run_quietly(
            [sys.executable, str(ROOT / "train.py"), "trainer.max_epochs=1", f"hydra.run.dir={folder}"]
        )
    assert holder.startswith(f"process {os.getpid()} on ")
    assert done.returncode == 2, done.stderr[-3000:]
    assert (
        done.stderr.strip() == f"The run folder {str(folder)!r} is in use by another run ({holder}){_ADVICE}"
    )
    assert done.stdout == ""
    left = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {run_folder.LOCK_FILE}
    assert left == set(files)
    for name, content in files.items():
        assert (folder / name).read_bytes() == content, name


def test_the_default_run_folder_is_locked_before_hydra_sets_its_config(tmp_path: Path, monkeypatch) -> None:
    """Without hydra.run.dir= the folder is ${paths.log_dir}/…, i.e. ${hydra:runtime.cwd}/outputs/…, which
    Hydra serves only from run_job on; the callback's on_run_start comes before it (issue 17: it raised
    "HydraConfig was not set", Hydra made that a warning, and the folder was not locked)."""
    _rank_zero(monkeypatch)
    monkeypatch.chdir(tmp_path)  # paths.root_dir follows the working directory
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    assert not HydraConfig.initialized()  # as in Hydra's run(): the callbacks start before run_job
    lock = instantiate(cfg.hydra.callbacks.run_folder_lock)
    lock.on_run_start(config=cfg)
    try:
        assert not HydraConfig.initialized()  # left to run_job, which sets and restores its own
        # the folder run_job makes: hydra.run.dir resolved with HydraConfig set (${now:...} is cached)
        HydraConfig.instance().set_config(cfg)
        folder = Path(OmegaConf.select(cfg, "hydra.run.dir"))
        HydraConfig.instance().cfg = None
        assert folder.parent == tmp_path / "outputs" / "train" / "runs"
        assert (folder / run_folder.LOCK_FILE).read_text().startswith(f"process {os.getpid()} on ")
        # a second run into this folder cannot take its lock (another open file of it, as another run has)
        other = os.open(folder / run_folder.LOCK_FILE, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    finally:
        lock.on_run_end(config=cfg)
    assert folder.resolve() not in run_folder._held


@pytest.mark.slow
def test_train_py_in_its_default_folder_takes_the_lock_without_warnings(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        *("data.train_size=64", "data.val_size=32", "data.test_size=32", "data.image_size=16"),
        *("data.batch_size=16", "trainer.max_epochs=1"),
        # the lock is the point, not the training: build everything, fit and test nothing
        *("train=false", "test=false", "optimized_metric=null"),
    ]
    env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
    run = warm_python.popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    # the callback raised in on_run_start (a warning) and again in on_run_end (it had no folder)
    assert "Callback RunFolderLock" not in stderr
    assert "HydraConfig was not set" not in stderr
    (folder,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert (folder / run_folder.LOCK_FILE).read_text().startswith(f"process {run.pid} on ")
    assert (folder / "summary.json").is_file() and (folder / ".hydra" / "config.yaml").is_file()
