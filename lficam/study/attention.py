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
Each number is :func:`lficam.evaluation.scores.score_maps` under :func:`lficam.evaluation.protocol.study_protocol`,
the same definitions eval.py reports. The own maps (and Grad-CAM's, where computed) of the first ``images`` test images are kept in ``maps.pt`` for
the cross-run stability (:mod:`lficam.study.stability`). Runs trained for the stability settings only get the
own map's localisation (a check that their maps are comparable), not the costly rest.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lficam.checkpoints.loading import load
from lficam.checkpoints.records import best_checkpoint, checkpoint_data_config
from lficam.core.errors import UserError
from lficam.data.base import content_config
from lficam.evaluation.images import Probe, build_test_data, first_test_images
from lficam.evaluation.maps import map_fn, maps_of
from lficam.evaluation.protocol import study_protocol
from lficam.evaluation.scores import HIGHER_IS_BETTER, OWN, score_maps
from lficam.study.launch import read_json, write_json

#: the metrics the study reports (no ROAD), each → higher is better (:data:`lficam.evaluation.scores.METRICS`)
METRICS: dict[str, bool] = {
    name: HIGHER_IS_BETTER[name]
    for name in (
        "pointing_game",
        "energy_pointing_game",
        "mask_iou",
        "deletion_auc",
        "insertion_auc",
        "average_drop",
        "increase_in_confidence",
        "stability_noise_iou",
        "stability_noise_spearman",
        "stability_flip_iou",
        "stability_flip_spearman",
    )
}
#: the maps kept per run for the cross-run stability
KEPT_MAPS = (OWN, "gradcam")


@dataclass
class TestImages(Probe):
    """The first N test images of a data set (the same for every run of it) and the data config they came from."""

    data_config: dict[str, Any] = field(default_factory=dict)


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return content_config(a) == content_config(b)


def load_test_images(checkpoint: Path, count: int, device: torch.device) -> TestImages:
    """The first ``count`` test images of the data set a checkpoint was trained on (as eval.py takes them)."""
    config = checkpoint_data_config(checkpoint)
    datamodule = build_test_data(config, None, {"num_workers": 0})
    probe = first_test_images(datamodule, count, device)
    return TestImages(**vars(probe), data_config=config)


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
    if not same_content(checkpoint_data_config(checkpoint), test.data_config):
        raise UserError(
            f"{run_dir} was trained on other data than the study's first run of this data set; every run of a "
            "data set must see the same test images (check the data set's overrides)."
        )
    model = load(checkpoint, map_location=device).eval()
    num_classes = int(model.lficam_metadata["model_config"]["num_classes"])
    results: dict[str, dict[str, float]] = {}
    kept: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    protocol = study_protocol(options, full)
    for method in methods:
        began = time.perf_counter()
        fn = map_fn(model, method)
        maps = maps_of(fn, test.images, protocol.batch_size)
        results[method] = score_maps(model, test, maps, fn, protocol, num_classes, method).values
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
