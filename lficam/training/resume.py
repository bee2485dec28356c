"""Two ways to start from a checkpoint, and one line that says what a resume keeps.

``ckpt_path=<ckpt>`` resumes the checkpoint's run: Lightning restores its weights, the optimiser state (the
learning rate included), the scheduler state, the epoch and step counters, the callbacks' state (the best
checkpoint and score) and the best val/acc, so what this run's config says about the optimiser and schedule is
not used. :func:`resume_banner` names every such setting that differs, comparing the checkpoint's optimiser
param group and scheduler state with those the current config builds.

``init_from=<ckpt or .safetensors>`` starts a new run from the weights only (:func:`init_weights`): the
optimiser, the schedule and the epoch count are this run's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from lficam.checkpoints.loading import (
    check_compatible,
    check_weights_fit,
    model_config_of_checkpoint,
    network_state_dict,
    read_checkpoint,
    read_weights,
)
from lficam.core.errors import UserError
from lficam.training.loggers import LogResume, resume_step, run_folder_of_checkpoint
from lficam.training.optimizers import split_optimizer_config

log = logging.getLogger("lficam")

# scheduler state that is progress, not a setting (base_lrs is the optimiser's initial_lr)
_SCHEDULER_PROGRESS = frozenset({"last_epoch", "base_lrs"})


def _fresh_state(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The optimiser's param group and the scheduler's state as this config builds them, on a stand-in."""
    torch_optimizer, _ = split_optimizer_config(cfg.optimizer)  # backbone_lr_scale is ours, not SGD's
    optimizer = instantiate(torch_optimizer)(params=[nn.Parameter(torch.zeros(1))])
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer) if cfg.get("scheduler") else None
    return optimizer.state_dict()["param_groups"][0], (scheduler.state_dict() if scheduler else None)


def _setting_lr(group: dict[str, Any]) -> Any:
    """The configured learning rate of a param group: a scheduler keeps it as initial_lr and changes lr."""
    return group.get("initial_lr", group.get("lr"))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def ignored_overrides(checkpoint: dict[str, Any], cfg: DictConfig) -> list[tuple[str, Any, Any]]:
    """(config key, value now, value in the checkpoint) for each optimiser or scheduler setting of ``cfg``
    that a resume from ``checkpoint`` does not use."""
    group, scheduler = _fresh_state(cfg)
    differ: list[tuple[str, Any, Any]] = []
    saved_groups = (checkpoint.get("optimizer_states") or [{}])[0].get("param_groups") or []
    if saved_groups:
        saved = saved_groups[0]
        settings = set(group) - {"params", "lr", "initial_lr"}
        if settings != set(saved) - {"params", "lr", "initial_lr"}:
            differ.append(("optimizer", cfg.optimizer.get("_target_"), "another optimiser"))
        else:
            if _setting_lr(group) != _setting_lr(saved):
                differ.append(("optimizer.lr", _setting_lr(group), _setting_lr(saved)))
            differ += [
                (f"optimizer.{key}", group[key], saved[key])
                for key in sorted(settings)
                if _plain(group[key]) != _plain(saved[key])
            ]
    saved_scheduler = (checkpoint.get("lr_schedulers") or [None])[0]
    if (scheduler is None) != (saved_scheduler is None):
        now = cfg.scheduler.get("_target_") if scheduler is not None else None
        differ.append(("scheduler", now, "none" if saved_scheduler is None else "a scheduler"))
    elif scheduler is not None:
        settings = {k for k in scheduler if not k.startswith("_")} - _SCHEDULER_PROGRESS
        if settings != {k for k in saved_scheduler if not k.startswith("_")} - _SCHEDULER_PROGRESS:
            differ.append(("scheduler", cfg.scheduler.get("_target_"), "another scheduler"))
        else:
            differ += [
                (f"scheduler.{key}", scheduler[key], saved_scheduler[key])
                for key in sorted(settings)
                if _plain(scheduler[key]) != _plain(saved_scheduler[key])
            ]
    return differ


def _best_score(checkpoint: dict[str, Any]) -> str:
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor") and state.get("best_model_score") is not None:
            return f" ({state['monitor']} {float(state['best_model_score']):.4f})"
    return ""


def resume_banner(checkpoint: dict[str, Any], cfg: DictConfig, path: str | Path) -> tuple[str, bool]:
    """The one line a resumed run starts with, and whether it names ignored settings (then it is a warning)."""
    groups = (checkpoint.get("optimizer_states") or [{}])[0].get("param_groups") or [{}]
    lr = groups[0].get("lr")
    line = (
        f"Resuming {str(path)!r} (saved in epoch {checkpoint.get('epoch')}, step {resume_step(checkpoint)}): "
        f"the weights, the optimiser state (learning rate {float(lr):g} now), the scheduler state, the epoch "
        f"and step counters and the best checkpoint{_best_score(checkpoint)} come from it"
        if lr is not None
        else f"Resuming {str(path)!r}: the weights, the optimiser and scheduler states, the epoch and step "
        f"counters and the best checkpoint{_best_score(checkpoint)} come from it"
    )
    ignored = ignored_overrides(checkpoint, cfg)
    if not ignored:
        return line + "; no optimiser or scheduler setting of this run differs from it.", False
    listed = ", ".join(f"{key}={now!r} (checkpoint: {then!r})" for key, now, then in ignored)
    return (
        f"{line}, so these settings are ignored: {listed}; init_from={path} instead of ckpt_path starts a new "
        "run from its weights with them.",
        True,
    )


def init_weights(net: nn.Module, model_config: dict[str, Any], path: str | Path) -> None:
    """Load the weights of a checkpoint or safetensors export into ``net`` (built from ``model_config``),
    refusing, with the sentence a foreign checkpoint gets, one of another architecture."""
    state, config, _ = read_weights(path)
    check_compatible(config, model_config, path, option="init_from")
    check_weights_fit(state, net.state_dict(), config, path)
    net.load_state_dict(state, strict=True)


def start_from_checkpoint(cfg: DictConfig, module: Any, run_dir: str | Path) -> LogResume | None:
    """What ``ckpt_path`` and ``init_from`` ask of a training run, before it starts: the checkpoint checked
    against the configured model (one sentence for a foreign one), the resume line, ``init_from``'s weights in
    ``module.net``. Returns where the resumed run's logs continue from (None when not resuming a fit)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    ckpt_path, init_from = cfg.get("ckpt_path"), cfg.get("init_from")
    if ckpt_path and init_from:
        raise UserError(
            f"ckpt_path={ckpt_path} resumes that run (its optimiser, schedule and epoch) and "
            f"init_from={init_from} starts a new run from a checkpoint's weights; give only one of them."
        )
    model_config = module.hparams.model_config
    if init_from:
        init_weights(module.net, model_config, init_from)
        return None
    if not ckpt_path:
        return None
    checkpoint = read_checkpoint(ckpt_path)
    config = model_config_of_checkpoint(checkpoint, ckpt_path)
    check_compatible(config, model_config, ckpt_path)
    check_weights_fit(
        network_state_dict(checkpoint["state_dict"]), module.net.state_dict(), config, ckpt_path
    )
    if not cfg.get("train", True):
        return None
    if rank_zero_only.rank == 0:
        line, ignores = resume_banner(checkpoint, cfg, ckpt_path)
        (log.warning if ignores else log.info)(line)
    return LogResume(run_folder_of_checkpoint(ckpt_path), Path(run_dir), resume_step(checkpoint))
