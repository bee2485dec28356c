"""Evaluation of a trained model: accuracy, the own map's and the post-hoc CAMs' quality, and the paper's
cross-run stability. ``eval.py`` at the top calls :func:`run_eval`.

    python eval.py ckpt_path=<run>/checkpoints/last.ckpt eval.cams=[gradcam,scorecam]
    python eval.py ckpt_path=<ckpt> eval.protocol=full     # the paper-scale protocol (conf/eval.yaml)
    python eval.py stability.runs=<sweep folder>            # or [a.ckpt,b.ckpt,...]
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from lficam import cams as cam_methods
from lficam.checkpoints.loading import load
from lficam.checkpoints.records import checkpoint_data_config, find_checkpoints
from lficam.core.devices import choose_device
from lficam.core.errors import UserError
from lficam.core.pictures import save_deletion_insertion, save_overlay_grid
from lficam.core.progress import StageProgress
from lficam.evaluation.cross_run import group_statistics
from lficam.evaluation.html_report import checkpoint_report_html, stability_report_html, write_report
from lficam.evaluation.images import build_test_data, first_test_images
from lficam.evaluation.maps import map_fn, maps_of
from lficam.evaluation.protocol import PROTOCOL_KEYS, STABILITY_ALL, Protocol, eval_protocol
from lficam.evaluation.prototypes import fam_setup
from lficam.evaluation.scores import METRICS, OWN, arrow, score_maps

log = logging.getLogger("lficam")


# ----------------------------------------------------------------------------------------------- loading


def _classes(count: int, names: list[str] | None) -> str:
    """``10 classes (circle, square, triangle, star, …)``: the count and the first names."""
    if not names:
        return f"{count} classes"
    shown = ", ".join(names[:4]) + (", …" if len(names) > 4 else "")
    return f"{count} classes ({shown})"


def check_same_classes(model: nn.Module, datamodule: Any, ckpt_path: str | Path, allow: bool) -> None:
    """Refuse test data whose classes are not the checkpoint's: its labels would be scored against outputs
    that mean other things (shapes' "circle" against Fashion-MNIST's "T-shirt"), and the numbers would look
    like any others. ``eval.allow_other_data=true`` scores it anyway, where the labels fit the outputs."""
    metadata = getattr(model, "lficam_metadata", None) or {}
    trained = int(metadata["model_config"]["num_classes"])
    trained_names = [str(c) for c in metadata.get("class_names") or []] or None
    count = int(datamodule.num_classes)
    names = [str(c) for c in getattr(datamodule, "class_names", None) or []] or None
    named_alike = trained_names is None or names is None or trained_names == names
    if count == trained and named_alike:
        return
    data = type(datamodule).__name__
    if allow and count <= trained:
        log.warning(
            "Scoring %s (trained on %s) on %s of %s, as eval.allow_other_data=true asks.",
            ckpt_path,
            _classes(trained, trained_names),
            data,
            _classes(count, names),
        )
        return
    if allow:
        raise UserError(
            f"The test data ({data}) has {_classes(count, names)}, more than the {trained} outputs of "
            f"{str(ckpt_path)!r}, so its labels cannot be scored even with eval.allow_other_data=true; "
            f"evaluate on data of at most {trained} classes."
        )
    raise UserError(
        f"{str(ckpt_path)!r} was trained on {_classes(trained, trained_names)} but the test data ({data}) has "
        f"{_classes(count, names)}; evaluate on the checkpoint's own data (leave data unset), or pass "
        "eval.allow_other_data=true to score it on these classes anyway."
    )


# ------------------------------------------------------------------------------------------- computing


@torch.no_grad()
def accuracy_on_test_split(model: nn.Module, datamodule: Any, device: torch.device) -> dict[str, float]:
    """One pass over the test split, as the training module's test: top-1 (and, over 5 classes, top-5)
    accuracy and the mean cross-entropy of every image."""
    correct1 = correct5 = total = 0
    loss = 0.0
    classes = 0
    for batch in datamodule.test_dataloader():
        x, y = batch["image"].to(device), batch["label"].to(device)
        logits = model(x).logits.float()
        classes = logits.shape[1]
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, classes), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        total += len(y)
    if total == 0:
        raise UserError(
            f"The test split of {type(datamodule).__name__} is empty: evaluate on data with test images "
            "(e.g. data.test_size=1000, or data=<name> with a test split)."
        )
    result = {"acc": correct1 / total, "loss": loss / total}
    if classes > 5:
        result["acc_top5"] = correct5 / total
    return result


def stage_costs(
    methods: list[str], protocol: Protocol, image_pixels: int, has_masks: bool, test_size: int, channels: int
) -> dict[str, float]:
    """Every stage of :func:`evaluate_checkpoint` and its relative cost, for the estimate of the time left.

    The unit is one test image through the model in the test pass; the factors were measured with a CIFAR
    ResNet-20 on a CPU (a perturbed image costs about 2, a ROAD imputation about 14, a Score-CAM mask 4)."""
    n = protocol.num_images
    points = math.ceil(image_pixels / protocol.step_pixels(1, image_pixels)) + 1
    costs = {"test split": float(test_size)}
    for method in methods:
        costs[f"{method}: maps"] = n * (
            4.0 * (channels + 1) if method == "scorecam" else 5.0 if method != OWN else 1.0
        )
        if has_masks:
            costs[f"{method}: localisation"] = 0.1 * n
        if protocol.faithfulness:
            costs[f"{method}: deletion, insertion"] = 2.0 * 2 * n * points
            costs[f"{method}: average drop, increase in confidence"] = 4.0 * n
        if protocol.road:
            costs[f"{method}: ROAD"] = 14.0 * 2 * n * len(protocol.road_percentages)
        if protocol.stability and (method == OWN or protocol.stability_maps == STABILITY_ALL):
            costs[f"{method}: stability"] = 2.0 * (protocol.noise_samples + 1) * n  # noise draws and a flip
    return costs


# ------------------------------------------------------------------------------------------- reporting


def _label(metric: str) -> str:
    return f"{metric} {arrow(metric)}"


def _cell(row: dict[str, float], metric: str) -> str:
    value = row.get(metric)
    return "—" if value is None or math.isnan(value) else f"{value:.3f}"


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    """Metrics as rows, methods as columns (↑ higher is better, ↓ lower)."""
    names = [m for m in METRICS if any(m in r for r in results.values())]
    lines = ["| metric | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    lines += [f"| {_label(n)} | " + " | ".join(_cell(r, n) for r in results.values()) + " |" for n in names]
    return "\n".join(lines) + "\n"


def results_tables(title: str, results: dict[str, dict[str, float]], width: int = 80) -> list[Any]:
    """Rich tables with metrics as rows and methods as columns, as many methods per table as fit ``width``."""
    from rich import box
    from rich.table import Table

    names = [m for m in METRICS if any(m in r for r in results.values())]
    label_width = max(len(_label(n)) for n in names) if names else 6
    # the metric column: its label and one space of padding (no edge padding)
    methods, groups, used = list(results), [[]], label_width + 1
    for method in methods:
        column = max(len(method), 7) + 3  # 3: padding on both sides and the column separator
        if groups[-1] and used + column > width:
            groups.append([])
            used = label_width + 1
        groups[-1].append(method)
        used += column
    tables = []
    for group in groups:
        table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
        table.add_column("metric", no_wrap=True)
        for method in group:
            table.add_column(method, justify="right", no_wrap=True)
        for n in names:
            table.add_row(_label(n), *[_cell(results[m], n) for m in group])
        tables.append(table)
    return tables


# ----------------------------------------------------------------------------------------- the commands


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """``python eval.py ckpt_path=…``: accuracy, then every metric for the own map and each CAM method."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = choose_device(cfg.get("device"))
    model = load(cfg.ckpt_path, map_location=device).eval()
    data_config = _data_config(cfg)
    datamodule = build_test_data(data_config, cfg.paths.data_dir, dict(cfg.eval.get("data_overrides") or {}))
    check_same_classes(model, datamodule, cfg.ckpt_path, bool(cfg.eval.get("allow_other_data", False)))
    protocol = eval_protocol(cfg.eval, cfg.get("protocols"))
    methods = [OWN, *[cam_methods.method_name(m) for m in cfg.eval.cams]]
    first = datamodule.test_set[0]["image"] if len(datamodule.test_set) else torch.zeros(3, 1, 1)
    height, width = first.shape[-2:]
    channels = getattr(getattr(model, "backbone", None), "out_channels", 64)
    has_masks = bool(getattr(datamodule, "has_masks", False))
    costs = stage_costs(methods, protocol, height * width, has_masks, len(datamodule.test_set), channels)
    report: dict[str, Any] = {
        "checkpoint": str(cfg.ckpt_path),
        "model_config": model.lficam_metadata["model_config"],
    }
    cam_options: dict[str, dict[str, Any]] = {}
    if "fam" in methods:  # FAM's reference: the FC row or class prototypes (lficam/evaluation/prototypes.py)
        fam = fam_setup(
            model,
            cfg.get("fam") or {},
            ckpt_path=cfg.ckpt_path,
            data_config=data_config,
            data_dir=cfg.paths.data_dir,
        )
        cam_options["fam"], report["fam_reference"] = fam.options, fam.description
    results: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, Tensor]] = {}
    all_maps: dict[str, Tensor] = {}
    num_classes = int(report["model_config"]["num_classes"])
    with StageProgress(costs) as progress:
        with progress.stage("test split"):
            report["test"] = accuracy_on_test_split(model, datamodule, device)
        probe = first_test_images(datamodule, protocol.num_images, device)
        for method in methods:
            with progress.stage(f"{method}: maps"):
                fn = map_fn(model, method, cam_options.get(method))
                maps = maps_of(fn, probe.images, protocol.batch_size)
            scored = score_maps(model, probe, maps, fn, protocol, num_classes, method, progress.stage)
            results[method], curves[method] = scored.values, scored.curves
            all_maps[method] = maps.cpu()
    report["num_images"] = len(probe)
    report["protocol"] = {
        "protocol": protocol.name,
        **{k: getattr(protocol, k) for k in PROTOCOL_KEYS},
        "road_percentages": list(protocol.road_percentages),
        "pixels_per_step": protocol.step_pixels(height, width),
    }
    report["maps"] = results
    report["wall_time_s"], report["cpu_time_s"] = progress.wall_times, progress.cpu_times
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=_json_float))
    accuracy = ", ".join(f"{k} {v:.4f}" for k, v in report["test"].items())
    fam_line = f"FAM's reference: {report['fam_reference']}\n\n" if "fam_reference" in report else ""
    (output_dir / "metrics.md").write_text(
        f"# {cfg.ckpt_path}\n\nTest: {accuracy}\n\n{fam_line}{markdown_table(results)}"
    )
    if protocol.faithfulness:
        save_deletion_insertion(output_dir / "deletion_insertion.png", curves)
    shown = slice(0, min(8, report["num_images"]))
    save_overlay_grid(
        output_dir / "overlays.png",
        probe.display[shown],
        {m: all_maps[m][shown] for m in methods},
        columns=8,
    )
    pictures = {"curves": output_dir / "deletion_insertion.png", "overlays": output_dir / "overlays.png"}
    write_report(output_dir / "report.html", checkpoint_report_html(json_safe(report), pictures))
    console = Console()
    console.print(f"Test: {accuracy}")
    if fam_line:
        console.print(fam_line.strip())
    title = f"Attention quality on {report['num_images']} test images ({protocol.name} protocol)"
    for table in results_tables(title, results, width=min(console.width, 100)):
        console.print(table)
    print(f"Results written to {output_dir}")  # unwrapped: the path is one line to copy
    return report


