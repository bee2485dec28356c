"""Evaluation of a trained model: accuracy, the own map's and the post-hoc CAMs' quality, and the paper's
cross-run stability. ``eval.py`` at the top calls :func:`run_eval`.

    python eval.py ckpt_path=<run>/checkpoints/last.ckpt eval.cams=[gradcam,scorecam]
    python eval.py stability.runs=<sweep folder>            # or [a.ckpt,b.ckpt,...]
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from lficam import cams as cam_methods
from lficam import metrics as M
from lficam.data.base import first_items
from lficam.errors import UserError
from lficam.loading import load, read_checkpoint
from lficam.module import upsample_maps

log = logging.getLogger("lficam")

OWN = "own"  # the model's own map: LFI-CAM's A, ABN's M, the plain model's CAM
#: metric name → (higher is better, needs masks)
METRICS: dict[str, tuple[bool, bool]] = {
    "pointing_game": (True, True),
    "energy_pointing_game": (True, True),
    "mask_iou": (True, True),
    "deletion_auc": (False, False),
    "insertion_auc": (True, False),
    "average_drop": (False, False),
    "increase_in_confidence": (True, False),
    "road_morf": (False, False),
    "road_lerf": (True, False),
    "road_combined": (True, False),
    "stability_noise_iou": (True, False),
    "stability_flip_iou": (True, False),
}


# ----------------------------------------------------------------------------------------------- loading


def checkpoint_data_config(path: str | Path) -> dict[str, Any]:
    """The data module config a checkpoint was trained with (stored by the training module)."""
    checkpoint = read_checkpoint(path)
    data = (checkpoint.get("hyper_parameters") or {}).get("data_config")
    if not isinstance(data, dict) or "_target_" not in data:
        raise UserError(
            f"Checkpoint {str(path)!r} does not record its data set; pass data=<name> (and its options) "
            "to evaluate it."
        )
    return data


def build_test_data(data_config: dict[str, Any], data_dir: str | None, overrides: dict[str, Any]) -> Any:
    """The checkpoint's data module with its test split set up (the cache moved to this machine's data_dir)."""
    config = {**data_config, **overrides}
    if data_dir is not None and "cache_dir" in config:
        config["cache_dir"] = data_dir
    if data_dir is not None and "root" in config and not Path(str(config["root"])).exists():
        log.warning("The training data root %s does not exist here; pass data.root=...", config["root"])
    datamodule = instantiate(OmegaConf.create(config))
    datamodule.setup("test")
    return datamodule


def first_test_images(datamodule: Any, count: int) -> dict[str, Tensor]:
    """The first ``count`` test images as one batch: the same images, by index, for every model and run."""
    return first_items(datamodule.test_set, count)


# ------------------------------------------------------------------------------------------- computing


@torch.no_grad()
def accuracy_on_test_split(
    model: nn.Module, datamodule: Any, device: torch.device, progress: Any = None
) -> dict[str, float]:
    """Top-1/top-5 accuracy and mean cross-entropy over the whole test split."""
    correct1 = correct5 = total = 0
    loss = 0.0
    loader = datamodule.test_dataloader()
    task = progress.add_task("test accuracy", total=len(loader)) if progress else None
    for batch in loader:
        x, y = batch["image"].to(device), batch["label"].to(device)
        logits = model(x).logits.float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        total += len(y)
        if progress:
            progress.advance(task)
    result = {"acc": correct1 / total, "loss": loss / total}
    if logits.shape[1] > 5:
        result["acc_top5"] = correct5 / total
    return result


def own_maps(model: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    """The model's own attention maps, upsampled bilinearly to the images' size (B×H×W in [0, 1])."""
    size = tuple(images.shape[-2:])
    with torch.no_grad():
        return torch.cat([upsample_maps(model(chunk).attention, size) for chunk in images.split(batch_size)])


def method_maps(
    name: str, model: nn.Module, images: Tensor, batch_size: int, options: dict[str, Any] | None = None
) -> Tensor:
    """Maps of the own attention (``own``) or of a post-hoc CAM method, for the predicted classes."""
    if name == OWN:
        return own_maps(model, images, batch_size)
    cam = cam_methods.create(name, model, **(options or {}))
    return torch.cat([cam(chunk) for chunk in images.split(batch_size)])


def map_quality(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    masks: Tensor | None,
    *,
    faithfulness: bool,
    road: bool,
    batch_size: int,
    pixels_per_step: int | None,
    stability_fn: Callable[[Tensor], Tensor] | None = None,
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Every metric of method.md §4 for one set of maps: the mean over images (NaN left out), and curves."""
    values: dict[str, Tensor] = {}
    curves: dict[str, Tensor] = {}
    if masks is not None:
        side = max(images.shape[-2:])
        values["pointing_game"] = M.pointing_game(maps, masks, tolerance=15 * side / 224)
        values["energy_pointing_game"] = M.energy_pointing_game(maps, masks)
        values["mask_iou"] = M.mask_iou(maps, masks)
    if faithfulness:
        fractions, deletion = M.deletion_curve(
            model, images, maps, pixels_per_step=pixels_per_step, batch_size=batch_size
        )
        _, insertion = M.insertion_curve(
            model, images, maps, pixels_per_step=pixels_per_step, batch_size=batch_size
        )
        values["deletion_auc"] = torch.trapezoid(deletion, fractions, dim=1)
        values["insertion_auc"] = torch.trapezoid(insertion, fractions, dim=1)
        curves = {"fractions": fractions, "deletion": deletion, "insertion": insertion}
        values["average_drop"] = M.average_drop(model, images, maps, batch_size=batch_size)
        values["increase_in_confidence"] = M.increase_in_confidence(
            model, images, maps, batch_size=batch_size
        )
    if road:
        scores = M.road(model, images, maps, batch_size=batch_size)
        values["road_morf"], values["road_lerf"], values["road_combined"] = (
            scores.morf,
            scores.lerf,
            scores.combined,
        )
    if stability_fn is not None:
        for kind in ("noise", "flip"):
            values[f"stability_{kind}_iou"] = M.perturbation_stability(
                stability_fn, images, kind, batch_size=batch_size
            ).iou
    return {k: _nanmean(v) for k, v in values.items()}, curves


