"""The training task: compose → instantiate → fit → test → summary. ``train.py`` at the top calls it."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lficam.core.errors import UserError
from lficam.models import count_parameters, create_model
from lficam.training.auto_resume import cluster_plugins, resolve_ckpt_path
from lficam.training.config_checks import check_config, check_data
from lficam.training.distributed import check_devices, check_rendezvous, ranks_join_this_run
from lficam.training.finetune import resolve_normalization
from lficam.training.loggers import LogResume, instantiate_loggers
from lficam.training.model_config import model_config_of
from lficam.training.optimizers import split_optimizer_config
from lficam.training.resume import start_from_checkpoint
from lficam.training.run_folder import hold as hold_run_folder

log = logging.getLogger("lficam")


def build_module(cfg: DictConfig) -> pl.LightningModule:
    model_config = model_config_of(cfg)
    net = create_model(**model_config)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    data_config = OmegaConf.to_container(cfg.data, resolve=True)
    optimizer, backbone_lr_scale = split_optimizer_config(cfg.optimizer)
    return instantiate(
        cfg.module,
        net=net,
        optimizer=instantiate(optimizer),
        backbone_lr_scale=backbone_lr_scale,
        scheduler=scheduler,
        model_config=model_config,
        data_config=data_config,
        _recursive_=False,
        # plain dicts in the hyper-parameters: checkpoints then load with torch.load(weights_only=True)
        _convert_="all",
    )


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def _warn_small_maps(cfg: DictConfig, net: torch.nn.Module) -> None:
    size = cfg.data.get("image_size")
    backbone = getattr(net, "backbone", None)
    if size and backbone is not None:
        side = size // backbone.feature_info[-1].reduction
        if side < 4:
            log.warning(
                "%s makes %d×%d attention maps at %d px: use a larger data.image_size or "
                "model.options.stem_stride=1 for maps that can localise.",
                cfg.model.backbone,
                side,
                side,
                size,
            )


def log_hyperparameters(loggers: list[Any], hparams: dict[str, Any]) -> None:
    """Send the hyper-parameters to every logger; a W&B run that cannot start (an online run without an API
    key or without network) is the user's to fix, so it becomes one sentence."""
    for lg in loggers:
        try:
            lg.log_hyperparams(hparams)
        except Exception as error:
            if not type(error).__module__.startswith("wandb"):
                raise
            reason = str(error).splitlines()[0].split(". ")[0].rstrip(".")  # its first sentence
            raise UserError(
                f"W&B could not start a run ({reason}); log offline with WANDB_MODE=offline (what logger=wandb "
                "does by default) or run `wandb login`."
            ) from error


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test one run; returns every metric Lightning collected, as floats."""
    check_devices(cfg)
    check_rendezvous(cfg)  # a later node of a multi-node run: the first node's endpoint answers
    with ranks_join_this_run() as trainers:
        return _fit_and_test(cfg, trainers)


def _fit_and_test(cfg: DictConfig, trainers: list[pl.Trainer]) -> dict[str, float]:
    check_config(cfg)  # values no training can use: one sentence before anything is built
    with hold_run_folder(cfg.paths.output_dir):  # one run per folder
        return _fit_and_test_in_folder(cfg, trainers)


def _fit_and_test_in_folder(cfg: DictConfig, trainers: list[pl.Trainer]) -> dict[str, float]:
    # ckpt_path=auto, or a SLURM/torchrun restart into this folder: its last.ckpt, where there is one
    resolve_ckpt_path(cfg, last_checkpoint(cfg))
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    # the pretrained weights' mean/std for the data, where model.normalization asks (lficam/training/finetune.py)
    resolve_normalization(cfg)
    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    if cfg.data.get("num_classes") is None:  # a data set that counts its classes (image_folder)
        cfg.data.num_classes = int(datamodule.num_classes)
    size = getattr(datamodule, "input_size", None)
    if "image_size" in cfg.data and cfg.data.image_size is None and size:  # data=streaming reads it
        cfg.data.image_size = int(size)
    module = build_module(cfg)
    _warn_small_maps(cfg, module.net)
    # a foreign, unsafe or other-architecture checkpoint is one sentence; a resume says what it keeps
    log_resume = start_from_checkpoint(cfg, module, output_dir)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"), log_resume)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, **cluster_plugins(cfg.trainer)
    )
    trainers.append(trainer)
    check_data(datamodule, cfg, processes=trainer.num_nodes * trainer.num_devices)
    log_hyperparameters(
        loggers,
        {
            "config": OmegaConf.to_container(cfg, resolve=True),
            "parameters/total": count_parameters(module.net),
            "parameters/backbone": count_parameters(module.net.backbone),
        },
    )

    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        metrics.update(_floats(trainer.callback_metrics))
        if "val/acc_best" not in metrics and _resumed_and_stepped_nothing(trainer, log_resume):
            metrics.update(_best_of_a_finished_checkpoint(module, trainer, cfg.ckpt_path))
    if cfg.get("test", True):
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None and cfg.get("train", True) else None
        if cfg.get("train", True) and not best:
            log.warning("No best checkpoint was saved; testing the current weights.")
        trainer.test(
            module,
            datamodule=datamodule,
            ckpt_path=best or (None if cfg.get("train", True) else cfg.get("ckpt_path")),
            weights_only=True,
        )
        metrics.update(_floats(trainer.callback_metrics))
    if trainer.is_global_zero:
        summary = {"run_dir": str(output_dir), "metrics": metrics}
        if trainer.checkpoint_callback is not None:
            summary["best_checkpoint"] = folder_relative(
                trainer.checkpoint_callback.best_model_path, output_dir
            )
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return metrics


def _resumed_and_stepped_nothing(trainer: pl.Trainer, log_resume: LogResume | None) -> bool:
    """Whether this fit resumed a checkpoint and trained no batch (its training had ended): Lightning's
    logging-step counter is still the checkpoint's."""
    return log_resume is not None and trainer.fit_loop.epoch_loop._batches_that_stepped == log_resume.step


