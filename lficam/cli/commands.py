"""The four commands: ``train.py``/``lficam-train``, ``eval.py``/``lficam-eval``, ``python -m lficam.explain``/
``lficam-explain`` and ``python -m lficam.export``/``lficam-export``, each a Hydra app run by
:func:`lficam.cli.runtime.run` whose task body is wrapped in :func:`lficam.cli.runtime.guarded`.

The task modules are imported inside the apps, deferred for start-up time: ``--help`` and a config error
answer without importing torch and Lightning (seconds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from importlib import resources
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lficam.cli.runtime import CONFIG_PACKAGE, VERSION_BASE, flat_options_phrase, guarded, run
from lficam.core.known_warnings import quiet_known_warnings

CONFIG_PATH = f"pkg://{CONFIG_PACKAGE}"


def run_task(cfg: DictConfig) -> float | None:
    """Hydra task body of ``train.py`` and ``lficam-train``: train, print the summary and the run folder, and
    return the metric a sweep optimises. :func:`guarded` turns a user's mistake into one sentence (exit code 2),
    closes W&B, and on Ctrl-C (exit code 130) or SIGTERM (143: a batch system's stop) says which checkpoint
    resumes the run."""
    from lficam.training.task import resume_hint, train_and_report  # deferred: start-up time

    quiet_known_warnings()
    return guarded(
        lambda: train_and_report(cfg), run_dir=cfg.paths.output_dir, on_interrupt=lambda: resume_hint(cfg)
    )


def eval_task(cfg: DictConfig) -> Any:
    """Hydra task body of ``eval.py`` / ``lficam-eval``."""
    from lficam.evaluation.command import run_eval  # deferred: start-up time

    quiet_known_warnings()
    return guarded(lambda: run_eval(cfg), run_dir=cfg.paths.output_dir)


def explain_task(cfg: DictConfig) -> Any:
    """Hydra task body of ``python -m lficam.explain`` / ``lficam-explain``."""
    from lficam.explain.command import run_explain  # deferred: start-up time

    return guarded(lambda: run_explain(cfg), errors_to_log=False)


def export_task(cfg: DictConfig) -> Any:
    """Hydra task body of ``python -m lficam.export`` / ``lficam-export``."""
    from lficam.export.exporter import run_export  # deferred: start-up time

    return guarded(lambda: run_export(cfg), errors_to_log=False)


def study_task(cfg: DictConfig) -> Any:
    """Hydra task body of ``reproduce.py``: the reproduction study (resumable: rerun the same command)."""
    from lficam.study.pipeline import run_study  # deferred: start-up time

    quiet_known_warnings()
    return guarded(lambda: run_study(cfg), errors_to_log=False)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="train")
def _train_app(cfg: DictConfig) -> float | None:
    return run_task(cfg)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="eval")
def _eval_app(cfg: DictConfig) -> Any:
    return eval_task(cfg)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="explain")
def _explain_app(cfg: DictConfig) -> Any:
    return explain_task(cfg)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="export")
def _export_app(cfg: DictConfig) -> Any:
    return export_task(cfg)


def train(argv: Sequence[str] | None = None) -> int:
    """``lficam-train``: ``python train.py`` as an installed command (same config, same overrides)."""
    return run(_train_app, argv)


def evaluate(argv: Sequence[str] | None = None) -> int:
    """``lficam-eval``: ``python eval.py`` as an installed command."""
    return run(_eval_app, argv)


def explain(argv: Sequence[str] | None = None) -> int:
    """``lficam-explain``: ``python -m lficam.explain``."""
    return run(
        _explain_app,
        argv,
        flat_options_phrase(
            "explain",
            lambda: _yaml_keys("explain"),
            "ckpt_path=run/best.ckpt images=[a.png,b.png] methods=[own,gradcam]",
        ),
    )


def export(argv: Sequence[str] | None = None) -> int:
    """``lficam-export``: ``python -m lficam.export``."""
    # deferred: start-up time; importing it registers its config schema before Hydra composes
    from lficam.export.options import ExportOptions

    return run(
        _export_app,
        argv,
        flat_options_phrase(
            "export",
            lambda: [f.name for f in dataclasses.fields(ExportOptions)],
            "ckpt_path=run/last.ckpt format=onnx",
        ),
    )


def _yaml_keys(config_name: str) -> list[str]:
    """The option names of a flat primary config, in the file's order."""
    text = resources.files(CONFIG_PACKAGE).joinpath(f"{config_name}.yaml").read_text(encoding="utf-8")
    return [k for k in OmegaConf.create(text) if k not in ("defaults", "hydra", "task_name")]