def _nanmean(values: Tensor) -> float:
    """Mean over images with undefined (NaN) values left out; NaN when none is defined."""
    return float(values.float().nanmean())


# ------------------------------------------------------------------------------------------- reporting


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    """Methods as rows, metrics as columns (↑ higher is better, ↓ lower)."""
    names = [m for m in METRICS if any(m in r for r in results.values())]
    header = "| method | " + " | ".join(f"{n} {'↑' if METRICS[n][0] else '↓'}" for n in names) + " |"
    lines = [header, "|" + "---|" * (len(names) + 1)]
    for method, row in results.items():
        cells = [("—" if n not in row or math.isnan(row[n]) else f"{row[n]:.4f}") for n in names]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_curves(path: Path, curves: dict[str, dict[str, Tensor]]) -> Path:
    """Mean deletion and insertion curves of every method, one panel each."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, c in curves.items():
        if not c:
            continue
        x = c["fractions"].cpu()
        for ax, kind in zip(axes, ("deletion", "insertion")):
            y = c[kind].float()
            y = torch.where(y.isnan(), torch.zeros_like(y), y).sum(0) / (~c[kind].isnan()).sum(0).clamp_min(1)
            ax.plot(x, y.cpu(), label=method)
    for ax, kind in zip(axes, ("deletion (lower is better)", "insertion (higher is better)")):
        ax.set_title(kind)
        ax.set_xlabel("fraction of pixels")
        ax.set_ylabel("probability of the class")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_table(title: str, results: dict[str, dict[str, float]]) -> None:
    from rich.console import Console
    from rich.table import Table

    names = [m for m in METRICS if any(m in r for r in results.values())]
    table = Table(title=title)
    table.add_column("method")
    for n in names:
        table.add_column(f"{n} {'↑' if METRICS[n][0] else '↓'}", justify="right")
    for method, row in results.items():
        table.add_row(
            method, *[("—" if n not in row or math.isnan(row[n]) else f"{row[n]:.3f}") for n in names]
        )
    Console().print(table)


# ----------------------------------------------------------------------------------------- the commands


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """``python eval.py ckpt_path=…``: accuracy, then every metric for the own map and each CAM method."""
    from rich.progress import Progress

    from lficam.viz import save_overlay_grid

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load(cfg.ckpt_path, map_location=device)
    data_config = _data_config(cfg)
    datamodule = build_test_data(data_config, cfg.paths.data_dir, dict(cfg.eval.get("data_overrides") or {}))
    options = cfg.eval
    methods = [OWN, *[cam_methods.method_name(m) for m in options.cams]]
    report: dict[str, Any] = {
        "checkpoint": str(cfg.ckpt_path),
        "model_config": model.lficam_metadata["model_config"],
    }
    cam_options: dict[str, dict[str, Any]] = {}
    if "fam" in methods:  # FAM's reference: the FC row or class prototypes (lficam/prototypes.py)
        from lficam.prototypes import fam_setup

        fam = fam_setup(
            model,
            cfg.get("fam") or {},
            ckpt_path=cfg.ckpt_path,
            data_config=data_config,
            data_dir=cfg.paths.data_dir,
        )
        cam_options["fam"], report["fam_reference"] = fam.options, fam.description
    with Progress() as progress:
        report["test"] = accuracy_on_test_split(model, datamodule, device, progress)
        batch = first_test_images(datamodule, options.num_images)
        images = batch["image"].to(device)
        masks = batch["mask"].to(device) if "mask" in batch else None
        results: dict[str, dict[str, float]] = {}
        curves: dict[str, dict[str, Tensor]] = {}
        all_maps: dict[str, Tensor] = {}
        task = progress.add_task("attention metrics", total=len(methods))
        for method in methods:
            maps = method_maps(method, model, images, options.batch_size, cam_options.get(method))
            stability_fn = (lambda x: own_maps(model, x, options.batch_size)) if method == OWN else None
            results[method], curves[method] = map_quality(
                model,
                images,
                maps,
                masks,
                faithfulness=options.faithfulness,
                road=options.road,
                batch_size=options.batch_size,
                pixels_per_step=options.get("pixels_per_step"),
                stability_fn=stability_fn,
            )
            all_maps[method] = maps.cpu()
            progress.advance(task)
    report["num_images"] = int(images.shape[0])
    report["maps"] = results
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=_json_float))
    table = markdown_table(results)
    accuracy = ", ".join(f"{k} {v:.4f}" for k, v in report["test"].items())
    fam_line = f"FAM's reference: {report['fam_reference']}\n\n" if "fam_reference" in report else ""
    (output_dir / "metrics.md").write_text(f"# {cfg.ckpt_path}\n\nTest: {accuracy}\n\n{fam_line}{table}")
    if options.faithfulness:
        save_curves(output_dir / "deletion_insertion.png", curves)
    shown = slice(0, min(8, images.shape[0]))
    denormalize = getattr(datamodule, "denormalize", lambda t: t)
    save_overlay_grid(
        output_dir / "overlays.png",
        denormalize(images[shown]).cpu(),
        {m: all_maps[m][shown] for m in methods},
        columns=8,
    )
    print(f"Test: {accuracy}")
    if fam_line:
        print(fam_line.strip())
    print_table(f"Attention quality on {report['num_images']} test images", results)
    print(f"Results written to {output_dir}")
    return report


def _data_config(cfg: DictConfig) -> dict[str, Any]:
    if cfg.get("data"):
        return OmegaConf.to_container(cfg.data, resolve=True)
    return checkpoint_data_config(cfg.ckpt_path)


def _json_float(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    return str(value)


def find_checkpoints(runs: Any) -> list[Path]:
    """Checkpoints of a sweep folder (one per run folder: the best, else last) or of a list of paths."""
    items = [runs] if isinstance(runs, str | Path) else list(runs)
    found: list[Path] = []
    for item in items:
        path = Path(str(item)).expanduser()
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            folders = sorted({p.parent.parent for p in path.glob("**/checkpoints/*.ckpt")})
            for folder in folders:
                best = sorted((folder / "checkpoints").glob("epoch_*.ckpt"))
                found.append(best[-1] if best else folder / "checkpoints" / "last.ckpt")
        else:
            raise UserError(
                f"stability.runs entry {str(path)!r} is neither a checkpoint nor a folder of runs."
            )
    return found


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
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    datamodule = build_test_data(configs[0], cfg.paths.data_dir, {})
    batch = first_test_images(datamodule, options.num_images)
    images, ids = batch["image"].to(device), batch["index"]
    runs = []
    for path in paths:
        model = load(path, map_location=device)
        runs.append(
            {
                "checkpoint": str(path),
                "attention": model.lficam_metadata["model_config"].get("attention"),
                "maps": own_maps(model, images, options.batch_size),
            }
        )
    n = len(runs)
    iou = torch.full((n, n), float("nan"))
    rho = torch.full((n, n), float("nan"))
    for i in range(n):
        for j in range(i, n):  # both measures are symmetric: each pair once, mirrored
            iou[i, j] = iou[j, i] = _nanmean(
                M.map_iou(runs[i]["maps"], runs[j]["maps"], threshold=options.threshold)
            )
            rho[i, j] = rho[j, i] = _nanmean(M.rank_correlation(runs[i]["maps"], runs[j]["maps"]))
    groups: dict[str, dict[str, float]] = {}
    for kind in sorted({r["attention"] for r in runs}):
        members = [i for i, r in enumerate(runs) if r["attention"] == kind]
        pairs = [(a, b) for x, a in enumerate(members) for b in members[x + 1 :]]
        if not pairs:
            continue
        pi = torch.tensor([float(iou[a, b]) for a, b in pairs])
        pr = torch.tensor([float(rho[a, b]) for a, b in pairs])
        groups[kind] = {
            "runs": len(members),
            "pairs": len(pairs),
            "iou_mean": float(pi.mean()),
            "iou_std": float(pi.std(unbiased=False)),
            "spearman_mean": float(pr.mean()),
            "spearman_std": float(pr.std(unbiased=False)),
        }
    if not groups:
        raise UserError(
            "Every attention kind in stability.runs has a single run; train at least two of one kind."
        )
    report = {
        "threshold": options.threshold,
        "num_images": int(images.shape[0]),
        "image_ids": ids.tolist(),
        "runs": [{"checkpoint": r["checkpoint"], "attention": r["attention"]} for r in runs],
        "iou_matrix": iou.tolist(),
        "spearman_matrix": rho.tolist(),
        "by_attention": groups,
    }
    (output_dir / "stability.json").write_text(json.dumps(report, indent=2))
    save_matrices(
        output_dir / "stability.png", iou, rho, [f"{i}:{r['attention']}" for i, r in enumerate(runs)]
    )
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Cross-run stability of the own maps on {report['num_images']} test images")
    for column in ("attention", "runs", "pairs", "IoU mean ± std", "Spearman mean ± std"):
        table.add_column(column)
    for kind, g in groups.items():
        table.add_row(
            kind,
            str(g["runs"]),
            str(g["pairs"]),
            f"{g['iou_mean']:.3f} ± {g['iou_std']:.3f}",
            f"{g['spearman_mean']:.3f} ± {g['spearman_std']:.3f}",
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


def run_eval(cfg: DictConfig) -> dict[str, Any] | None:
    """Hydra task body of ``eval.py``: one of the two commands, a user's mistake as one sentence."""
    from lficam.train import quiet_known_warnings

    quiet_known_warnings()
    try:
        if cfg.get("stability") and cfg.stability.get("runs"):
            return evaluate_stability(cfg)
        if not cfg.get("ckpt_path"):
            raise UserError(
                "Nothing to evaluate: pass ckpt_path=<run>/checkpoints/<file>.ckpt or stability.runs=<sweep folder>."
            )
        if cfg.eval.get("task", "classification") != "classification":  # lficam/retrieval.py
            from lficam.retrieval import check_task, evaluate_retrieval

            check_task(str(cfg.eval.task))
            return evaluate_retrieval(cfg)
        return evaluate_checkpoint(cfg)
    except UserError as error:
        log.error("%s", error)
        raise SystemExit(2) from None
