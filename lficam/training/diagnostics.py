"""Attention diagnostics of a model's own map during validation and test, from the maps the step already has.

One component with one job. Each evaluation step hands it the batch, the batch's maps at image size (one
upsampling per batch, shared by every metric here) and the model (the LightningModule, so its ``forward``
prepares inputs as training does); it keeps the metrics (torchmetrics, so sums reduce over DDP ranks):

- wherever batches carry ``mask`` (validation and test): ``{stage}/attn/pointing_game`` (hits per class,
  then the mean over the classes seen, method.md §4.2), and with ``attention_metrics``
  ``{stage}/attn/energy_pointing_game`` and ``{stage}/attn/mask_iou`` (at ``mask_iou_threshold`` of each
  map's min-max range);
- in validation only, never in the sanity check:
  - epoch-to-epoch stability of a fixed probe set (the first ``stability_probe_size`` validation images of
    this rank) against the previous validation epoch: ``val/attn/stability_epoch_iou`` / ``_spearman``
    (from the second validation epoch on; a resumed run, or a shuffled validation loader whose first
    images change, starts comparing again one epoch later);
  - input-change stability on the first ``input_stability_images`` validation images of every epoch, for
    each kind of ``input_stability`` (noise, shift, flip; σ ``input_stability_noise`` in normalised
    units, ``input_stability_samples`` noise draws, ``input_stability_shift`` pixels):
    ``val/attn/stability_{kind}_{iou,spearman,avg_sensitivity,max_sensitivity}``;
  - every ``faithfulness_every_n_epochs`` epochs (0: never), the costly ``faithfulness_metrics`` on the
    first ``faithfulness_images`` validation images (deletion/insertion with
    ``faithfulness_pixels_per_step``, None: about 224 steps; perturbed images through the model
    ``faithfulness_batch_size`` at a time): ``val/attn/deletion_auc``, ``insertion_auc``, ``average_drop``,
    ``increase_in_confidence``, ``road_morf``, ``road_lerf``, ``road_combined``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection

from lficam.core.errors import UnknownNameError
from lficam.core.maps import upsample
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

FAITHFULNESS_METRICS = ("deletion", "insertion", "average_drop", "increase_in_confidence", "road")
#: the name each single-valued faithfulness metric is logged under (ROAD logs road_morf, _lerf, _combined)
FAITHFULNESS_LOG_NAMES = {
    "deletion": "deletion_auc",
    "insertion": "insertion_auc",
    "average_drop": "average_drop",
    "increase_in_confidence": "increase_in_confidence",
}
EVALUATION_STAGES = ("val", "test")


def names_of(value: Sequence[str] | str | None) -> list[str]:
    """A list of names from a list (or config list) or a comma-separated string; None or "" gives []."""
    if not value:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def localisation_metrics(
    stage: str, num_classes: int, *, extras: bool, mask_iou_threshold: float
) -> MetricCollection:
    """``{stage}/attn/pointing_game`` (per class), and with ``extras`` the energy pointing game and mask IoU.

    Images with an empty mask are left out of all three; the pointing game counts them and says how many in
    one warning when its epoch's value is computed (:func:`lficam.metrics.localisation.report_empty_masks`).
    """
    metrics: dict[str, Any] = {"pointing_game": PointingGame(num_classes, stage=stage)}
    if extras:
        metrics["energy_pointing_game"] = EnergyPointingGame()
        metrics["mask_iou"] = MaskIoU(mask_iou_threshold)
    # compute_groups=False: each metric keeps its own state (three small metrics gain nothing from sharing)
    return MetricCollection(metrics, prefix=f"{stage}/attn/", compute_groups=False)


class AttentionDiagnostics(nn.Module):
    """Localisation, epoch stability, input stability and faithfulness of the model's own map (see the module
    docstring for what each option switches). ``options`` holds the resolved plain values, for checkpoints."""

    def __init__(
        self,
        num_classes: int,
        *,
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
    ) -> None:
        super().__init__()
        kinds, chosen = names_of(input_stability), names_of(faithfulness_metrics)
        for name, allowed in [
            *((k, PERTURBATIONS) for k in kinds),
            *((m, FAITHFULNESS_METRICS) for m in chosen),
        ]:
            if name not in allowed:
                raise UnknownNameError("attention metric", name, allowed)
        self.options: dict[str, Any] = {
            "attention_metrics": bool(attention_metrics),
            "mask_iou_threshold": float(mask_iou_threshold),
            "stability_probe_size": int(stability_probe_size),
            "input_stability": kinds,
            "input_stability_images": int(input_stability_images),
            "input_stability_noise": float(input_stability_noise),
            "input_stability_samples": int(input_stability_samples),
            "input_stability_shift": int(input_stability_shift),
            "faithfulness_every_n_epochs": int(faithfulness_every_n_epochs),
            "faithfulness_images": int(faithfulness_images),
            "faithfulness_metrics": chosen,
            "faithfulness_pixels_per_step": faithfulness_pixels_per_step,
            "faithfulness_batch_size": int(faithfulness_batch_size),
        }
        self.localisation = nn.ModuleDict(
            {
                stage: localisation_metrics(
                    stage, num_classes, extras=attention_metrics, mask_iou_threshold=mask_iou_threshold
                )
                for stage in EVALUATION_STAGES
            }
        )
        self.epoch_stability = EpochStability()
        self.input_stability = nn.ModuleDict(
            {
                kind: InputStability(
                    kind,
                    noise_std=input_stability_noise,
                    samples=input_stability_samples,
                    shift=input_stability_shift,
                )
                for kind in kinds
            }
        )
        batch = {"batch_size": faithfulness_batch_size}
        steps = {"pixels_per_step": faithfulness_pixels_per_step, **batch}
        builders: dict[str, Callable[[], nn.Module]] = {
            "deletion": lambda: DeletionAUC(**steps),
            "insertion": lambda: InsertionAUC(**steps),
            "average_drop": lambda: AverageDrop(**batch),
            "increase_in_confidence": lambda: IncreaseInConfidence(**batch),
            "road": lambda: Road(**batch),
        }
        self.faithfulness = nn.ModuleDict({name: builders[name]() for name in chosen})
        # The probe set's maps come from the validation pass itself (no extra forward pass); plain
        # attributes, kept out of checkpoints.
        self._probe_maps: list[Tensor] = []
        self._probe_ids: list[Tensor] = []
        self._previous_probe_ids: Tensor | None = None
        self._input_stability_seen = 0
        self._faithfulness_seen = 0

    def reset(self, stage: str) -> None:
        """Forget this stage's localisation sums (e.g. those of Lightning's sanity-check batches)."""
        self.localisation[stage].reset()

    def update(
        self,
        stage: str,
        batch: dict[str, Tensor],
        maps: Tensor,
        model: Callable[[Tensor], Any],
        *,
        epoch: int,
        sanity_checking: bool = False,
    ) -> MetricCollection | None:
        """Add one evaluation batch; ``maps``: the own maps at the images' size (B×H×W, float32).

        Returns the localisation metrics to log with ``on_epoch=True`` (None when the batch has no masks).
        """
        logged = None
        if "mask" in batch:
            masks = batch["mask"]
            logged = self.localisation[stage]
            # the sanity check's few batches are not an epoch: their count of empty masks is not reported
            logged["pointing_game"].report_empty = not sanity_checking
            logged.update(maps=upsample(maps, masks.shape[-2:]), masks=masks, labels=batch["label"])
        if stage == "val" and not sanity_checking:
            self._update_validation_extras(batch, maps, model, epoch)
        return logged

    def _faithfulness_epoch(self, epoch: int) -> bool:
        every = self.options["faithfulness_every_n_epochs"]
        return bool(every) and len(self.faithfulness) > 0 and (epoch + 1) % every == 0

    def _update_validation_extras(
        self, batch: dict[str, Tensor], maps: Tensor, model: Callable[[Tensor], Any], epoch: int
    ) -> None:
        images = batch["image"]
        room = self.options["stability_probe_size"] - sum(m.shape[0] for m in self._probe_maps)
        if room > 0:
            self._probe_maps.append(maps[:room].detach())
            ids = batch.get("index", torch.arange(images.shape[0], device=images.device))
            self._probe_ids.append(ids[:room].detach())
        room = self.options["input_stability_images"] - self._input_stability_seen
        if len(self.input_stability) and room > 0:
            for metric in self.input_stability.values():
                metric.update(attention_map_fn(model), images[:room], base_maps=maps[:room].detach())
            self._input_stability_seen += images[:room].shape[0]
        room = self.options["faithfulness_images"] - self._faithfulness_seen
        if self._faithfulness_epoch(epoch) and room > 0:
            for metric in self.faithfulness.values():
                metric.update(model, images[:room], maps[:room])  # the class predicted on the clean image
            self._faithfulness_seen += images[:room].shape[0]

    def epoch_end(self) -> dict[str, Tensor]:
        """This validation epoch's stability and faithfulness values (reduced over ranks); sums then reset."""
        values: dict[str, Tensor] = {}
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
                for key, value in self.epoch_stability.compute().items():
                    values[f"val/attn/stability_epoch_{key}"] = value
        if self._input_stability_seen:
            for kind, metric in self.input_stability.items():
                for key, value in metric.compute().items():
                    values[f"val/attn/stability_{kind}_{key}"] = value
                metric.reset()
            self._input_stability_seen = 0
        if self._faithfulness_seen:
            for name, metric in self.faithfulness.items():
                computed = metric.compute()
                if isinstance(computed, dict):
                    values.update({f"val/attn/{name}_{key}": value for key, value in computed.items()})
                else:
                    values[f"val/attn/{FAITHFULNESS_LOG_NAMES[name]}"] = computed
                metric.reset()
            self._faithfulness_seen = 0
        return values
