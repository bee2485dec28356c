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
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from lficam import cams as cam_methods
from lficam import metrics as M
from lficam.data.base import first_items
from lficam.errors import UnknownNameError, UserError
from lficam.loading import load, read_checkpoint
from lficam.maps import upsample
from lficam.metrics.faithfulness import default_pixels_per_step
from lficam.progress import StageProgress

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
#: the keys a protocol sets (conf/eval.yaml ``protocols``); an ``eval.<key>`` that is not null overrides it
PROTOCOL_KEYS = ("num_images", "curve_steps", "road_percentages")


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


def protocol_options(options: DictConfig, protocols: DictConfig | None) -> dict[str, Any]:
    """The protocol's values (``protocols[eval.protocol]``) with every ``eval.<key>`` that is not null on top;
    a value no evaluation can use is one sentence naming the key it came from."""
    name = options.get("protocol") or "quick"
    protocols = protocols or {}
    if name not in protocols:
        raise UnknownNameError("eval.protocol", name, list(protocols))
    chosen = OmegaConf.to_container(protocols[name], resolve=True)
    given = {k: options.get(k) for k in PROTOCOL_KEYS if options.get(k) is not None}
    chosen.update(OmegaConf.to_container(OmegaConf.create(given), resolve=True))
    for key in PROTOCOL_KEYS:
        source = f"eval.{key}" if key in given else f"protocols.{name}.{key}"
        if key == "road_percentages":
            check_fractions(source, chosen.get(key))
        else:
            check_count(source, chosen.get(key), _MEANING[key])
    return {"protocol": name, **chosen}


#: what each count of conf/eval.yaml is, for the sentence that refuses a value
_MEANING = {
    "num_images": "a number of test images to score the maps on",
    "curve_steps": "a number of deletion/insertion steps",
    "pixels_per_step": "a number of pixels per deletion/insertion step",
    "batch_size": "a number of images per batch",
    "retrieval_pictures": "a number of retrieval queries to draw",
}


def check_count(key: str, value: Any, meaning: str, least: int = 1) -> None:
    """Refuse a count that is not a whole number of at least ``least`` (a bool is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserError(f"{key}={value!r} is not {meaning}; use a whole number of at least {least}.")


def check_fractions(key: str, value: Any) -> None:
    """ROAD's removed fractions: a non-empty list of numbers strictly between 0 and 1."""
    numbers = isinstance(value, list | tuple) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    )
    if not numbers or not value or not all(0 < v < 1 for v in value):
        raise UserError(
            f"{key}={value!r} is not a list of fractions of the image to remove; give numbers strictly between "
            "0 and 1, e.g. eval.road_percentages=[0.2,0.5,0.8]."
        )


def check_options(cfg: DictConfig) -> None:
    """The counts of conf/eval.yaml that no evaluation can use (0 or negative images, steps, batches): one
    sentence before a model is loaded. The protocol's values are checked by :func:`protocol_options`."""
    options = cfg.get("eval") or {}
    if options.get("pixels_per_step") is not None:
        check_count("eval.pixels_per_step", options.pixels_per_step, _MEANING["pixels_per_step"])
    check_count("eval.batch_size", options.get("batch_size"), _MEANING["batch_size"])
    check_count(
        "eval.retrieval_pictures", options.get("retrieval_pictures", 8), _MEANING["retrieval_pictures"], 0
    )
    protocol_options(options, cfg.get("protocols"))


def check_stability_options(options: DictConfig) -> None:
    """``stability.*``: counts of at least 1 and a threshold that selects part of a map's range."""
    check_count("stability.num_images", options.get("num_images"), "a number of test images to compare")
    check_count("stability.batch_size", options.get("batch_size"), _MEANING["batch_size"])
    threshold = options.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold < 1:
        raise UserError(
            f"stability.threshold={threshold!r} is not a fraction of a map's range; use a number from 0 up to "
            "(not including) 1, e.g. the paper's 0.39215686 (100/255)."
        )


# ------------------------------------------------------------------------------------------- computing


