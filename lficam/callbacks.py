"""Callbacks of the training application."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from lficam.viz import save_overlay_grid


class AttentionOverlays(pl.Callback):
    """Saves the model's own attention maps over a fixed set of validation images.

    The same images (the first ``num_images`` of the validation set) every time, so pictures of
    different epochs and runs compare image by image. Written at the end of fitting, and every
    ``every_n_epochs`` validation epochs when that is positive; only on global rank 0.
    """

    def __init__(self, dirpath: str, num_images: int = 16, every_n_epochs: int = 0) -> None:
        self.dirpath = Path(dirpath)
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.last_path: Path | None = None

    def _probe(self, trainer: pl.Trainer) -> dict[str, torch.Tensor] | None:
        datamodule = trainer.datamodule
        dataset = getattr(datamodule, "val_set", None)
        if dataset is None or len(dataset) == 0:
            return None
        items = [dataset[i] for i in range(min(self.num_images, len(dataset)))]
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}

    @torch.no_grad()
    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> Path | None:
        if not trainer.is_global_zero:
            return None
        batch = self._probe(trainer)
        if batch is None:
            return None
        was_training = pl_module.training
        pl_module.eval()
        try:
            output = pl_module(batch["image"].to(pl_module.device))
        finally:
            pl_module.train(was_training)
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

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs <= 0:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.save(trainer, pl_module, f"epoch_{trainer.current_epoch:03d}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer, pl_module, "final")
