"""One run per folder (lficam/run_folder.py): a run started into a folder in use is refused with one sentence
and exit code 2, the folder untouched; the lock of a killed run is gone at once; DDP ranks of the run join it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lficam import run_folder
from lficam.run_folder import RunFolderInUseError
from tests.conftest import ROOT, run_quietly

# Another run's hold on a folder as lficam.run_folder takes it (an exclusive flock on <folder>/.lock, which
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


def test_a_held_folder_is_refused_and_a_killed_holders_lock_is_gone(tmp_path: Path, monkeypatch) -> None:
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
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