@torch.no_grad()
def pass_over_test_split(
    model: nn.Module, datamodule: Any, device: torch.device, num_images: int
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """One pass over the test split, as the training module's test: top-1/top-5 accuracy and mean
    cross-entropy of every image, and the first ``num_images`` images kept with their labels, ids, masks,
    and own maps at image size (the maps every metric of the own map then uses)."""
    correct1 = correct5 = total = 0
    loss = 0.0
    kept: dict[str, list[Tensor]] = {}
    classes = 0
    for batch in datamodule.test_dataloader():
        x, y = batch["image"].to(device), batch["label"].to(device)
        output = model(x)
        logits = output.logits.float()
        classes = logits.shape[1]
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, classes), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        room = num_images - total
        if room > 0:
            part = {k: v[:room].to(device) for k, v in batch.items() if isinstance(v, Tensor)}
            part["maps"] = upsample(output.attention[:room], x.shape[-2:])
            for key, value in part.items():
                kept.setdefault(key, []).append(value)
        total += len(y)
    if total == 0:
        raise UserError(
            f"The test split of {type(datamodule).__name__} is empty: evaluate on data with test images "
            "(e.g. data.test_size=1000, or data=<name> with a test split)."
        )
    result = {"acc": correct1 / total, "loss": loss / total}
    if classes > 5:
        result["acc_top5"] = correct5 / total
    return result, {key: torch.cat(parts) for key, parts in kept.items()}


def cam_maps(
    name: str, model: nn.Module, images: Tensor, batch_size: int, options: dict[str, Any] | None = None
) -> Tensor:
    """Maps of a post-hoc CAM method for the predicted classes, at the images' size."""
    cam = cam_methods.create(name, model, **(options or {}))
    return torch.cat([cam(chunk) for chunk in images.split(batch_size)])


