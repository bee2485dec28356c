"""One Optuna study shared by three sweep workers, in a real PostgreSQL 15 that the test starts and stops.

Three ``python train.py -m hparams_search=lficam_optuna hydra.sweeper.n_jobs=1 ...`` processes start at once
against one study in PostgreSQL (initdb and pg_ctl in a temporary folder, a free local port). The pinned
hydra-optuna-sweeper 1.3.0 runs ``n_trials`` trials per worker (its ask/tell loop takes no study-wide limit), so
each worker gets its share. The study must hold exactly the trials asked for, each complete, numbered once,
with parameters no other trial had (each worker its own sampler seed: with one seed the workers propose the same
random start-up trials), and its best value must be the best ``val/acc_best`` among the trials' summary.json.
A worker killed mid-trial leaves that trial silent; the next worker to ask for a trial after its heartbeat's
grace period marks it failed and runs it again (lficam/training/study_heartbeat.py).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage

from lficam.training.study_heartbeat import HeartbeatStorage
from tests.cluster import ON_CLUSTER, ROOT, running_cluster, train_command
from tests.conftest import finish, start
from tests.object_store import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
WORKERS, TRIALS_EACH = 3, 2
INTERVAL, GRACE = 1, 3  # the killed-worker test's heartbeat interval and grace period, in seconds


def _as_postgres(*command: str) -> subprocess.CompletedProcess:
    """PostgreSQL refuses to run as root: as root, run its tools as the postgres user."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    if not (PG_BIN / "initdb").is_file():
        pytest.skip("no PostgreSQL 15 here: `make slurm` installs Debian's postgresql")
    pytest.importorskip(
        "psycopg2", reason="the PostgreSQL driver comes with the sweep extra (psycopg2-binary)"
    )
    folder = Path(tempfile.mkdtemp(prefix="lficam-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    try:
        made = _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "lficam")
        assert made.returncode == 0, made.stdout + made.stderr
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
        started = _as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", f"{folder}/log", "-w", "start"
        )
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"postgresql://lficam@127.0.0.1:{port}/postgres"
    finally:
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def _worker(url: str, study_name: str, seed: int, trials: int, folder: Path, *extra: str) -> subprocess.Popen:
    command = train_command(
        "hparams_search=lficam_optuna",
        "hydra.sweeper.n_jobs=1",
        f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweeper.storage={url}",
        f"hydra.sweeper.study_name={study_name}",
        f"hydra.sweeper.sampler.seed={seed}",
        f"hydra.sweep.dir={folder / f'worker{seed}'}",
        "trainer.max_epochs=1",
        "data.train_size=128",
        *extra,
    )
    return start(command, dict(os.environ))


def _assert_one_study_of_every_workers_trials(
    postgres_url: str, study_name: str, tmp_path: Path
) -> list[float]:
    """The shared study holds each worker's trials once, all complete, numbered 0…n−1 with distinct parameters,
    one run folder each; returns the runs' optimised values (their summary.json), sorted."""
    study = optuna.load_study(study_name=study_name, storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == WORKERS * TRIALS_EACH
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(WORKERS * TRIALS_EACH))
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)
    summaries = sorted(tmp_path.glob("worker*/*/summary.json"))
    assert len(summaries) == WORKERS * TRIALS_EACH
    values = sorted(json.loads(path.read_text())["metrics"]["val/acc_best"] for path in summaries)
    assert study.best_value == pytest.approx(values[-1], abs=1e-7)
    return values


@pytest.mark.slow
def test_three_workers_share_one_study_in_postgresql(postgres_url: str, tmp_path: Path) -> None:
    study_name = "shared"
    workers = [_worker(postgres_url, study_name, seed, TRIALS_EACH, tmp_path) for seed in range(WORKERS)]
    try:
        outputs = [finish(worker, timeout=400) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
    assert [w.returncode for w in workers] == [0] * WORKERS, "\n".join(o[-2000:] for o in outputs)

    _assert_one_study_of_every_workers_trials(postgres_url, study_name, tmp_path)


@pytest.mark.slow
def test_a_killed_workers_trial_is_failed_and_run_again(postgres_url: str, tmp_path: Path) -> None:
    study_name, beat = (
        "killed",
        [
            f"hydra.callbacks.trial_heartbeat.interval={INTERVAL}",
            f"hydra.callbacks.trial_heartbeat.grace_period={GRACE}",
        ],
    )
    victim = _worker(postgres_url, study_name, 0, 1, tmp_path, "trainer.max_epochs=50", *beat)
    others = []
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "worker0" / "0" / "csv").is_dir():  # its trial is training
            assert victim.poll() is None, finish(victim)[-3000:]
            assert time.monotonic() < deadline, "the first worker started no trial in 120 s"
            time.sleep(0.1)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        # the others ask once the trial's last heartbeat (at most one interval before the kill) is past the grace
        # period: forked from a warm interpreter, their trials can all be asked for inside it otherwise
        time.sleep(INTERVAL + GRACE + 0.5)
        others = [_worker(postgres_url, study_name, seed, 2, tmp_path, *beat) for seed in (1, 2)]
        outputs = [finish(worker, timeout=400) for worker in others]
    finally:
        for worker in [victim, *others]:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
    assert [w.returncode for w in others] == [0, 0], "\n".join(o[-2000:] for o in outputs)

    trials = optuna.load_study(study_name=study_name, storage=postgres_url).get_trials(deepcopy=False)
    killed = trials[0]
    assert killed.state == optuna.trial.TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.params == killed.params
    assert len(trials) == 1 + 2 * 2
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 4


