"""Multi-node DDP simulated on one host: two torchrun agents are the two nodes of one run.

Each agent runs ``torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:<port>
train.py trainer=ddp_cpu trainer.devices=1 trainer.num_nodes=2 hydra.run.dir=<run>``: Lightning reads torchrun's
environment, every rank writes into the one folder (only global rank 0 holds its lock and writes its files). The
run must end with the weights, momenta and metrics of a one-node two-process run (``trainer=ddp_cpu``), bit for
bit: two nodes of one process each are the same gloo DDP as one node of two.

With ``--max-restarts=1``, the second node's worker SIGKILLed after the first epoch's checkpoint: both agents
restart their workers, which meet in this attempt's part of the agent's store (torchrun 2.14 hands the new
attempt the old attempt's store, where gloo would read the killed ranks' addresses: lficam/training/
auto_resume.py), resume from last.ckpt and end equal to the unbroken run. A second node whose rendezvous
endpoint never answers stops with one sentence.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests import warm_python
from tests.cluster import (
    ROOT,
    assert_metrics_equal_but_the_first_resumed_stability,
    metrics_rows,
    train_command,
)
from tests.conftest import finish, start
from tests.test_resume import _load, _readable_epoch, differing_tensors

EPOCHS = 2
SETTINGS = ["trainer=ddp_cpu", "trainer.deterministic=true", f"trainer.max_epochs={EPOCHS}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agent(port: int, run: Path, *settings: str, restarts: int = 0) -> list[str]:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    rendezvous = ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=lficam-test"]
    elastic = [f"--max-restarts={restarts}", "--monitor-interval=0.5"]
    train = train_command(
        *settings, "trainer.devices=1", "trainer.num_nodes=2", f"hydra.run.dir={run}", multirun=False
    )
    return [*torchrun, *rendezvous, *elastic, *train[1:]]


def _stop(agents: list) -> None:
    """Kill what is left of the agents and their workers (torchrun starts each worker in a session of its own,
    out of reach of a signal to the agent's process group)."""
    for agent in agents:
        try:
            left = [psutil.Process(agent.pid), *psutil.Process(agent.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)


@pytest.mark.slow
def test_two_torchrun_nodes_train_one_run_equal_to_one_node_of_two_processes(tmp_path: Path) -> None:
    reference_run, run = tmp_path / "one_node", tmp_path / "two_nodes"
    port = _free_port()
    agents = [start(_agent(port, run, *SETTINGS), dict(os.environ)) for _ in range(2)]
    try:
        outputs = [finish(agent, timeout=300) for agent in agents]
    finally:
        _stop(agents)
    assert [a.returncode for a in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert sum("All distributed processes registered. Starting with 2 processes" in o for o in outputs) == 1
    reference = start(
        train_command(*SETTINGS, f"hydra.run.dir={reference_run}", multirun=False), dict(os.environ)
    )
    output = finish(reference)
    assert reference.returncode == 0, output[-3000:]

    two, one = _load(run / "checkpoints" / "last.ckpt"), _load(reference_run / "checkpoints" / "last.ckpt")
    # 64 images over 2 ranks in batches of 16 (tests/cluster.py TINY_RUN): 2 steps per epoch
    assert two["global_step"] == one["global_step"] == EPOCHS * 64 // 16 // 2
    assert differing_tensors(one, two) == ([], [])
    assert metrics_rows(run) == metrics_rows(reference_run)


@pytest.mark.slow
def test_a_second_node_whose_rendezvous_endpoint_does_not_answer_stops_with_one_sentence(
    tmp_path: Path,
) -> None:
    port = _free_port()  # nothing listens there: no first node
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_", "HYDRA_FULL"))}
    env.pop("LOCAL_RANK", None)
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": "1", "WORLD_SIZE": "2"}
    env |= {"LFICAM_RENDEZVOUS_TIMEOUT": "3", "WANDB_MODE": "offline"}
    command = train_command(
        "trainer=ddp_cpu",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        f"hydra.run.dir={tmp_path}",
        multirun=False,
    )
    began = time.monotonic()
    # without the check, gloo waits 30 minutes for the endpoint
    done = warm_python.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - began
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert (
        f"Node 1 of trainer.num_nodes=2 cannot reach the rendezvous endpoint MASTER_ADDR:MASTER_PORT = "
        f"127.0.0.1:{port} (connection refused for 3 s): start the first node (NODE_RANK=0)" in output
    ), output[-3000:]
    assert "LFICAM_RENDEZVOUS_TIMEOUT=<seconds>" in output
    assert 3 <= took < 60, took
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_a_killed_worker_restarts_the_group_which_resumes_and_ends_as_the_unbroken_run(
    tmp_path: Path,
) -> None:
    """``--max-restarts=1``: the second node's worker is SIGKILLed once the first epoch's checkpoint is on disk;
    both agents restart their workers (a new rendezvous round), which resume from the folder's last.ckpt by
    themselves and end with the weights and metrics of the same run unbroken on one node of two processes."""
    epochs = 3
    settings = [*SETTINGS[:-1], f"trainer.max_epochs={epochs}", "data.train_size=512", "data.image_size=32"]
    reference_run, run = tmp_path / "one_node", tmp_path / "two_nodes"
    port = _free_port()
    agents = [start(_agent(port, run, *settings, restarts=1), dict(os.environ)) for _ in range(2)]
    reference = None
    try:
        deadline = time.monotonic() + 300
        while _readable_epoch(run / "checkpoints" / "last.ckpt") is None:
            assert all(a.poll() is None for a in agents), finish(agents[0])[-3000:]
            assert time.monotonic() < deadline, "the run wrote no checkpoint in 300 s"
            time.sleep(0.05)
        (worker,) = psutil.Process(agents[1].pid).children()
        worker.send_signal(signal.SIGKILL)
        outputs = [finish(agent, timeout=400) for agent in agents]
        reference = start(
            train_command(*settings, f"hydra.run.dir={reference_run}", multirun=False), dict(os.environ)
        )
        reference_output = finish(reference, timeout=400)
    finally:
        _stop([*agents, *([reference] if reference else [])])
    assert [a.returncode for a in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert reference.returncode == 0, reference_output[-3000:]
    log = (run / "train.log").read_text()
    assert "torchrun restarted the worker group (attempt 2): resuming from this run folder's" in log, log[
        -3000:
    ]
    assert "connectFullMesh" not in "".join(outputs)

    resumed, unbroken = (
        _load(run / "checkpoints" / "last.ckpt"),
        _load(reference_run / "checkpoints" / "last.ckpt"),
    )
    assert resumed["epoch"] == unbroken["epoch"] == epochs - 1
    assert resumed["global_step"] == unbroken["global_step"] == epochs * 512 // 16 // 2
    assert differing_tensors(unbroken, resumed) == ([], [])
    assert_metrics_equal_but_the_first_resumed_stability(run, reference_run)