def map_quality(
    model: nn.Module,
    probe: dict[str, Tensor],
    maps: Tensor,
    options: dict[str, Any],
    progress: StageProgress,
    method: str,
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Every metric of method.md §4 for one set of maps of the probe images: means over the images (NaN
    left out; the pointing game per class, then over classes, as in training) and the deletion/insertion
    curves. ``options``: the protocol's values and the switches of conf/eval.yaml."""
    images, batch = probe["image"], options["batch_size"]
    values: dict[str, Tensor | float] = {}
    curves: dict[str, Tensor] = {}
    if "mask" in probe:
        with progress.stage(f"{method}: localisation"):
            # stage: one warning counts the probe's images without an object (once for all methods)
            pointing = M.PointingGame(options["num_classes"], stage="test").to(images.device)
            pointing.update(maps, probe["mask"], probe["label"])
            values["pointing_game"] = float(pointing.compute())
            values["energy_pointing_game"] = M.energy_pointing_game(maps, probe["mask"])
            values["mask_iou"] = M.mask_iou(maps, probe["mask"])
    if options["faithfulness"]:
        steps = {"pixels_per_step": options["pixels_per_step"], "batch_size": batch}
        with progress.stage(f"{method}: deletion, insertion"):
            fractions, deletion = M.deletion_curve(model, images, maps, **steps)
            _, insertion = M.insertion_curve(model, images, maps, **steps)
        values["deletion_auc"] = torch.trapezoid(deletion, fractions, dim=1)
        values["insertion_auc"] = torch.trapezoid(insertion, fractions, dim=1)
        curves = {"fractions": fractions, "deletion": deletion, "insertion": insertion}
        with progress.stage(f"{method}: average drop, increase in confidence"):
            clean, masked = M.masked_scores(model, images, maps, batch_size=batch)
        values["average_drop"] = M.drop_from_scores(clean, masked)
        values["increase_in_confidence"] = M.increase_from_scores(clean, masked)
    if options["road"]:
        with progress.stage(f"{method}: ROAD"):
            scores = M.road(
                model, images, maps, percentages=tuple(options["road_percentages"]), batch_size=batch
            )
        values.update(road_morf=scores.morf, road_lerf=scores.lerf, road_combined=scores.combined)
    if method == OWN:
        with progress.stage(f"{method}: stability"):
            for kind in ("noise", "flip"):
                values[f"stability_{kind}_iou"] = M.perturbation_stability(
                    M.attention_map_fn(model),
                    images,
                    kind,
                    batch_size=batch,
                    base_maps=maps,
                ).iou
    return {k: v if isinstance(v, float) else _nanmean(v) for k, v in values.items()}, curves


def stage_costs(
    methods: list[str], options: dict[str, Any], has_masks: bool, test_size: int, channels: int
) -> dict[str, float]:
    """Every stage of :func:`evaluate_checkpoint` and its relative cost, for the estimate of the time left.

    The unit is one test image through the model in the test pass; the factors were measured with a CIFAR
    ResNet-20 on a CPU (a perturbed image costs about 2, a ROAD imputation about 14, a Score-CAM mask 4)."""
    n = options["num_images"]
    points = math.ceil(options["image_pixels"] / options["pixels_per_step"]) + 1
    costs = {"test split": float(test_size)}
    for method in methods:
        if method != OWN:
            costs[f"{method}: maps"] = n * (4.0 * (channels + 1) if method == "scorecam" else 5.0)
        if has_masks:
            costs[f"{method}: localisation"] = 0.1 * n
        if options["faithfulness"]:
            costs[f"{method}: deletion, insertion"] = 2.0 * 2 * n * points
            costs[f"{method}: average drop, increase in confidence"] = 4.0 * n
        if options["road"]:
            costs[f"{method}: ROAD"] = 14.0 * 2 * n * len(options["road_percentages"])
        if method == OWN:
            costs[f"{method}: stability"] = 11.0 * n  # four noise draws and a flip
    return costs


def _nanmean(values: Tensor) -> float:
    """Mean over images with undefined (NaN) values left out; NaN when none is defined."""
    return float(values.float().nanmean())


# ------------------------------------------------------------------------------------------- reporting


def _label(metric: str) -> str:
    return f"{metric} {'↑' if METRICS[metric][0] else '↓'}"


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
    methods, groups, used = list(results), [[]], label_width
    for method in methods:
        column = max(len(method), 7) + 3  # 3: padding on both sides and the column separator
        if groups[-1] and used + column > width:
            groups.append([])
            used = label_width
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
    from rich.console import Console

    from lficam.viz import save_deletion_insertion, save_overlay_grid

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load(cfg.ckpt_path, map_location=device).eval()
    data_config = _data_config(cfg)
    datamodule = build_test_data(data_config, cfg.paths.data_dir, dict(cfg.eval.get("data_overrides") or {}))
    check_same_classes(model, datamodule, cfg.ckpt_path, bool(cfg.eval.get("allow_other_data", False)))
    options = {
        **protocol_options(cfg.eval, cfg.get("protocols")),
        "batch_size": cfg.eval.batch_size,
        "faithfulness": cfg.eval.faithfulness,
        "road": cfg.eval.road,
    }
    methods = [OWN, *[cam_methods.method_name(m) for m in cfg.eval.cams]]
    first = datamodule.test_set[0]["image"] if len(datamodule.test_set) else torch.zeros(3, 1, 1)
    height, width = first.shape[-2:]
    options["image_pixels"] = height * width
    options["pixels_per_step"] = cfg.eval.get("pixels_per_step") or default_pixels_per_step(
        height, width, options["curve_steps"]
    )
    channels = getattr(getattr(model, "backbone", None), "out_channels", 64)
    has_masks = bool(getattr(datamodule, "has_masks", False))
    costs = stage_costs(methods, options, has_masks, len(datamodule.test_set), channels)
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
    results: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, Tensor]] = {}
    all_maps: dict[str, Tensor] = {}
    with StageProgress(costs) as progress:
        with progress.stage("test split"):
            report["test"], probe = pass_over_test_split(model, datamodule, device, options["num_images"])
        options["num_classes"] = int(report["model_config"]["num_classes"])
        for method in methods:
            if method == OWN:
                maps = probe["maps"]
            else:
                with progress.stage(f"{method}: maps"):
                    maps = cam_maps(
                        method, model, probe["image"], options["batch_size"], cam_options.get(method)
                    )
            results[method], curves[method] = map_quality(model, probe, maps, options, progress, method)
            all_maps[method] = maps.cpu()
    report["num_images"] = int(probe["image"].shape[0])
    report["protocol"] = {k: options[k] for k in ("protocol", *PROTOCOL_KEYS, "pixels_per_step")}
    report["maps"] = results
    report["wall_time_s"], report["cpu_time_s"] = progress.wall_times, progress.cpu_times
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=_json_float))
    accuracy = ", ".join(f"{k} {v:.4f}" for k, v in report["test"].items())
    fam_line = f"FAM's reference: {report['fam_reference']}\n\n" if "fam_reference" in report else ""
    (output_dir / "metrics.md").write_text(
        f"# {cfg.ckpt_path}\n\nTest: {accuracy}\n\n{fam_line}{markdown_table(results)}"
    )
    if options["faithfulness"]:
        save_deletion_insertion(output_dir / "deletion_insertion.png", curves)
    shown = slice(0, min(8, report["num_images"]))
    denormalize = getattr(datamodule, "denormalize", lambda t: t)
    save_overlay_grid(
        output_dir / "overlays.png",
        denormalize(probe["image"][shown]).cpu(),
        {m: all_maps[m][shown] for m in methods},
        columns=8,
    )
    console = Console()
    console.print(f"Test: {accuracy}")
    if fam_line:
        console.print(fam_line.strip())
    title = f"Attention quality on {report['num_images']} test images ({options['protocol']} protocol)"
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


