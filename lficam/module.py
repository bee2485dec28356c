"""One LightningModule for every model of the project: LFI-CAM, ABN and the plain backbone.

The model supplies its forward (a :class:`ModelOutput`) and its loss; this module adds the optimiser,
the schedule and the metrics: top-1/top-5 accuracy per stage, the best validation accuracy, and the
pointing game of the model's own map wherever the batch carries object masks.

Attention metrics of the model's own map (``lficam.metrics``), each switchable by a constructor option:
- where batches carry ``mask``: ``{stage}/attn/energy_pointing_game`` and ``{stage}/attn/mask_iou``;
- epoch-to-epoch stability of a fixed probe set (the first ``stability_probe_size`` validation images of
  this rank, their maps taken from the validation pass) against the previous validation epoch:
  ``val/attn/stability_epoch_iou`` / ``_spearman`` (from the second validation epoch on; a resumed run, or a
  shuffled validation loader whose first images change, starts comparing again one epoch later);
- input-change stability on the first ``input_stability_images`` validation images of every epoch:
  ``val/attn/stability_{kind}_{iou,spearman,avg_sensitivity,max_sensitivity}``;
- the costly faithfulness metrics (deletion, insertion, Average Drop, Increase in Confidence, ROAD) on the
  first ``faithfulness_images`` validation images every ``faithfulness_every_n_epochs`` epochs (0: never):
  ``val/attn/deletion_auc``, ``insertion_auc``, ``average_drop``, ``increase_in_confidence``,
  ``road_morf``, ``road_lerf``, ``road_combined``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lficam.errors import NonFiniteLossError, UnknownNameError
from lficam.finetune import build_optimizer
from lficam.metrics import (
    AverageDrop,
    DeletionAUC,
    EnergyPointingGame,
    EpochStability,
    IncreaseInConfidence,
    InputStability,
    InsertionAUC,
    MaskIoU,
    PointingGame,
    Road,
    attention_map_fn,
)
from lficam.metrics.stability import PERTURBATIONS
from lficam.models.output import ModelOutput

FAITHFULNESS_METRICS = ("deletion", "insertion", "average_drop", "increase_in_confidence", "road")
FAITHFULNESS_LOG_NAMES = {
    "deletion": "deletion_auc",
    "insertion": "insertion_auc",
    "average_drop": "average_drop",
    "increase_in_confidence": "increase_in_confidence",
}


def _names(value: Sequence[str] | str | None) -> list[str]:
    """A list of names from a list (or config list) or a comma-separated string; None or "" gives []."""
    if not value:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def upsample_maps(attention: Tensor, size: tuple[int, int]) -> Tensor:
    """B×h×w maps → B×H×W by bilinear interpolation, as the paper upsamples maps to the input size."""
    up = F.interpolate(attention.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False)
    return up.squeeze(1)


def _plain(value: Any) -> Any:
    """OmegaConf containers → dicts and lists, which checkpoints can hold without pickled classes."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


