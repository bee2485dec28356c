"""Attention quality of one trained run: every map on the same test images, scored by every metric of method.md §4.

Maps ("methods"): ``own`` (LFI-CAM's A, ABN's M, the plain model's CAM of the predicted class) and, on the
models of ``study.eval.cam_models``, the post-hoc CAMs of ``study.eval.cams`` (Grad-CAM, Grad-CAM++, Score-CAM,
LayerCAM, Abs-CAM, for the predicted class; :mod:`lficam.cams`). Per map, means over the images:
- localisation on the first ``images`` test images (where the data has masks): the pointing game (hit within
  15 px at 224 px, scaled; accuracy per class, then averaged over classes, Zhang et al. 2016), the energy
  pointing game, and mask IoU at ``mask_iou_threshold`` of each map's range;
- faithfulness on the first ``faithfulness_images`` of them: deletion and insertion AUC with
  ceil(H·W / ``faithfulness_steps``) pixels per step, Average Drop % and Increase in Confidence %;
- stability under input changes on the first ``stability_images``, for every map (eval.py does it for the own
  map only): x + N(0, ``noise_std``²) (``noise_samples`` draws) and the left-right flip with the map flipped back; the map of the perturbed image is
  that of the class predicted on it; IoU at > 100/255 and Spearman's ρ against the clean image's map.
The own maps (and Grad-CAM's, where computed) of the first ``images`` test images are kept in ``maps.pt`` for
the cross-run stability (:mod:`lficam.study.stability`). Runs trained for the stability settings only get the
own map's localisation (a check that their maps are comparable), not the costly rest.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lficam import cams as cam_methods
from lficam import metrics as M
from lficam.data.base import content_config, first_items
from lficam.errors import UserError
from lficam.evaluate import best_checkpoint as run_folder_best
from lficam.loading import load, read_checkpoint
from lficam.maps import upsample
from lficam.study.launch import read_json, write_json

OWN = "own"
#: metric → higher is better
METRICS: dict[str, bool] = {
    "pointing_game": True,
    "energy_pointing_game": True,
    "mask_iou": True,
    "deletion_auc": False,
    "insertion_auc": True,
    "average_drop": False,
    "increase_in_confidence": True,
    "stability_noise_iou": True,
    "stability_noise_spearman": True,
    "stability_flip_iou": True,
    "stability_flip_spearman": True,
}
#: the maps kept per run for the cross-run stability
KEPT_MAPS = (OWN, "gradcam")


@dataclass
class TestImages:
    """The first N test images of a data set, the same for every run of it."""

    images: Tensor
    labels: Tensor
    masks: Tensor | None
    ids: Tensor
    display: Tensor  # the images in [0, 1], for the pictures
    data_config: dict[str, Any]


def best_checkpoint(run_dir: Path) -> Path:
    """The checkpoint chosen on validation (summary.json's best), else the last one; always a file of
    ``run_dir`` itself, as eval.py chooses it (:func:`lficam.evaluate.best_checkpoint`), so a copied study
    folder scores its own runs."""
    return run_folder_best(run_dir)


def data_config_of(checkpoint: Path) -> dict[str, Any]:
    config = (read_checkpoint(checkpoint).get("hyper_parameters") or {}).get("data_config")
    if not isinstance(config, dict) or "_target_" not in config:
        raise UserError(
            f"Checkpoint {checkpoint} does not record its data set; it was not trained by train.py."
        )
    return config


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return content_config(a) == content_config(b)


def load_test_images(checkpoint: Path, count: int, device: torch.device) -> TestImages:
    """The first ``count`` test images of the data set a checkpoint was trained on."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = data_config_of(checkpoint)
    datamodule = instantiate(OmegaConf.create({**config, "num_workers": 0}))
    datamodule.setup("test")
    batch = first_items(datamodule.test_set, count)
    images = batch["image"].float()
    denormalize = getattr(datamodule, "denormalize", lambda t: t.clamp(0, 1))
    return TestImages(
        images=images.to(device),
        labels=batch["label"].long().to(device),
        masks=batch["mask"].to(device) if "mask" in batch else None,
        ids=batch["index"].long(),
        display=denormalize(images).cpu(),
        data_config=config,
    )


def own_map_fn(model: nn.Module):
    """images → the model's own maps upsampled bilinearly to the images' size (as the training module does)."""

    def maps(x: Tensor) -> Tensor:
        with torch.no_grad():
            return upsample(model(x).attention, tuple(x.shape[-2:]))

    return maps


def map_fn(model: nn.Module, method: str):
    """images → B×H×W maps in [0, 1] of the own attention or of a CAM method (class predicted on the input)."""
    if method == OWN:
        return own_map_fn(model)
    cam = cam_methods.create(method, model)
    return lambda x: cam(x)


def maps_of(fn, images: Tensor, batch_size: int) -> Tensor:
    return torch.cat([fn(chunk).float() for chunk in images.split(batch_size)])


def _mean(values: Tensor) -> float:
    """Mean over images, undefined (NaN) images left out; NaN when none is defined."""
    return float(values.float().nanmean()) if values.numel() else math.nan


def score(
    model: nn.Module, fn, test: TestImages, maps: Tensor, num_classes: int, options: Any, full: bool
) -> dict[str, float]:
    """The metrics of one map method (see the module docstring); ``full=False``: localisation only."""
    out: dict[str, float] = {}
    images, batch = test.images, int(options.batch_size)
    if test.masks is not None:  # PointingGame scales its 15 px at 224 px to the images' size
        pointing = M.PointingGame(num_classes).to(images.device)
        pointing.update(maps, test.masks, test.labels)
        out["pointing_game"] = float(pointing.compute())
        out["energy_pointing_game"] = _mean(M.energy_pointing_game(maps, test.masks))
        out["mask_iou"] = _mean(M.mask_iou(maps, test.masks, threshold=float(options.mask_iou_threshold)))
    if not full:
        return out
    n = min(int(options.faithfulness_images), images.shape[0])
    x, m = images[:n], maps[:n]
    step = max(1, math.ceil(images.shape[-2] * images.shape[-1] / int(options.faithfulness_steps)))
    out["deletion_auc"] = _mean(M.deletion_auc(model, x, m, pixels_per_step=step, batch_size=batch))
    out["insertion_auc"] = _mean(M.insertion_auc(model, x, m, pixels_per_step=step, batch_size=batch))
    out["average_drop"] = _mean(M.average_drop(model, x, m, batch_size=batch))
    out["increase_in_confidence"] = _mean(M.increase_in_confidence(model, x, m, batch_size=batch))
    k = min(int(options.stability_images), images.shape[0])
    for kind in ("noise", "flip"):
        scores = M.perturbation_stability(
            fn,
            images[:k],
            kind,
            noise_std=float(options.noise_std),
            samples=int(options.noise_samples),
            batch_size=batch,
            base_maps=maps[:k],
        )
        out[f"stability_{kind}_iou"] = _mean(scores.iou)
        out[f"stability_{kind}_spearman"] = _mean(scores.spearman)
    return out


def eval_key(options: Any, methods: list[str], full: bool, checkpoint: Path) -> dict[str, Any]:
    """What a run's metrics depend on: a cached result is reused only when it matches (a retrained run's
    checkpoint has another modification time)."""
    keys = (
        "images",
        "faithfulness_images",
        "stability_images",
        "faithfulness_steps",
        "noise_std",
        "noise_samples",
        "mask_iou_threshold",
    )
    stat = checkpoint.stat()
    return {
        **{k: options[k] for k in keys},
        "methods": list(methods),
        "full": full,
        "checkpoint": str(checkpoint),
        "checkpoint_mtime_ns": stat.st_mtime_ns,
    }


def evaluate_run(
    run_dir: Path, test: TestImages, methods: list[str], options: Any, full: bool, device: torch.device
) -> dict[str, Any]:
    """Score the run's best checkpoint (see the module docstring); writes ``metrics.json`` and ``maps.pt``."""
    start = time.perf_counter()
    checkpoint = best_checkpoint(run_dir)
    if not same_content(data_config_of(checkpoint), test.data_config):
        raise UserError(
            f"{run_dir} was trained on other data than the study's first run of this data set; every run of a "
            "data set must see the same test images (check the data set's overrides)."
        )
    model = load(checkpoint, map_location=device).eval()
    num_classes = int(model.lficam_metadata["model_config"]["num_classes"])
    results: dict[str, dict[str, float]] = {}
    kept: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        began = time.perf_counter()
        fn = map_fn(model, method)
        maps = maps_of(fn, test.images, int(options.batch_size))
        results[method] = score(model, fn, test, maps, num_classes, options, full)
        if method in KEPT_MAPS:
            kept[method] = maps.cpu()
        seconds[method] = time.perf_counter() - began
    summary = json.loads((run_dir / "summary.json").read_text())
    report = {
        "eval_key": eval_key(options, methods, full, checkpoint),
        "checkpoint": str(checkpoint),
        "test_acc": summary["metrics"].get("test/acc"),
        "val_acc_best": summary["metrics"].get("val/acc_best"),
        "num_images": int(test.images.shape[0]),
        "image_ids": test.ids.tolist(),
        "maps": results,
        "method_wall_s": seconds,
        "wall_s": time.perf_counter() - start,
    }
    torch.save({k: v.contiguous() for k, v in kept.items()}, run_dir / "maps.pt")
    write_json(run_dir / "metrics.json", report)
    return report


def cached(run_dir: Path, options: Any, methods: list[str], full: bool) -> dict[str, Any] | None:
    """The run's metrics.json when it was computed with the same options and the maps are kept, else None."""
    path = run_dir / "metrics.json"
    if not path.is_file() or not (run_dir / "maps.pt").is_file():
        return None
    report = read_json(path)
    if report is None:
        return None
    return (
        report
        if report.get("eval_key") == eval_key(options, methods, full, best_checkpoint(run_dir))
        else None
    )


def kept_maps(run_dir: Path) -> dict[str, Tensor]:
    return torch.load(run_dir / "maps.pt", map_location="cpu", weights_only=True)
