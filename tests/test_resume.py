"""Exact resume: a run killed with SIGKILL part-way and resumed from last.ckpt ends where an unbroken run ends.

Three real ``python train.py`` processes on CPU in deterministic mode: A runs 3 epochs unbroken; B is the same
run, killed (SIGKILL, no chance to clean up) as soon as the checkpoint of its first epoch is on disk; C resumes
B with ``ckpt_path=<B>/checkpoints/last.ckpt``. C's final weights, optimiser state and metrics must equal A's.

Lightning 2.6 restores the weights, optimiser and scheduler states, loop progress, callback states and the
data module's state_dict, but not the global random state: with PyTorch's RandomSampler the resumed run
shuffles differently (this test then fails on the first weight). The data modules' EpochShuffleSampler and
(seed, epoch, index)-seeded augmentations make the batches independent of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
TINY_RUN = [
    "data.image_size=16",
    "data.train_size=64",
    "data.val_size=32",
    "data.batch_size=16",
    "data.eval_batch_size=32",
    "data.cache_dir=null",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.deterministic=true",
    "test=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "callbacks.attention_overlays=null",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
]


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    command = [sys.executable, str(ROOT / "train.py"), *TINY_RUN, f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate()
    assert process.returncode == 0, output[-3000:]


def _readable_epoch(path: Path) -> int | None:
    """The epoch of a complete checkpoint file, or None while it is absent or still being written."""
    if not path.is_file():
        return None
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # a half-written file: try again
        return None


def _kill_after_first_checkpoint(process: subprocess.Popen, last: Path) -> int:
    while process.poll() is None:
        epoch = _readable_epoch(last)
        if epoch is not None:
            os.kill(process.pid, signal.SIGKILL)
            process.communicate()
            return epoch
        time.sleep(0.02)
    output, _ = process.communicate()
    pytest.fail(f"the run ended (rc={process.returncode}) before it could be killed:\n{output[-3000:]}")


@pytest.mark.slow
def test_killed_and_resumed_run_equals_unbroken_run(tmp_path: Path) -> None:
    unbroken, broken, resumed = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    run_a = _start(unbroken)
    run_b = _start(broken)
    killed_at = _kill_after_first_checkpoint(run_b, broken / "checkpoints" / "last.ckpt")
    assert run_b.returncode == -signal.SIGKILL
    assert not (broken / "summary.json").exists()  # it really died part-way
    last_b = torch.load(broken / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last_b["epoch"] == killed_at < EPOCHS - 1

    run_c = _start(resumed, f"ckpt_path={broken / 'checkpoints' / 'last.ckpt'}")
    _finish(run_a)
    _finish(run_c)

    final_a = torch.load(unbroken / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    final_c = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final_c["epoch"] == final_a["epoch"] == EPOCHS - 1
    assert final_c["global_step"] == final_a["global_step"] == EPOCHS * 64 // 16
    assert final_a["state_dict"].keys() == final_c["state_dict"].keys()
    # the resumed run changed the weights it started from, and ended exactly where A ended
    key = "net.fc.weight"
    assert not torch.equal(last_b["state_dict"][key], final_c["state_dict"][key])
    for name, tensor in final_a["state_dict"].items():
        torch.testing.assert_close(final_c["state_dict"][name], tensor, rtol=0, atol=0, msg=name)
    momentum_a = final_a["optimizer_states"][0]["state"]
    momentum_c = final_c["optimizer_states"][0]["state"]
    for index, state in momentum_a.items():
        torch.testing.assert_close(
            momentum_c[index]["momentum_buffer"], state["momentum_buffer"], rtol=0, atol=0
        )
    assert final_c["lr_schedulers"] == final_a["lr_schedulers"]

    metrics_a = json.loads((unbroken / "summary.json").read_text())["metrics"]
    metrics_c = json.loads((resumed / "summary.json").read_text())["metrics"]
    assert {"val/acc", "val/acc_best", "val/loss", "train/loss_epoch"} <= set(metrics_a)
    assert metrics_c == metrics_a


def test_training_order_is_a_function_of_seed_and_epoch_only() -> None:
    from lficam.data import EpochShuffleSampler, ShapesDataModule

    sampler = EpochShuffleSampler(10, seed=7)
    first = list(sampler)
    torch.manual_seed(999)  # the global random state (not in checkpoints) has no say
    assert list(sampler) == first
    assert sorted(first) == list(range(10))
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    assert list(EpochShuffleSampler(10, seed=7)) == first  # a fresh process, e.g. a resumed run, agrees
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(EpochShuffleSampler(10, seed=8)) != first

    torch.manual_seed(3)
    data = ShapesDataModule(
        image_size=16, train_size=8, val_size=4, test_size=4, batch_size=4, cache_dir=None
    )
    torch.manual_seed(3)
    again = ShapesDataModule(
        image_size=16, train_size=8, val_size=4, test_size=4, batch_size=4, cache_dir=None
    )
    assert (
        data.shuffle_seed == again.shuffle_seed
    )  # drawn from the state train.py seeds before building the data
    data.setup("fit")
    loader = data.train_dataloader()
    assert isinstance(loader.sampler, EpochShuffleSampler)
    assert loader.sampler.seed == data.shuffle_seed
