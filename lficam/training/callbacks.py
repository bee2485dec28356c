"""Callbacks of the training application: attention overlays and a model summary of the network."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities.model_summary import ModelSummary as SummaryTable
from torch import Tensor, nn
from torchvision.utils import make_grid

from lficam.core.maps import upsample
from lficam.core.pictures import count_nonfinite, overlay, save_overlay_grid
from lficam.data.base import first_items

_IMAGE_KEY = "val/attention_overlays"


class _NetworkTable(SummaryTable):
    """Lightning's summary table of a LightningModule's ``net`` alone: its layers, parameters and FLOPs,
    without the metric containers the module holds beside it."""

    @property
    def _net(self) -> nn.Module:
        return self._model.net

    @property
    def named_modules(self) -> list[tuple[str, nn.Module]]:
        if self._max_depth == 0:
            return []
        if self._max_depth == 1:
            return list(self._net.named_children())
        return list(self._net.named_modules())[1:]

    @property
    def flop_counts(self) -> dict[str, dict[Any, int]]:
        counts = self._flop_counter.get_flop_counts()
        root = f"{type(self._model).__name__}.net"
        return {name: counts.get(f"{root}.{name}", {}) for name in self.layer_names}

    @property
    def total_parameters(self) -> int:
        return sum(p.numel() for p in self._net.parameters())

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self._net.parameters() if p.requires_grad)

    @property
    def total_training_modes(self) -> dict[str, int]:
        modes = [m.training for m in self._net.modules()]
        return {"train": modes.count(True), "eval": modes.count(False)}

    def _get_summary_data(self) -> list[tuple[str, list[str]]]:
        # no size columns (they double the width); FLOPs only where an example input went through the net
        dropped = {"In sizes", "Out sizes"} | (
            {"FLOPs"} if self._model.example_input_array is None else set()
        )
        return [(name, column) for name, column in super()._get_summary_data() if name not in dropped]


class NetworkSummary(ModelSummary):
    """Lightning's model summary of the network (the LightningModule's ``net``): one row per part of the
    network with its real parameter count (and FLOPs, from the module's ``example_input_array``)."""

    def _summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        if not isinstance(getattr(pl_module, "net", None), nn.Module):
            return super()._summary(trainer, pl_module)
        return _NetworkTable(pl_module, max_depth=self._max_depth)


class RichNetworkSummary(NetworkSummary, RichModelSummary):
    """:class:`NetworkSummary` drawn as a rich table, as ``RichModelSummary`` draws it."""


class AttentionOverlays(pl.Callback):
    """Saves the model's own attention maps over a fixed set of validation images.

    The same images (the first ``num_images`` of the validation set) every time, so pictures of
    different epochs and runs compare image by image. Written at the end of fitting, and every
    ``every_n_epochs`` validation epochs when that is positive; only on global rank 0.

    With ``log_to_loggers``, every ``log_every_n_epochs`` validation epochs the overlays also go to the
    image-capable loggers (TensorBoard ``add_image``, W&B ``log_image``) under ``val/attention_overlays``:
    one grid whose rows hold, per image, the image, the object mask overlay (when the data has masks) and
    the own-map overlay. Nothing is rendered when no such logger is attached.

    The maps and predictions are those the validation pass computed (the step's output ``maps`` and
    ``logits``), taken as the first images go by; the model runs again on these images only where the
    validation pass did not see them first at the current weights (a shuffled or DDP-sharded validation
    loader, or training steps after the last validation).
    """

    def __init__(
        self,
        dirpath: str,
        num_images: int = 16,
        every_n_epochs: int = 0,
        log_to_loggers: bool = True,
        log_every_n_epochs: int = 1,
    ) -> None:
        self.dirpath = Path(dirpath)
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.log_to_loggers = log_to_loggers
        self.log_every_n_epochs = log_every_n_epochs
        self.last_path: Path | None = None
        self._seen: list[dict[str, Tensor]] = []
        self._seen_at_step = -1

    def _probe(self, trainer: pl.Trainer) -> dict[str, torch.Tensor] | None:
        datamodule = trainer.datamodule
        dataset = getattr(datamodule, "val_set", None)
        if dataset is None or len(dataset) == 0:
            return None
        return first_items(dataset, self.num_images)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._seen = []

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or dataloader_idx != 0 or not trainer.is_global_zero:
            return
        if not isinstance(outputs, dict) or "maps" not in outputs or "index" not in batch:
            return
        room = self.num_images - sum(len(part["index"]) for part in self._seen)
        if room <= 0:
            return
        part = {k: v[:room].detach().cpu() for k, v in batch.items() if isinstance(v, Tensor)}
        part["maps"] = outputs["maps"][:room].detach().float().cpu()
        part["logits"] = outputs["logits"][:room].detach().float().cpu()
        self._seen.append(part)
        self._seen_at_step = trainer.global_step

    def probe_with_maps(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[dict[str, Tensor], Tensor, Tensor] | None:
        """(the probe batch, its own maps, its logits): from the validation pass when it saw exactly these
        images first at the current weights, else from one forward pass."""
        batch = self._probe(trainer)
        if batch is None:
            return None
        if self._seen and self._seen_at_step == trainer.global_step:
            seen = {key: torch.cat([part[key] for part in self._seen]) for key in self._seen[0]}
            if torch.equal(seen["index"], batch["index"]):
                return batch, seen["maps"], seen["logits"]
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                output = pl_module(batch["image"].to(pl_module.device))
        finally:
            pl_module.train(was_training)
        maps = upsample(output.attention, batch["image"].shape[-2:])
        return batch, maps.cpu(), output.logits.float().cpu()

    @torch.no_grad()
    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> Path | None:
        if not trainer.is_global_zero:
            return None
        probed = self.probe_with_maps(trainer, pl_module)
        if probed is None:
            return None
        batch, own, logits = probed
        probs = logits.softmax(dim=1)
        datamodule = trainer.datamodule
        names = getattr(datamodule, "class_names", None) or [str(i) for i in range(probs.shape[1])]
        titles = [
            f"{names[int(p)]} {probs[i, p]:.2f} (true {names[int(t)]})"
            for i, (p, t) in enumerate(zip(probs.argmax(1), batch["label"]))
        ]
        images = (
            datamodule.denormalize(batch["image"]) if hasattr(datamodule, "denormalize") else batch["image"]
        )
        maps = {"own map": own}
        if "mask" in batch:
            maps = {"object mask": batch["mask"].float(), **maps}
        self.last_path = save_overlay_grid(self.dirpath / f"{name}.png", images.cpu(), maps, titles)
        broken = count_nonfinite(own)
        if broken:
            warnings.warn(
                f"{broken} of {len(own)} attention maps in {self.last_path} hold NaN or infinite values (the "
                "model's activations overflowed, often a learning rate too high for the batch size or too few "
                "steps for BatchNorm's running statistics); they are drawn as zeros.",
                stacklevel=2,
            )
        return self.last_path

    @torch.no_grad()
    def log_images(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor | None:
        """Send the overlay grid (3×H×W in [0, 1], returned) to every TensorBoard and W&B logger."""
        loggers = [lg for lg in trainer.loggers if isinstance(lg, (TensorBoardLogger, WandbLogger))]
        if not loggers or not trainer.is_global_zero:
            return None
        probed = self.probe_with_maps(trainer, pl_module)
        if probed is None:
            return None
        batch, own, logits = probed
        datamodule = trainer.datamodule
        images = (
            datamodule.denormalize(batch["image"]) if hasattr(datamodule, "denormalize") else batch["image"]
        ).cpu()
        panels = [images]
        if "mask" in batch:
            panels.append(overlay(images, batch["mask"].float()))
        panels.append(overlay(images, own))
        tiles = torch.stack(panels, dim=1).flatten(0, 1)  # image-major: each image's panels side by side
        side = max(64, tiles.shape[-1])  # 16–32 px images are unreadable at their own size
        tiles = F.interpolate(tiles, size=(side, side), mode="nearest")
        grid = make_grid(tiles, nrow=len(panels) * min(4, images.shape[0]), padding=2, pad_value=1.0)
        names = getattr(datamodule, "class_names", None) or [str(i) for i in range(logits.shape[1])]
        pairs = zip(logits.argmax(1).tolist(), batch["label"].tolist())
        caption = (
            f"epoch {trainer.current_epoch}; per image: image, "
            + ("object mask, " if "mask" in batch else "")
            + "own map; predicted (true): "
            + ", ".join(f"{names[p]} ({names[t]})" for p, t in pairs)
        )
        for lg in loggers:
            if isinstance(lg, TensorBoardLogger):
                lg.experiment.add_image(_IMAGE_KEY, grid, global_step=trainer.global_step)
            else:
                lg.log_image(_IMAGE_KEY, [grid], step=trainer.global_step, caption=[caption])
        return grid

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        if self.log_to_loggers and self.log_every_n_epochs > 0 and (epoch + 1) % self.log_every_n_epochs == 0:
            self.log_images(trainer, pl_module)
        if self.every_n_epochs > 0 and (epoch + 1) % self.every_n_epochs == 0:
            self.save(trainer, pl_module, f"epoch_{epoch:03d}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer, pl_module, "final")
