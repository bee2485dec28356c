"""``hydra/launcher=slurm``: hydra-submitit-launcher's SLURM launcher, with one sentence for what goes wrong.

Upstream submits the sweep's jobs and then waits on ``job.results()``, which learns a job's state from
``sacct``. On a cluster without accounting (the test cluster, many small ones) that prints a warning on every
poll and never learns that a job ended without a result, so a sweep whose job failed, was cancelled or can
never start (more CPUs per node than the partition's nodes have: reason ``PartitionConfig``) waited forever,
silently. This launcher checks ``sbatch`` and the partition before it submits, follows each job with
``scontrol`` (which needs no accounting) and ends the sweep with one sentence: a job that can never start is
cancelled and named with its reason; a job that ended without a result names its log and shows its last lines.

The resource request follows the trainer (``conf/hydra/launcher/slurm.yaml``): ``gpus_per_node`` is
``trainer.devices`` for a GPU trainer and none for a CPU one (:mod:`lficam.cli.slurm_resources`).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from omegaconf import OmegaConf

from lficam.core.errors import UserError

log = logging.getLogger(__name__)

# pending reasons SLURM gives a job that no amount of waiting will start
NEVER_STARTS = frozenset(
    {
        "PartitionConfig",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
    }
)
_ENDED = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
)
POLL_S = 2.0
LOG_LINES = 15


class _SacctOnce(logging.Filter):
    """submitit warns on every status poll when ``sacct`` fails (no accounting); say it once, and why it does
    not matter here."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "sacct" not in record.getMessage():
            return True
        if type(self).said:
            return False
        type(self).said = True
        record.msg, record.args = (
            "sacct does not answer on this cluster (no job accounting); job states come from scontrol instead.",
            (),
        )
        return True


logging.getLogger("submitit").addFilter(_SacctOnce())


def _slurm(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=60, check=False)


def check_cluster(partition: str | None) -> None:
    """``sbatch`` on PATH and the partition known to the cluster, else one sentence."""
    if shutil.which("sbatch") is None:
        raise UserError(
            "hydra/launcher=slurm submits jobs with sbatch, which is not on PATH here: run the sweep on a SLURM "
            "login node (or try it on this machine's test cluster: python scripts/slurm_cluster.py start <folder>)."
        )
    if partition:
        known = _slurm("sinfo", "-h", "-o", "%R")
        names = sorted(set(known.stdout.split()))
        if known.returncode == 0 and partition not in names:
            raise UserError(
                f"hydra.launcher.partition={partition} is not a partition of this SLURM cluster; it has "
                f"{', '.join(names) or 'none'} (sinfo)."
            )


def job_state(job_id: str) -> tuple[str, str]:
    """(state, reason) of a job by ``scontrol``; ("", "") once SLURM has forgotten it."""
    shown = _slurm("scontrol", "show", "job", "-o", job_id)
    fields = dict(item.split("=", 1) for item in shown.stdout.split() if "=" in item)
    return fields.get("JobState", ""), fields.get("Reason", "")


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log was written)"
    return "\n".join(lines[-LOG_LINES:]) or "(the log is empty)"


def wait_for(jobs: list[Any], params: dict[str, Any]) -> None:
    """Wait until every job has written its result; one sentence for a job that never will."""
    waiting = list(jobs)
    while waiting:
        for job in list(waiting):
            if job.paths.result_pickle.exists() and all(
                t.paths.result_pickle.exists() for t in job._sub_jobs
            ):
                waiting.remove(job)
                continue
            state, reason = job_state(str(job.job_id))
            if state == "PENDING" and reason in NEVER_STARTS:
                _slurm("scancel", *[str(j.job_id) for j in jobs])
                tasks, cpus = params.get("tasks_per_node"), params.get("cpus_per_task")
                gpus = f" and {params['gpus_per_node']} GPU(s)" if params.get("gpus_per_node") else ""
                raise UserError(
                    f"SLURM job {job.job_id} can never start on partition {params.get('partition') or '(default)'} "
                    f"(reason {reason}): each of its {params.get('nodes')} node(s) must hold {tasks} task(s) × "
                    f"{cpus} CPU(s){gpus}, more than the partition's nodes have; the sweep's jobs were cancelled: "
                    "lower hydra.launcher.cpus_per_task or trainer.devices, or choose another partition."
                )
            # a requeued job passes through a state outside _ENDED on its way back to PENDING
            if state in _ENDED and not job.paths.result_pickle.exists():
                time.sleep(POLL_S)  # the result file may land just after the state changes
                if job.paths.result_pickle.exists():
                    continue
                _slurm("scancel", *[str(j.job_id) for j in jobs if j is not job])
                err = job.paths.stderr
                raise UserError(
                    f"SLURM job {job.job_id} ended {state} without a result; its log is {err} "
                    f"(and {job.paths.stdout}), which ends:\n{_tail(err)}"
                )
        if waiting:
            time.sleep(POLL_S)


def checked_launch(self: Any, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
    """hydra-submitit-launcher's ``SlurmLauncher.launch``, checking before it submits and following the
    jobs by scontrol."""
    import submitit

    assert self.config is not None
    check_cluster(self.params.get("partition"))
    init_keys = {"submitit_folder", "max_num_timeout"}
    executor = submitit.AutoExecutor(
        cluster=self._EXECUTOR,
        folder=self.params["submitit_folder"],
        slurm_max_num_timeout=self.params["max_num_timeout"],
    )
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{
            key if key in baseparams else f"{self._EXECUTOR}_{key}": value
            for key, value in self.params.items()
            if key not in init_keys
        }
    )
    sweep_dir = Path(str(self.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info("Submitit 'slurm' sweep output dir : %s", sweep_dir)
    job_params = []
    for number, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        job_params.append(
            (list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state())
        )
    try:
        jobs = executor.map_array(self, *zip(*job_params))
    except submitit.core.utils.FailedJobError as error:  # sbatch's refusal; the message is its stderr
        raise UserError(f"sbatch refused the sweep's jobs: {_sbatch_reason(str(error))}") from error
    log.info(
        "SLURM jobs %s; logs in %s", ", ".join(str(j.job_id) for j in jobs), self.params["submitit_folder"]
    )
    wait_for(jobs, self.params)
    return [job.results()[0] for job in jobs]


def _sbatch_reason(text: str) -> str:
    """sbatch's last error line, else its last line."""
    lines = text.strip().splitlines() or ["(no output)"]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines)[-1].strip()


def install() -> None:
    """Make hydra-submitit-launcher's SLURM launcher (where installed) launch by :func:`checked_launch`.

    Patched, not subclassed: Hydra instantiates launchers only from classes in the ``hydra_plugins`` namespace
    package ("Invalid plugin ...: not the hydra_plugins package"), which this project does not ship. Hydra
    executes each plugin module anew when it scans them (its own module object, not ``sys.modules``'), so the
    class patched is the one in Hydra's plugin registry."""
    from hydra.core.plugins import Plugins

    name = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    launcher = Plugins.instance().class_name_to_class.get(name)
    # None: the sweep extra is not installed, and hydra/launcher=slurm says so itself
    if launcher is not None:
        launcher.launch = checked_launch