def _best_of_a_finished_checkpoint(module: pl.LightningModule, trainer: pl.Trainer, ckpt_path: str) -> dict:
    """A run resumed from a checkpoint whose training had ended (a job requeued while it tested, or the same
    ``ckpt_path`` given again) trains and validates nothing; its best validation accuracy is the checkpoint's,
    which the module restored with its state."""
    best = float(module.val_acc_best.max_value)
    if not math.isfinite(best):  # no validation had run before the checkpoint
        return {}
    log.info(
        f"Nothing was left to train: {ckpt_path} had trained {trainer.current_epoch} of "
        f"trainer.max_epochs={trainer.max_epochs} epochs (raise trainer.max_epochs to train on); its best "
        f"val/acc is {best:.4f}."
    )
    return {"val/acc_best": best}


def folder_relative(path: str, folder: Path) -> str:
    """``path`` relative to the run folder where it lies inside it (``checkpoints/epoch_003.ckpt``), so that a
    copied or moved run folder still names its own files; else as it is (a checkpoint dirpath elsewhere, or ""
    when none was saved)."""
    if not path:
        return path
    try:
        return Path(path).resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return path


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if (torch.is_tensor(v) and v.numel() == 1) or isinstance(v, float)
    }


def print_summary(metrics: dict[str, float], run_dir: str | Path) -> None:
    """A table of the numbers a user looks at first, and where the run was written."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lficam run summary")
    table.add_column("metric")
    table.add_column("value", justify="right")
    wanted = [
        "val/acc_best",
        "val/acc",
        "test/acc",
        "test/acc_top5",
        "test/attn/pointing_game",
        "val/attn/pointing_game",
        "test/loss",
    ]
    for key in wanted + sorted(k for k in metrics if k.startswith("test/attn/") and k not in wanted):
        if key in metrics and not math.isnan(metrics[key]):
            table.add_row(key, f"{metrics[key]:.4f}")
    console = Console()
    console.print(table)
    # not wrapped at the terminal's width: a path to copy
    console.print(f"Run folder: {run_dir}", soft_wrap=True, highlight=False)


def train_and_report(cfg: DictConfig) -> float | None:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    metrics = train(cfg)
    if rank_zero_only.rank == 0:  # one summary, not one per DDP rank
        print_summary(metrics, cfg.paths.output_dir)
    name = cfg.get("optimized_metric")
    if name:
        if name not in metrics:
            raise UserError(
                f"optimized_metric {name!r} was not logged; set optimized_metric to one of {sorted(metrics)}."
            )
        return metrics[name]
    return None


def last_checkpoint(cfg: DictConfig) -> Path:
    """Where the run writes the checkpoint that resumes it: ``callbacks.last_checkpoint``'s file, else
    ``<run>/checkpoints/last.ckpt``."""
    node = (cfg.get("callbacks") or {}).get("last_checkpoint") or {}
    folder = node.get("dirpath") or Path(cfg.paths.output_dir, "checkpoints")
    return Path(folder, f"{node.get('filename') or 'last'}.ckpt")


def resume_hint(cfg: DictConfig) -> str:
    """What Ctrl-C and SIGTERM print: the ``ckpt_path=`` that resumes the run, or that there is none yet.
    ``last.ckpt`` is the state at the end of the last complete epoch (the loops stop at the next batch, and the
    epoch in progress is not saved), or with ``callbacks.last_checkpoint.every_n_train_steps`` (or
    ``train_time_interval``) at the last such step, from which a resume continues the epoch at the next batch
    (tests/test_resume_mid_epoch.py): the message says which."""
    last = last_checkpoint(cfg)
    node = (cfg.get("callbacks") or {}).get("last_checkpoint") or {}
    steps, interval = int(node.get("every_n_train_steps") or 0), node.get("train_time_interval")
    epochs = int(node.get("every_n_epochs") or 1)
    folder = cfg.paths.output_dir
    if steps > 0 or interval:
        every = f"every {steps} training steps" if steps > 0 else f"every {interval} of training"
        if last.is_file():
            return (
                f"Interrupted; resume from the last checkpoint (written {every}; the run continues at the batch "
                f"after it) with the same command and ckpt_path={last} (run folder {folder})."
            )
        return (
            f"Interrupted before the first checkpoint ({every}), so none was written ({last} does not exist): "
            f"there is nothing to resume; start the run again (run folder {folder})."
        )
    if last.is_file():
        since = "the last complete epoch" if epochs == 1 else f"the last epoch saved (every {epochs} epochs)"
        return f"Interrupted; resume from {since} with the same command and ckpt_path={last} (run folder {folder})."
    return (
        f"Interrupted before the first epoch ended, so no checkpoint was written ({last} does not exist): "
        f"there is nothing to resume; start the run again (run folder {folder})."
    )
