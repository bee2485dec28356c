"""The command-line layer, on top of every other: the four commands (:mod:`lficam.cli.commands`) and how each
one ends (:mod:`lficam.cli.runtime`: one sentence and exit code 2 for a user's mistake, 130/143 for Ctrl-C/SIGTERM,
a traceback only for a bug)."""

from lficam.cli import slurm_resources  # noqa: F401  (registers the launcher config's resolver)
from lficam.cli.commands import eval_task, evaluate, explain, export, run_task, study_task, train
from lficam.cli.runtime import VERSION_BASE, guarded, run, terminated
from lficam.cli.slurm_launcher import install as _install_slurm_launcher

_install_slurm_launcher()

__all__ = [
    "VERSION_BASE",
    "eval_task",
    "evaluate",
    "explain",
    "export",
    "guarded",
    "run",
    "run_task",
    "study_task",
    "terminated",
    "train",
]
