"""Exact resume: a run killed with SIGKILL part-way and resumed from last.ckpt ends where an unbroken run ends.

Real ``python train.py`` processes on CPU in deterministic mode: A runs 3 epochs unbroken without workers; B is
the same run with 2 data-loader workers, killed (SIGKILL, no chance to clean up) as soon as the checkpoint of its
first epoch is on disk; C resumes B with ``ckpt_path=<B>/checkpoints/last.ckpt`` once for each of 0, 2 and 4
workers, with and without persistent workers (one Hydra multirun, one process). Every C's final weights, optimiser
state and metrics must equal A's, bit for bit: the result depends neither on the interruption nor on the workers.

Lightning 2.6 restores the weights, optimiser and scheduler states, loop progress, callback states and the
data module's state_dict, but not the global random state: with PyTorch's RandomSampler the resumed run
shuffles differently (this test then fails on the first weight). The data modules' EpochShuffleSampler and
(seed, epoch, index)-seeded augmentations make the batches independent of it. With workers the resumed epoch
used to replay epoch 0's order and flips (128 of 153 tensors differed): Lightning creates the first training
iterator before it sets the epoch, and a multi-process iterator prefetches inside ``iter()``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import finish, start

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
WORKERS = (0, 2, 4)
PERSISTENT = (False, True)


def _start(*arguments: str, multirun: bool = False) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "train.py"), *(["-m"] if multirun else []), *TINY_RUN, *arguments]
    return start(command, dict(os.environ))


def _finish(process: subprocess.Popen, timeout: float = 400) -> str:
    output = finish(process, timeout)
    assert process.returncode == 0, output[-3000:]
    return output


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
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return epoch
        time.sleep(0.02)
    output, _ = process.communicate()
    pytest.fail(f"the run ended (rc={process.returncode}) before it could be killed:\n{output[-3000:]}")


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def differing_tensors(first: dict[str, Any], second: dict[str, Any]) -> tuple[list[str], list[int]]:
    """(names of the weights and buffers, indices of the momentum buffers) that are not bit-identical in two
    checkpoints."""
    names = [k for k, v in first["state_dict"].items() if not torch.equal(v, second["state_dict"][k])]
    other = second["optimizer_states"][0]["state"]
    momenta = [
        i
        for i, state in first["optimizer_states"][0]["state"].items()
        if not torch.equal(state["momentum_buffer"], other[i]["momentum_buffer"])
    ]
    return names, momenta


@pytest.mark.slow
def test_killed_and_resumed_run_equals_unbroken_run_with_any_workers(tmp_path: Path) -> None:
    unbroken, broken, resumed = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    run_a = _start(f"hydra.run.dir={unbroken}", "data.num_workers=0")
    run_b = _start(f"hydra.run.dir={broken}", "data.num_workers=2")
    killed_at = _kill_after_first_checkpoint(run_b, broken / "checkpoints" / "last.ckpt")
    assert run_b.returncode == -signal.SIGKILL
    assert not (broken / "summary.json").exists()  # it really died part-way
    last_b = _load(broken / "checkpoints" / "last.ckpt")
    assert last_b["epoch"] == killed_at < EPOCHS - 1
    _finish(run_a)

    sweep = _start(
        f"ckpt_path={broken / 'checkpoints' / 'last.ckpt'}",
        f"data.num_workers={','.join(map(str, WORKERS))}",
        f"data.persistent_workers={','.join(str(p).lower() for p in PERSISTENT)}",
        f"hydra.sweep.dir={resumed}",
        "hydra.sweep.subdir=w${data.num_workers}_p${data.persistent_workers}",
        multirun=True,
    )
    _finish(sweep)

    final_a = _load(unbroken / "checkpoints" / "last.ckpt")
    metrics_a = json.loads((unbroken / "summary.json").read_text())["metrics"]
    assert final_a["epoch"] == EPOCHS - 1
    assert final_a["global_step"] == EPOCHS * 64 // 16
    assert {"val/acc", "val/acc_best", "val/loss", "train/loss_epoch"} <= set(metrics_a)
    key = "net.fc.weight"
    assert not torch.equal(
        last_b["state_dict"][key], final_a["state_dict"][key]
    )  # the resumed epochs trained
    differing = {}
    for workers in WORKERS:
        for persistent in PERSISTENT:
            run = resumed / f"w{workers}_p{persistent}"
            final_c = _load(run / "checkpoints" / "last.ckpt")
            assert (final_c["epoch"], final_c["global_step"]) == (final_a["epoch"], final_a["global_step"])
            assert final_c["state_dict"].keys() == final_a["state_dict"].keys()
            assert final_c["lr_schedulers"] == final_a["lr_schedulers"]
            metrics_c = json.loads((run / "summary.json").read_text())["metrics"]
            differing[run.name] = (*differing_tensors(final_a, final_c), metrics_c == metrics_a)
    tensors, buffers = len(final_a["state_dict"]), len(final_a["optimizer_states"][0]["state"])
    report = {
        name: f"{len(names)} of {tensors} tensors, {len(momenta)} of {buffers} momentum buffers differ; "
        f"metrics equal: {same}"
        for name, (names, momenta, same) in differing.items()
    }
    assert all(not names and not momenta and same for names, momenta, same in differing.values()), report