@pytest.mark.slow
def test_a_heartbeat_newer_than_the_stale_check_is_fresh(postgres_url: str) -> None:
    """Only a heartbeat older than the grace period makes a trial stale; one recorded by another worker after the
    check read the database's clock is fresh (optuna 2.10 reads its negative age as 86 399 s and fails it)."""
    storage = HeartbeatStorage(postgres_url, heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(study_name="clock", storage=storage)
    trial_of_age = {}
    for age in (-1.5, 1.0, 10.0):  # seconds before the check; -1.5: recorded after it
        trial_id = study.ask()._trial_id
        storage.record_heartbeat(trial_id)
        with storage.engine.begin() as connection:
            connection.execute(
                sqlalchemy.text(
                    "UPDATE trial_heartbeats SET heartbeat = now() - make_interval(secs => :age) "
                    "WHERE trial_id = :trial_id"
                ),
                {"age": age, "trial_id": trial_id},
            )
        trial_of_age[age] = trial_id
    study_id = study._study_id
    assert storage._get_stale_trial_ids(study_id) == [trial_of_age[10.0]]
    # the defect it mends, still in the pinned optuna: the future heartbeat counts as stale
    assert sorted(RDBStorage._get_stale_trial_ids(storage, study_id)) == [
        trial_of_age[-1.5],
        trial_of_age[10.0],
    ]


@pytest.fixture(scope="module")
def slurm_cluster():
    yield from running_cluster()


@pytest.mark.slow
def test_an_optuna_sweep_through_slurm_gets_each_jobs_metric(slurm_cluster, tmp_path: Path) -> None:
    """Each trial is a SLURM job (hydra/launcher=slurm); the value it hands back through submitit's result
    file is the value the study records, the run's own summary.json metric."""

    sweep, storage = tmp_path / "sweep", f"sqlite:///{tmp_path / 'optuna.db'}"
    command = train_command(
        "hparams_search=lficam_optuna",
        *ON_CLUSTER,
        "trainer=cpu",
        "trainer.devices=1",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=through_slurm",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep}",
    )
    output = finish(start(command, slurm_cluster.env()), timeout=400)
    assert "Traceback" not in output, output[-4000:]
    # one SLURM job per trial (an array of 2), each with its result file
    assert len(list(sweep.glob(".submitit/*/*_result.pkl"))) == 2, output[-3000:]

    trials = optuna.load_study(study_name="through_slurm", storage=storage).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2, output[-3000:]
    by_job = {
        int(path.parent.name): json.loads(path.read_text())["metrics"]["val/acc_best"]
        for path in sweep.glob("*/summary.json")
    }
    assert sorted(by_job) == [0, 1]
    assert [t.value for t in sorted(trials, key=lambda t: t.number)] == pytest.approx(
        [by_job[0], by_job[1]], abs=1e-7
    )
    assert all(0 <= value <= 1 for value in by_job.values())


@pytest.mark.slow
def test_three_slurm_jobs_share_one_study_in_postgresql(
    slurm_cluster, postgres_url: str, tmp_path: Path
) -> None:
    """The same three workers as above, each a SLURM job of its own (``sbatch``), one CPU each."""

    study_name, jobs = "slurm_workers", []
    env = {**slurm_cluster.env(), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    try:
        for seed in range(WORKERS):
            command = train_command(
                "hparams_search=lficam_optuna",
                "hydra.sweeper.n_jobs=1",
                f"hydra.sweeper.n_trials={TRIALS_EACH}",
                f"hydra.sweeper.storage={postgres_url}",
                f"hydra.sweeper.study_name={study_name}",
                f"hydra.sweeper.sampler.seed={seed}",
                f"hydra.sweep.dir={tmp_path / f'worker{seed}'}",
                "trainer.max_epochs=1",
                "data.train_size=128",
            )
            submitted = subprocess.run(
                [
                    "sbatch",
                    "--parsable",
                    "--partition=cpu",
                    "--ntasks=1",
                    "--cpus-per-task=1",
                    f"--chdir={ROOT}",
                    f"--output={tmp_path / f'worker{seed}.log'}",
                    f"--wrap={shlex.join(command)}",
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert submitted.returncode == 0, submitted.stderr
            jobs.append(submitted.stdout.strip().split(";")[0])
        deadline = time.monotonic() + 400
        while set(jobs) & set(slurm_cluster.jobs()):
            assert time.monotonic() < deadline, f"jobs {jobs} still running after 400 s"
            time.sleep(1)
        states = [slurm_cluster.run("scontrol", "show", "job", "-o", job).stdout for job in jobs]
    finally:
        left = set(jobs) & set(slurm_cluster.jobs())
        if left:
            slurm_cluster.run("scancel", *left, check=False)
    logs = [(tmp_path / f"worker{seed}.log").read_text() for seed in range(WORKERS)]
    assert all("JobState=COMPLETED" in state and "ExitCode=0:0" in state for state in states), "\n".join(
        log[-2000:] for log in logs
    )

    values = _assert_one_study_of_every_workers_trials(postgres_url, study_name, tmp_path)
    trials = optuna.load_study(study_name=study_name, storage=postgres_url).get_trials(deepcopy=False)
    assert sorted(t.value for t in trials) == pytest.approx(values, abs=1e-7)
