"""A one-node SLURM cluster on this machine, from Debian's packages, for the tests and for trying the launcher.

    python scripts/slurm_cluster.py start /tmp/lficam-slurm   # prints the SLURM_CONF line to export
    export SLURM_CONF=/tmp/lficam-slurm/slurm.conf
    sinfo; python train.py -m hydra/launcher=slurm hydra.launcher.partition=cpu trainer=ddp_cpu ...
    python scripts/slurm_cluster.py stop /tmp/lficam-slurm

Needs ``slurmctld``, ``slurmd`` and ``munged`` (``make slurm``: apt-get install slurm-wlm munge) and root, as
slurmd starts jobs as the user who submitted them. Everything lives in the folder: its own munge key and
socket, the config, the daemons' state, logs and pid files; the daemons listen on free local ports, so the
cluster touches no system file and leaves nothing running after ``stop``. One partition, ``cpu``, holds this
machine's CPUs (those this process may run on). No systemd: the daemons run in the foreground of their own
sessions and ``stop`` ends them by the pids written here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged")
PARTITION = "cpu"
# seconds SLURM waits before it starts a requeued job again: its job credential lifetime (AuthInfo cred_expire,
# default 120 s; SLURM refuses values under 5)
REQUEUE_DELAY_S = 5


def missing_binaries() -> list[str]:
    """The daemons and commands this cluster needs that are not on PATH (or in /usr/sbin)."""
    wanted = [*DAEMONS, "sbatch", "srun", "scontrol", "squeue", "sinfo", "scancel"]
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin"
    return [name for name in wanted if shutil.which(name, path=path) is None]


def _binary(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin") or name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """slurmctld, slurmd and munged for one node, configured and kept in ``folder``."""

    def __init__(self, folder: str | Path, cpus: int | None = None) -> None:
        self.folder = Path(folder).resolve()
        self.cpus = cpus or len(os.sched_getaffinity(0))
        self.node = socket.gethostname().split(".")[0]

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    def env(self) -> dict[str, str]:
        """The environment that points SLURM's commands (and jobs) at this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # ---------------------------------------------------------------------------------------------- start

    def start(self, timeout: float = 60) -> None:
        """Write the key and config, start the three daemons, and wait until the node takes jobs."""
        missing = missing_binaries()
        if missing:
            raise RuntimeError(f"the test cluster needs {', '.join(missing)}: run `make slurm` (apt-get).")
        for sub in ("state", "spool", "log", "run"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        # munged refuses a folder others may write to
        os.chmod(self.folder, 0o700)
        key = self.folder / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            os.chmod(key, 0o600)
        self.conf.write_text(self._config())
        self._spawn(
            "munged",
            [
                _binary("munged"),
                "--foreground",
                "--force",
                f"--socket={self._munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.folder / 'run' / 'munged.pid'}",
                f"--log-file={self.folder / 'log' / 'munged.log'}",
                f"--seed-file={self.folder / 'run' / 'munged.seed'}",
            ],
        )
        self._wait(lambda: self._munge_socket.exists(), timeout, "munged did not open its socket")
        # -i: ignore state a previous cluster in this folder left; -D: foreground, our pid to stop
        self._spawn("slurmctld", [_binary("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [_binary("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
        self._wait(self._node_ready, timeout, "the node did not become idle")

    @property
    def _munge_socket(self) -> Path:
        return self.folder / "run" / "munge.socket"

    def _config(self) -> str:
        f = self.folder
        return f"""# a one-node cluster written by scripts/slurm_cluster.py
ClusterName=lficam
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={self._munge_socket},cred_expire={REQUEUE_DELAY_S}
StateSaveLocation={f}/state
SlurmdSpoolDir={f}/spool
SlurmctldPidFile={f}/run/slurmctld.pid
SlurmdPidFile={f}/run/slurmd.pid
SlurmctldLogFile={f}/log/slurmctld.log
SlurmdLogFile={f}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
# a stopped job's processes get SIGKILL this many seconds after SIGTERM
KillWait=5
# finished jobs stay visible to scontrol for this many seconds
MinJobAge=600
SchedulerParameters=sched_interval=2,bf_interval=2
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.folder / "log" / f"{name}.out", "ab")  # noqa: SIM115 (the daemon keeps it)
        # own session: a Ctrl-C in the terminal that started the cluster does not reach the daemons
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env()
        )
        (self.folder / "run" / f"{name}.ours").write_text(str(process.pid))

    def _node_ready(self) -> bool:
        result = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return result.returncode == 0 and result.stdout.strip() in ("idle", "mixed", "allocated")

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [n for n in DAEMONS if self._pid(n) is not None and not _alive(self._pid(n))]
            if dead:
                break
            time.sleep(0.3)
        logs = "\n".join(self._log_tail(n) for n in DAEMONS)
        self.stop()
        raise RuntimeError(f"SLURM test cluster: {what} (logs in {self.folder / 'log'}):\n{logs}")

    def _log_tail(self, name: str, lines: int = 8) -> str:
        texts = []
        for path in (self.folder / "log" / f"{name}.log", self.folder / "log" / f"{name}.out"):
            if path.exists():
                texts += path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {name}:\n" + "\n".join(texts)

    # ----------------------------------------------------------------------------------------- commands

    def run(self, *command: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """A SLURM command (sbatch, scontrol, ...) against this cluster."""
        return subprocess.run(
            [_binary(command[0]), *command[1:]],
            env=self.env(),
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def jobs(self) -> list[str]:
        """Ids of the jobs the cluster knows that have not ended."""
        result = self.run("squeue", "-h", "-o", "%i", check=False)
        return result.stdout.split() if result.returncode == 0 else []

    # ----------------------------------------------------------------------------------------------- stop

    def _pid(self, name: str) -> int | None:
        path = self.folder / "run" / f"{name}.ours"
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 30) -> None:
        """Cancel every job, wait for them to end, then end the daemons (SIGTERM, then SIGKILL)."""
        if self._pid("slurmctld") and _alive(self._pid("slurmctld")) and self.jobs():
            self.run("scancel", "--full", "--partition", PARTITION, check=False)
            deadline = time.monotonic() + timeout
            while self.jobs() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in DAEMONS:
            pid = self._pid(name)
            if pid is None or not _alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            (self.folder / "run" / f"{name}.ours").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie child of this process counts as ended, and is reaped)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("start", "stop"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    cluster = SlurmCluster(argv[2])
    if argv[1] == "start":
        try:
            cluster.start()
        except RuntimeError as error:
            print(error, file=sys.stderr)
            return 1
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
