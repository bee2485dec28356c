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
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests import warm_python
from tests.cluster import (
    ROOT,
    assert_metrics_equal_but_the_first_resumed_stability,
    train_command,
)
from tests.conftest import finish, start
from tests.object_store import free_port
from tests.test_resume import _load, _readable_epoch, differing_tensors

EPOCHS = 3
# long enough epochs (16 steps a rank) that the kill lands before the run ends
SETTINGS = [
    "trainer=ddp_cpu",
    "trainer.deterministic=true",
    f"trainer.max_epochs={EPOCHS}",
    "data.train_size=512",
    "data.image_size=32",
]


def _agent(port: int, run: Path, *settings: str, restarts: int = 0) -> list[str]:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    rendezvous = ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=lficam-test"]
    elastic = [f"--max-restarts={restarts}", "--monitor-interval=0.5"]
    train = train_command(
        *SETTINGS, "trainer.devices=1", "trainer.num_nodes=2", f"hydra.run.dir={run}", multirun=False
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
def test_a_second_node_whose_rendezvous_endpoint_does_not_answer_stops_with_one_sentence(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there: no first node
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
def test_two_nodes_with_a_killed_worker_restart_resume_and_end_as_one_node_of_two_processes(
    tmp_path: Path,
) -> None:
    """Two torchrun nodes of one process each, ``--max-restarts=1``: the second node's worker is SIGKILLed once
    the first epoch's checkpoint is on disk; both agents restart their workers (a new rendezvous round), which
    resume from the folder's last.ckpt by themselves and end with the weights, momenta and metrics of the same
    run unbroken on one node of two processes. (An unbroken two-node run is the same run with no kill: the
    resumed epochs are trained by the two nodes, so a difference between two nodes and one would show here.)"""
    reference_run, run = tmp_path / "one_node", tmp_path / "two_nodes"
    port = free_port()
    agents = [start(_agent(port, run, *SETTINGS, restarts=1), dict(os.environ)) for _ in range(2)]
    # the unbroken run meanwhile: it fills the cores while the agents start, meet and restart
    reference = start(
        train_command(*SETTINGS, f"hydra.run.dir={reference_run}", multirun=False), dict(os.environ)
    )
    try:
        deadline = time.monotonic() + 300
        while _readable_epoch(run / "checkpoints" / "last.ckpt") is None:
            assert all(a.poll() is None for a in agents), finish(agents[0])[-3000:]
            assert time.monotonic() < deadline, "the run wrote no checkpoint in 300 s"
            time.sleep(0.05)
        (worker,) = psutil.Process(agents[1].pid).children()
        worker.send_signal(signal.SIGKILL)
        outputs = [finish(agent, timeout=400) for agent in agents]
        reference_output = finish(reference, timeout=400)
    finally:
        _stop([*agents, reference])
    assert [a.returncode for a in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert reference.returncode == 0, reference_output[-3000:]
    log = (run / "train.log").read_text()
    assert "torchrun restarted the worker group (attempt 2): resuming from this run folder's" in log, log[
        -3000:
    ]
    assert "connectFullMesh" not in "".join(outputs)
    # one rendezvous of the two nodes per attempt, each seen by global rank 0
    assert "".join(outputs).count("All distributed processes registered. Starting with 2 processes") == 2

    resumed, unbroken = (
        _load(run / "checkpoints" / "last.ckpt"),
        _load(reference_run / "checkpoints" / "last.ckpt"),
    )
    assert resumed["epoch"] == unbroken["epoch"] == EPOCHS - 1
    # 512 images over 2 ranks in batches of 16 (tests/cluster.py TINY_RUN)
    assert resumed["global_step"] == unbroken["global_step"] == EPOCHS * 512 // 16 // 2
    assert differing_tensors(unbroken, resumed) == ([], [])
    assert_metrics_equal_but_the_first_resumed_stability(run, reference_run)