def best_checkpoint(folder: Path) -> Path:
    """A run folder's best checkpoint, as its ModelCheckpoint recorded it: ``summary.json``'s
    ``best_checkpoint``, else the ``best_model_path`` of the monitoring ModelCheckpoint's state inside
    ``last.ckpt``; ``last.ckpt`` itself when neither names a file. Only files of this folder are used
    (:func:`checkpoint_in_folder`), so a copied run folder is evaluated with its own checkpoints."""
    folder = Path(folder)
    checkpoints = folder / "checkpoints"
    last = checkpoints / "last.ckpt"
    summary = folder / "summary.json"
    if summary.is_file():
        recorded = [json.loads(summary.read_text()).get("best_checkpoint")]
    elif last.is_file():
        states = read_checkpoint(last).get("callbacks") or {}
        recorded = [
            s.get("best_model_path")
            for key, s in states.items()
            if str(key).startswith("ModelCheckpoint") and isinstance(s, dict) and s.get("monitor")
        ]
    else:
        recorded = []
    for path in recorded:
        found = checkpoint_in_folder(folder, path) if path else None
        if found is not None:
            return found
    if last.is_file():
        return last
    raise UserError(
        f"{str(folder)!r} records no best checkpoint and has no checkpoints/last.ckpt; list the checkpoints "
        "to compare in stability.runs=[a.ckpt,b.ckpt]."
    )


def checkpoint_in_folder(folder: Path, recorded: str | Path) -> Path | None:
    """The file of run folder ``folder`` that a recorded checkpoint path names, or None.

    train.py records paths relative to the run folder. An absolute path (older runs, Lightning's own state)
    counts where it lies inside the folder; one outside it (the folder was copied or moved, and the original
    may still be there) is never followed: its namesake in the folder's ``checkpoints/`` is used instead, with
    a warning."""
    path = Path(str(recorded))
    inside = _part_of(folder, path)
    if inside is not None:
        candidate = folder / inside
        return candidate if candidate.is_file() else None
    namesake = folder / "checkpoints" / path.name
    log.warning(
        "%s records the checkpoint %s, outside the run folder (copied or moved); using %s instead.",
        folder,
        path,
        namesake if namesake.is_file() else "the folder's own checkpoints",
    )
    return namesake if namesake.is_file() else None


def _part_of(folder: Path, path: Path) -> Path | None:
    """``path`` relative to ``folder`` when it lies inside it (symbolic links resolved), else None; a relative
    path is taken as relative to the folder, unless it climbs out of it (``..``)."""
    if not path.is_absolute():
        return None if ".." in path.parts else path
    for a, b in ((path, folder), (path.resolve(), folder.resolve())):
        try:
            return a.relative_to(b)
        except ValueError:
            continue
    return None


def find_checkpoints(runs: Any) -> list[Path]:
    """Checkpoints of a sweep folder (one per run folder: the best, else last) or of a list of paths."""
    items = [runs] if isinstance(runs, str | Path) else list(runs)
    found: list[Path] = []
    for item in items:
        path = Path(str(item)).expanduser()
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += [
                best_checkpoint(f)
                for f in sorted({p.parent.parent for p in path.glob("**/checkpoints/*.ckpt")})
            ]
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
    batch = first_items(datamodule.test_set, options.num_images)
    images, ids = batch["image"].to(device), batch["index"]
    runs = []
    with StageProgress({str(p): 1.0 for p in paths}) as progress:
        for path in paths:
            with progress.stage(str(path)):
                model = load(path, map_location=device).eval()
                attention = model.lficam_metadata["model_config"].get("attention")
                own = M.attention_map_fn(model)
                maps = torch.cat([own(chunk) for chunk in images.split(options.batch_size)])
                runs.append({"checkpoint": str(path), "attention": attention, "maps": maps})
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
            check_stability_options(cfg.stability)
            return evaluate_stability(cfg)
        if not cfg.get("ckpt_path"):
            raise UserError(
                "Nothing to evaluate: pass ckpt_path=<run>/checkpoints/<file>.ckpt or stability.runs=<sweep folder>."
            )
        check_options(cfg)
        if cfg.eval.get("task", "classification") != "classification":  # lficam/retrieval.py
            from lficam.retrieval import check_task, evaluate_retrieval

            check_task(str(cfg.eval.task))
            return evaluate_retrieval(cfg)
        return evaluate_checkpoint(cfg)
    except UserError as error:
        log.error("%s", error)
        raise SystemExit(2) from None
