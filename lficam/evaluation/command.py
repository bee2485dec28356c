"""``eval.py``'s task: one checkpoint's accuracy and map quality, the retrieval protocol, or the cross-run
stability of a sweep. A user's mistake is a :class:`~lficam.core.errors.UserError`, which the command line turns
into one sentence and exit code 2 (in ``eval.py -m``, a failed job and the sweep goes on)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from lficam.core.errors import UserError
from lficam.evaluation.classification import evaluate_checkpoint, evaluate_stability
from lficam.evaluation.protocol import check_options, check_stability_options
from lficam.evaluation.retrieval import check_task, evaluate_retrieval


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """Hydra task body of ``eval.py``: the cross-run stability (``stability.runs``), the retrieval protocol
    (``eval.task=retrieval``) or one checkpoint's classification and map quality (``ckpt_path``)."""
    if cfg.get("stability") and cfg.stability.get("runs"):
        check_stability_options(cfg.stability)
        return evaluate_stability(cfg)
    if not cfg.get("ckpt_path"):
        raise UserError(
            "Nothing to evaluate: pass ckpt_path=<run>/checkpoints/<file>.ckpt or stability.runs=<sweep folder>."
        )
    check_options(cfg)
    if cfg.eval.get("task", "classification") != "classification":
        check_task(str(cfg.eval.task))
        return evaluate_retrieval(cfg)
    return evaluate_checkpoint(cfg)
