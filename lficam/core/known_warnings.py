"""Advice from the libraries that does not apply to lficam, silenced once per command."""

from __future__ import annotations

import logging
import warnings


def quiet_known_warnings() -> None:
    """Silence advice that does not apply to our data modules (in-memory data needs no workers), Lightning's
    hint to prepend ``srun`` on machines that have SLURM installed, and Lightning's advertising tips
    (litlogger, litmodels) that it prints when a Trainer is built."""
    for pattern in (
        ".*does not have many workers.*",
        ".*The number of training batches.*",
        ".*Checkpoint directory .* exists and is not empty.*",
        ".*LeafSpec.*",
        # Lightning's SLURM hint, said wherever `srun` is on PATH: a local run is not a SLURM job, and a SLURM
        # job under hydra/launcher=slurm is started by srun (submitit), so the hint never applies
        ".*The `srun` command is available on your system but is not used.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


class _NoTips(logging.Filter):
    """Drops Lightning's "💡 Tip: … try installing litlogger / litmodels" lines, and its note that the Trainer
    already has a model summary callback: ours (RichNetworkSummary) is the summary the user asked for."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg).lstrip()
        return not (
            message.startswith("💡 Tip:")
            or message.startswith("Trainer already configured with model summary callbacks")
        )
