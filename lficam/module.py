"""One LightningModule for every model of the project: LFI-CAM, ABN and the plain backbone.

The model supplies its forward (a :class:`ModelOutput`) and its loss; this module adds the optimiser,
the schedule and the metrics: top-1/top-5 accuracy per stage, the best validation accuracy, and the
pointing game of the model's own map wherever the batch carries object masks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lficam.errors import NonFiniteLossError
from lficam.metrics import PointingGame
from lficam.models.output import ModelOutput


def upsample_maps(attention: Tensor, size: tuple[int, int]) -> Tensor:
    """B×h×w maps → B×H×W by bilinear interpolation, as the paper upsamples maps to the input size."""
    up = F.interpolate(attention.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False)
    return up.squeeze(1)


class LitClassifier(pl.LightningModule):
    """Trains any :class:`~lficam.models.heads.Classifier`.

    net: the model (``lficam.create_model(...)``).
    model_config: the keyword arguments of ``create_model`` that rebuild ``net`` (stored in checkpoints).
    optimizer: a partial taking the parameters (``_partial_: true`` in config).
    scheduler: a partial taking the optimiser, stepped every epoch, or None.
    num_classes: for the metrics.
    compile: compile ``net`` with ``torch.compile`` (default inductor backend) when fitting.
    channels_last: keep conv weights and input images in channels-last (NHWC) memory, which tensor cores and
        oneDNN convolutions prefer; the numbers are those of the default layout up to float rounding.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        *,
        num_classes: int,
        compile: bool = False,
        channels_last: bool = False,
        model_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # Only plain values go into checkpoints (no pickled callables), so they load with weights_only=True;
        # model_config is what lficam.create_model needs to rebuild the network.
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.num_classes = num_classes
        top_k = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
        if num_classes > 5:
            top_k["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        base = MetricCollection(top_k)
        self.train_metrics = base.clone(prefix="train/")
        self.val_metrics = base.clone(prefix="val/")
        self.test_metrics = base.clone(prefix="test/")
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_pointing = PointingGame(num_classes)
        self.test_pointing = PointingGame(num_classes)
        self.val_acc_best = MaxMetric()
        self._last_finite_step = -1

    def forward(self, x: Tensor) -> ModelOutput:
        if self.hparams.get("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def setup(self, stage: str) -> None:
        if self.hparams.compile and stage == "fit":
            # in place (nn.Module.compile): the state-dict keys stay those of the eager model, so checkpoints
            # of a compiled run load into an eager one (torch.compile(net) would prefix them with _orig_mod.)
            self.net.compile()

    def on_train_start(self) -> None:
        # The sanity-check batches must not count towards validation metrics or the best accuracy.
        self.val_loss.reset()
        self.val_metrics.reset()
        self.val_pointing.reset()
        self.val_acc_best.reset()

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        output = self(batch["image"])
        loss = self.net.loss(output, batch["label"])
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"The training loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step}; "
                "training stopped and the last good checkpoint is kept: lower the learning rate or use "
                "gradient clipping (trainer.gradient_clip_val=1.0)."
            )
        self.train_loss(loss.detach())
        self.train_metrics(output.logits.detach(), batch["label"])
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> ModelOutput:
        output = self(batch["image"])
        loss = self.net.loss(output, batch["label"])
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        mean_loss = self.val_loss if stage == "val" else self.test_loss
        mean_loss(loss)
        metrics(output.logits, batch["label"])
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=stage == "val")
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)
        if "mask" in batch:
            pointing = self.val_pointing if stage == "val" else self.test_pointing
            maps = upsample_maps(output.attention, tuple(batch["mask"].shape[-2:]))
            pointing(maps, batch["mask"], batch["label"])
            self.log(f"{stage}/attn/pointing_game", pointing, on_step=False, on_epoch=True)
        return output

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> ModelOutput:
        return self(batch["image"])

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
