"""Callbacks of the training application."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor
from torchvision.utils import make_grid

from lficam.data.base import first_items
from lficam.models.output import ModelOutput
from lficam.viz import overlay, save_overlay_grid

_IMAGE_KEY = "val/attention_overlays"


class AttentionOverlays(pl.Callback):
    """Saves the model's own attention maps over a fixed set of validation images.

    The same images (the first ``num_images`` of the validation set) every time, so pictures of
    different epochs and runs compare image by image. Written at the end of fitting, and every
    ``every_n_epochs`` validation epochs when that is positive; only on global rank 0.

    With ``log_to_loggers``, every ``log_every_n_epochs`` validation epochs the overlays also go to the
    image-capable loggers (TensorBoard ``add_image``, W&B ``log_image``) under ``val/attention_overlays``:
    one grid whose rows hold, per image, the image, the object mask overlay (when the data has masks) and
    the own-map overlay. Nothing is rendered when no such logger is attached.
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

    def _probe(self, trainer: pl.Trainer) -> dict[str, torch.Tensor] | None:
        datamodule = trainer.datamodule
        dataset = getattr(datamodule, "val_set", None)
        if dataset is None or len(dataset) == 0:
            return None
        return first_items(dataset, self.num_images)

    @staticmethod
    def _predict(pl_module: pl.LightningModule, images: Tensor) -> ModelOutput:
        was_training = pl_module.training
        pl_module.eval()
        try:
            return pl_module(images.to(pl_module.device))
        finally:
            pl_module.train(was_training)

    @torch.no_grad()
    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> Path | None:
        if not trainer.is_global_zero:
            return None
        batch = self._probe(trainer)
        if batch is None:
            return None
        output = self._predict(pl_module, batch["image"])
        probs = output.logits.float().softmax(dim=1).cpu()
        datamodule = trainer.datamodule
        names = getattr(datamodule, "class_names", None) or [str(i) for i in range(probs.shape[1])]
        titles = [
            f"{names[int(p)]} {probs[i, p]:.2f} (true {names[int(t)]})"
            for i, (p, t) in enumerate(zip(probs.argmax(1), batch["label"]))
        ]
        images = (
            datamodule.denormalize(batch["image"]) if hasattr(datamodule, "denormalize") else batch["image"]
        )
        maps = {"own map": output.attention.float().cpu()}
        if "mask" in batch:
            maps = {"object mask": batch["mask"].float(), **maps}
        self.last_path = save_overlay_grid(self.dirpath / f"{name}.png", images.cpu(), maps, titles)
        return self.last_path

    @torch.no_grad()
    def log_images(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor | None:
        """Send the overlay grid (3×H×W in [0, 1], returned) to every TensorBoard and W&B logger."""
        loggers = [lg for lg in trainer.loggers if isinstance(lg, (TensorBoardLogger, WandbLogger))]
        if not loggers or not trainer.is_global_zero:
            return None
        batch = self._probe(trainer)
        if batch is None:
            return None
        output = self._predict(pl_module, batch["image"])
        datamodule = trainer.datamodule
        images = (
            datamodule.denormalize(batch["image"]) if hasattr(datamodule, "denormalize") else batch["image"]
        ).cpu()
        panels = [images]
        if "mask" in batch:
            panels.append(overlay(images, batch["mask"].float()))
        panels.append(overlay(images, output.attention.float().cpu()))
        tiles = torch.stack(panels, dim=1).flatten(0, 1)  # image-major: each image's panels side by side
        side = max(64, tiles.shape[-1])  # 16–32 px images are unreadable at their own size
        tiles = F.interpolate(tiles, size=(side, side), mode="nearest")
        grid = make_grid(tiles, nrow=len(panels) * min(4, images.shape[0]), padding=2, pad_value=1.0)
        names = getattr(datamodule, "class_names", None) or [str(i) for i in range(output.logits.shape[1])]
        pairs = zip(output.logits.argmax(1).cpu().tolist(), batch["label"].tolist())
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