class LitClassifier(pl.LightningModule):
    """Trains any :class:`~lficam.models.heads.Classifier`.

    net: the model (``lficam.create_model(...)``).
    model_config: the keyword arguments of ``create_model`` that rebuild ``net`` (stored in checkpoints).
    data_config: the data module's resolved config (image size, normalisation), so that evaluation,
        explanation and export can prepare inputs as training did (stored in checkpoints).
    optimizer: a partial taking the parameters (``_partial_: true`` in config).
    scheduler: a partial taking the optimiser, stepped every epoch, or None.
    num_classes: for the metrics.
    attention_metrics: log the energy pointing game and the mask IoU (at ``mask_iou_threshold`` of the
        map's min-max range) wherever batches carry masks.
    stability_probe_size: validation images in the epoch-stability probe set (0: off).
    input_stability: perturbation kinds among noise, shift, flip (empty: off), on the first
        ``input_stability_images`` validation images of each epoch, with ``input_stability_noise`` (σ in
        normalised units), ``input_stability_samples`` noise draws and ``input_stability_shift`` pixels.
    faithfulness_every_n_epochs: run ``faithfulness_metrics`` (deletion, insertion, average_drop,
        increase_in_confidence, road) on the first ``faithfulness_images`` validation images of every n-th
        epoch (0: never), deletion/insertion with ``faithfulness_pixels_per_step`` (None: about 224 steps),
        perturbed images through the model ``faithfulness_batch_size`` at a time.
    compile: compile ``net`` with ``torch.compile`` (default inductor backend) when fitting.
    channels_last: keep conv weights and input images in channels-last (NHWC) memory, which tensor cores and
        oneDNN convolutions prefer; the numbers are those of the default layout up to float rounding.
    backbone_lr_scale: the backbone learns at lr · scale, head and FIN at lr (:mod:`lficam.finetune`).
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
        attention_metrics: bool = True,
        mask_iou_threshold: float = 0.5,
        stability_probe_size: int = 64,
        input_stability: Sequence[str] | str = ("noise",),
        input_stability_images: int = 64,
        input_stability_noise: float = 0.1,
        input_stability_samples: int = 1,
        input_stability_shift: int = 2,
        faithfulness_every_n_epochs: int = 0,
        faithfulness_images: int = 32,
        faithfulness_metrics: Sequence[str] | str = FAITHFULNESS_METRICS,
        faithfulness_pixels_per_step: int | None = None,
        faithfulness_batch_size: int = 256,
        backbone_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        model_config, data_config = _plain(model_config), _plain(data_config)
        # Only plain values go into checkpoints (no pickled callables), so they load with weights_only=True;
        # model_config is what lficam.create_model needs to rebuild the network, data_config how inputs looked.
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
        self.val_acc_best.persistent(True)  # in checkpoints, so a resumed run keeps its best accuracy
        self._last_finite_step = -1
        self._init_attention_metrics()

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
        self.val_energy.reset()
        self.val_mask_iou.reset()

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
            if self.hparams.attention_metrics:
                energy = self.val_energy if stage == "val" else self.test_energy
                mask_iou = self.val_mask_iou if stage == "val" else self.test_mask_iou
                energy.update(maps, batch["mask"])
                mask_iou.update(maps, batch["mask"])
                self.log(f"{stage}/attn/energy_pointing_game", energy, on_step=False, on_epoch=True)
                self.log(f"{stage}/attn/mask_iou", mask_iou, on_step=False, on_epoch=True)
        if stage == "val" and not self.trainer.sanity_checking:
            self._update_attention_extras(batch, output)
        return output

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)
        self._log_attention_extras()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> ModelOutput:
        return self(batch["image"])

    # Attention metrics beyond the pointing game (see the module docstring).

    def _init_attention_metrics(self) -> None:
        hp = self.hparams
        kinds = _names(hp.input_stability)
        chosen = _names(hp.faithfulness_metrics)
        for name, allowed in [
            *((k, PERTURBATIONS) for k in kinds),
            *((m, FAITHFULNESS_METRICS) for m in chosen),
        ]:
            if name not in allowed:
                raise UnknownNameError("attention metric", name, allowed)
        # Plain lists in the checkpoint (loadable with weights_only=True), whatever config type came in.
        hp.input_stability, hp.faithfulness_metrics = kinds, chosen
        self.val_energy, self.test_energy = EnergyPointingGame(), EnergyPointingGame()
        self.val_mask_iou, self.test_mask_iou = MaskIoU(hp.mask_iou_threshold), MaskIoU(hp.mask_iou_threshold)
        self.epoch_stability = EpochStability()
        self.input_stability_metrics = nn.ModuleDict(
            {
                kind: InputStability(
                    kind,
                    noise_std=hp.input_stability_noise,
                    samples=hp.input_stability_samples,
                    shift=hp.input_stability_shift,
                )
                for kind in kinds
            }
        )
        batch = {"batch_size": hp.faithfulness_batch_size}
        steps = {"pixels_per_step": hp.faithfulness_pixels_per_step, **batch}
        builders = {
            "deletion": lambda: DeletionAUC(**steps),
            "insertion": lambda: InsertionAUC(**steps),
            "average_drop": lambda: AverageDrop(**batch),
            "increase_in_confidence": lambda: IncreaseInConfidence(**batch),
            "road": lambda: Road(**batch),
        }
        self.faithfulness_metrics = nn.ModuleDict({name: builders[name]() for name in chosen})
        # The probe set is the first stability_probe_size validation images: their maps come from the
        # validation pass itself (no extra forward pass). Plain attributes, kept out of checkpoints.
        self._probe_maps: list[Tensor] = []
        self._probe_ids: list[Tensor] = []
        self._previous_probe_ids: Tensor | None = None
        self._input_stability_seen = 0
        self._faithfulness_seen = 0

    def _faithfulness_epoch(self) -> bool:
        every = self.hparams.faithfulness_every_n_epochs
        return bool(every) and len(self.faithfulness_metrics) > 0 and (self.current_epoch + 1) % every == 0

    def _update_attention_extras(self, batch: dict[str, Tensor], output: ModelOutput) -> None:
        hp = self.hparams
        images = batch["image"]
        size = tuple(images.shape[-2:])
        room = hp.stability_probe_size - sum(m.shape[0] for m in self._probe_maps)
        if room > 0:
            self._probe_maps.append(upsample_maps(output.attention[:room].detach(), size))
            ids = batch.get("index", torch.arange(images.shape[0], device=images.device))
            self._probe_ids.append(ids[:room].detach())
        room = hp.input_stability_images - self._input_stability_seen
        if len(self.input_stability_metrics) and room > 0:
            subset = images[:room]
            clean_maps = upsample_maps(output.attention[:room].detach(), size)
            for metric in self.input_stability_metrics.values():
                metric.update(attention_map_fn(self.net), subset, base_maps=clean_maps)
            self._input_stability_seen += subset.shape[0]
        room = hp.faithfulness_images - self._faithfulness_seen
        if self._faithfulness_epoch() and room > 0:
            subset = images[:room]
            maps = upsample_maps(output.attention[:room], tuple(images.shape[-2:]))
            for metric in self.faithfulness_metrics.values():
                metric.update(self.net, subset, maps)  # the class predicted on the clean image
            self._faithfulness_seen += subset.shape[0]

    def _log_attention_extras(self) -> None:
        if self._probe_maps:
            maps, ids = torch.cat(self._probe_maps), torch.cat(self._probe_ids)
            self._probe_maps, self._probe_ids = [], []
            if self._previous_probe_ids is not None and not torch.equal(ids, self._previous_probe_ids):
                # A shuffled validation loader: these are other images than last epoch's; start again.
                self.epoch_stability.previous = None
            self._previous_probe_ids = ids
            self.epoch_stability.reset()  # the sums of this epoch only; the previous maps are kept
            had_previous = self.epoch_stability.has_previous
            self.epoch_stability.update(maps)
            if had_previous:
                values = self.epoch_stability.compute()
                self.log("val/attn/stability_epoch_iou", values["iou"])
                self.log("val/attn/stability_epoch_spearman", values["spearman"])
        if self._input_stability_seen:
            for kind, metric in self.input_stability_metrics.items():
                for key, value in metric.compute().items():
                    self.log(f"val/attn/stability_{kind}_{key}", value)
                metric.reset()
            self._input_stability_seen = 0
        if self._faithfulness_seen:
            for name, metric in self.faithfulness_metrics.items():
                values = metric.compute()
                if isinstance(values, dict):
                    for key, value in values.items():
                        self.log(f"val/attn/{name}_{key}", value)
                else:
                    self.log(f"val/attn/{FAITHFULNESS_LOG_NAMES[name]}", values)
                metric.reset()
            self._faithfulness_seen = 0

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.optimizer_factory, self.net, self.hparams.backbone_lr_scale)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
