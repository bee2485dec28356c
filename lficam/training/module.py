"""One LightningModule for every model of the project: LFI-CAM, ABN and the plain backbone.

The model supplies its forward (a :class:`ModelOutput`) and its loss; this module adds the optimiser, the
schedule, the loss and top-1/top-5 accuracy of each stage and the best validation accuracy. Each evaluation
step upsamples the own map to the image size once and hands it to the attention diagnostics
(:class:`~lficam.training.diagnostics.AttentionDiagnostics`: localisation, stability, faithfulness) and, as the
step's output, to callbacks such as the overlays.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lficam.core.errors import NonFiniteLossError, UserError
from lficam.core.maps import upsample
from lficam.models.output import ModelOutput
from lficam.training.diagnostics import AttentionDiagnostics
from lficam.training.optimizers import build_optimizer

STAGES = ("train", "val", "test")


def _plain(value: Any) -> Any:
    """OmegaConf containers → dicts and lists, which checkpoints can hold without pickled classes."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


class StageMetrics(nn.Module):
    """One stage's mean loss and accuracy (top-1, and top-5 with more than five classes), logged as
    ``{stage}/loss``, ``{stage}/acc`` and ``{stage}/acc_top5``."""

    def __init__(self, stage: str, num_classes: int) -> None:
        super().__init__()
        accuracy = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
        if num_classes > 5:
            accuracy["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        # compute_groups=False: each metric keeps its own state (two small metrics gain nothing from sharing)
        self.accuracy = MetricCollection(accuracy, prefix=f"{stage}/", compute_groups=False)
        self.loss = MeanMetric()

    def reset(self) -> None:
        self.accuracy.reset()
        self.loss.reset()


class LitClassifier(pl.LightningModule):
    """Trains any :class:`~lficam.models.heads.Classifier`.

    net: the model (``lficam.create_model(...)``).
    optimizer: a partial taking the parameters (``_partial_: true`` in config).
    scheduler: a partial taking the optimiser, stepped every epoch, or None.
    num_classes: for the metrics.
    compile: compile ``net`` with ``torch.compile`` (default inductor backend) when fitting.
    channels_last: keep conv weights and input images in channels-last (NHWC) memory, which tensor cores and
        oneDNN convolutions prefer; the numbers are those of the default layout up to float rounding.
    model_config: the keyword arguments of ``create_model`` that rebuild ``net`` (stored in checkpoints).
    data_config: the data module's resolved config (image size, normalisation), so that evaluation,
        explanation and export can prepare inputs as training did (stored in checkpoints).
    diagnostics: the options of :class:`~lficam.training.diagnostics.AttentionDiagnostics` (``attention_metrics``,
        ``stability_probe_size``, ``input_stability``, ``faithfulness_every_n_epochs``, ...), the keys of
        conf/train.yaml's ``module:`` section.
    backbone_lr_scale: the backbone learns at lr · scale, head and FIN at lr (:mod:`lficam.training.finetune`).
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
        data_config: dict[str, Any] | None = None,
        backbone_lr_scale: float = 1.0,
        **diagnostics: Any,
    ) -> None:
        super().__init__()
        model_config, data_config = _plain(model_config), _plain(data_config)
        # Only plain values go into checkpoints (no pickled callables), so they load with weights_only=True;
        # model_config is what lficam.create_model needs to rebuild the network, data_config how inputs looked.
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.train_metrics = StageMetrics("train", num_classes)
        self.val_metrics = StageMetrics("val", num_classes)
        self.test_metrics = StageMetrics("test", num_classes)
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints, so a resumed run keeps its best accuracy
        self.diagnostics = _diagnostics(num_classes, diagnostics)
        self.hparams.update(self.diagnostics.options)  # the resolved options, as plain values
        size = (data_config or {}).get("image_size")
        if isinstance(size, int) and not compile:
            # one image through the network when the model summary is drawn, for its FLOPs column
            self.example_input_array = torch.zeros(1, 3, size, size)

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
        self.val_metrics.reset()
        self.diagnostics.reset("val")

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def _log_stage(self, stage: str, output: ModelOutput, loss: Tensor, labels: Tensor) -> None:
        """This stage's loss and accuracy: per epoch, and the training loss also per step."""
        metrics: StageMetrics = getattr(self, f"{stage}_metrics")
        metrics.loss(loss.detach())
        metrics.accuracy(output.logits.detach(), labels)
        self.log(
            f"{stage}/loss", metrics.loss, on_step=stage == "train", on_epoch=True, prog_bar=stage != "test"
        )
        self.log_dict(metrics.accuracy, on_step=False, on_epoch=True, prog_bar=True)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        output = self(batch["image"])
        loss = self.net.loss(output, batch["label"])
        if not torch.isfinite(loss):
            raise NonFiniteLossError.during_training(self.trainer, loss.item())
        self._log_stage("train", output, loss, batch["label"])
        return loss

    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        """One evaluation step; returns the logits and the own maps at the images' size (B×H×W, float32)."""
        output = self(batch["image"])
        self._log_stage(stage, output, self.net.loss(output, batch["label"]), batch["label"])
        maps = upsample(output.attention, batch["image"].shape[-2:])
        localisation = self.diagnostics.update(
            stage, batch, maps, self, epoch=self.current_epoch, sanity_checking=self.trainer.sanity_checking
        )
        if localisation is not None:
            self.log_dict(localisation, on_step=False, on_epoch=True)
        return {"logits": output.logits, "maps": maps}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_metrics.accuracy["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)
        self.log_dict(self.diagnostics.epoch_end())

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> ModelOutput:
        return self(batch["image"])

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.optimizer_factory, self.net, self.hparams.backbone_lr_scale)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def _diagnostics(num_classes: int, options: dict[str, Any]) -> AttentionDiagnostics:
    known = [p for p in inspect.signature(AttentionDiagnostics).parameters if p != "num_classes"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UserError(
            f"Unknown module option {unknown[0]!r}: choose among compile, channels_last, {', '.join(known)}."
        )
    return AttentionDiagnostics(num_classes, **options)