def _data_config(cfg: DictConfig) -> dict[str, Any]:
    if cfg.get("data"):
        return OmegaConf.to_container(cfg.data, resolve=True)
    return checkpoint_data_config(cfg.ckpt_path)


def _json_float(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    return str(value)


def _same_data(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("_target_", "image_size", "num_classes", "seed", "root", "test_size")
    return all(a.get(k) == b.get(k) for k in keys)


def evaluate_stability(cfg: DictConfig) -> dict[str, Any]:
    """The paper's cross-run stability (method.md §1.5), done right: maps paired by image id, one IoU per
    image at the paper's threshold (> 100/255 of each map's min-max range), no wrap-around, mean ± std over
    the pairs of runs of the same attention kind; plus Spearman rank correlation."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    options = cfg.stability
    paths = find_checkpoints(options.runs)
    if len(paths) < 2:
        raise UserError(
            f"stability.runs found {len(paths)} checkpoint(s) in {options.runs}; stability compares runs, "
            "so give a sweep folder or a list of at least two checkpoints."
        )
    configs = [checkpoint_data_config(p) for p in paths]
    for path, config in zip(paths[1:], configs[1:]):
        if not _same_data(configs[0], config):
            raise UserError(
                f"{str(path)!r} was trained on other data ({config.get('_target_')}, image_size "
                f"{config.get('image_size')}) than {str(paths[0])!r} ({configs[0].get('_target_')}, image_size "
                f"{configs[0].get('image_size')}); compare runs of the same data set and size."
            )
    device = choose_device(cfg.get("device"))
    datamodule = build_test_data(configs[0], cfg.paths.data_dir, {})
    probe = first_test_images(datamodule, options.num_images, device)
    images, ids = probe.images, probe.ids
    runs = []
    with StageProgress({str(p): 1.0 for p in paths}) as progress:
        for path in paths:
            with progress.stage(str(path)):
                model = load(path, map_location=device).eval()
                attention = model.lficam_metadata["model_config"].get("attention")
                maps = maps_of(map_fn(model, OWN), images, options.batch_size)
                runs.append({"checkpoint": str(path), "attention": attention, "maps": maps})
    kinds = sorted({r["attention"] for r in runs})
    groups = {kind: [i for i, r in enumerate(runs) if r["attention"] == kind] for kind in kinds}
    groups = {kind: members for kind, members in groups.items() if len(members) > 1}
    if not groups:
        raise UserError(
            "Every attention kind in stability.runs has a single run; train at least two of one kind."
        )
    compared = group_statistics([r["maps"] for r in runs], groups, threshold=options.threshold)
    iou, rho = torch.tensor(compared["iou_matrix"]), torch.tensor(compared["spearman_matrix"])
    groups = compared["groups"]
    report = {
        "threshold": options.threshold,
        "num_images": int(images.shape[0]),
        "image_ids": ids.tolist(),
        "runs": [{"checkpoint": r["checkpoint"], "attention": r["attention"]} for r in runs],
        "iou_matrix": iou.tolist(),
        "spearman_matrix": rho.tolist(),
        "by_attention": groups,
    }
    # a one-pair group's std is NaN: JSON's null
    (output_dir / "stability.json").write_text(json.dumps(json_safe(report), indent=2))
    save_matrices(
        output_dir / "stability.png", iou, rho, [f"{i}:{r['attention']}" for i, r in enumerate(runs)]
    )
    pictures = {"matrices": output_dir / "stability.png"}
    write_report(output_dir / "report.html", stability_report_html(json_safe(report), pictures))
    table = Table(title=f"Cross-run stability of the own maps on {report['num_images']} test images")
    for column in ("attention", "runs", "pairs", "IoU mean ± std", "Spearman mean ± std"):
        table.add_column(column)
    for kind, g in groups.items():
        table.add_row(
            kind,
            str(g["runs"]),
            str(g["pairs"]),
            mean_and_std(g["iou_mean"], g["iou_std"]),
            mean_and_std(g["spearman_mean"], g["spearman_std"]),
        )
    Console().print(table)
    print(f"Results written to {output_dir}")
    return report


def save_matrices(path: Path, iou: Tensor, rho: Tensor, labels: list[str]) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(4 + 0.6 * len(labels), 2.5 + 0.3 * len(labels)))
    for ax, matrix, title in zip(axes, (iou, rho), ("map IoU (>100/255)", "Spearman ρ")):
        image = ax.imshow(matrix.numpy(), vmin=0 if title.startswith("map") else -1, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        for (i, j), v in zip(
            [(i, j) for i in range(len(labels)) for j in range(len(labels))], matrix.flatten()
        ):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mean_and_std(mean: float, std: float) -> str:
    """``0.560 ± 0.031``; ``0.560 (one pair)`` when the std is undefined (NaN: a group of two runs)."""
    return f"{mean:.3f} (one pair)" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def json_safe(value: Any) -> Any:
    """``value`` with every NaN float replaced by None, so that the file is strict JSON (``null``)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
