"""The study from start to end: train what is missing, score every run, compare runs, write the numbers, the
pictures and results.md. ``reproduce.py`` calls :func:`run_study` with the composed ``conf/reproduce.yaml``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import lficam
from lficam.checkpoints.loading import read_checkpoint
from lficam.core.devices import choose_device
from lficam.core.errors import UserError, os_error_reason
from lficam.evaluation.maps import map_fn, maps_of
from lficam.study import attention
from lficam.study.figures import accuracy_figure, maps_figure, pointing_figure, stability_figure
from lficam.study.launch import RECORD, Progress, duration, read_json, train_run, trained, write_json
from lficam.study.plan import CONF, ROOT, Run, plan_runs
from lficam.study.report import render
from lficam.study.results import aggregate_dataset
from lficam.study.stability import stability_groups
from lficam.study.steptime import measure_step_times


def _names(node: Any) -> list[str]:
    return [str(x) for x in (node or [])]


def _device(study: Any) -> torch.device:
    return choose_device(study.eval.get("device"))


def _methods(study: Any, run: Run) -> list[str]:
    if run.accuracy and run.model in _names(study.eval.cam_models):
        return [attention.OWN, *_names(study.eval.cams)]
    return [attention.OWN]


def train_all(study: Any, runs: list[Run], runs_dir: Path) -> dict[str, dict[str, Any]]:
    """Train every run not trained yet, printing progress; returns each run's record."""
    pending = {r.name for r in runs if not trained(r, runs_dir / r.name)}
    print(
        f"Training: {len(runs)} runs, {len(runs) - len(pending)} done before, {len(pending)} to train.",
        flush=True,
    )
    progress = Progress(len(runs), len(pending), "train")
    records = {}
    for run in runs:
        folder = runs_dir / run.name
        if run.name not in pending:
            records[run.name] = read_json(folder / RECORD) or {}
            progress.step(run.name, "trained before, reused")
            continue
        record = train_run(run, folder, str(study.launcher))
        records[run.name] = record
        message = f"{record['status']} in {duration(record['wall_s'])}"
        if record["status"] != "done":
            message += f" ({record.get('error', '')[:200]})"
        progress.step(run.name, message, record["wall_s"])
    return records


def evaluate_all(
    study: Any, runs: list[Run], runs_dir: Path, records: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], dict[str, attention.TestImages]]:
    """Score every finished run on its data set's test images (cached per run); returns reports and images."""
    device = _device(study)
    done = [r for r in runs if records.get(r.name, {}).get("status") == "done"]
    options = study.eval
    pending = [
        r
        for r in done
        if attention.cached(runs_dir / r.name, options, _methods(study, r), r.accuracy) is None
    ]
    print(f"Attention metrics: {len(done)} runs, {len(pending)} to score.", flush=True)
    progress = Progress(len(done), len(pending), "score")
    tests: dict[str, attention.TestImages] = {}
    reports = {}
    for run in done:
        folder = runs_dir / run.name
        if run.dataset not in tests:
            tests[run.dataset] = attention.load_test_images(
                attention.best_checkpoint(folder), int(options.images), device
            )
        methods = _methods(study, run)
        report = attention.cached(folder, options, methods, run.accuracy)
        if report is not None:
            reports[run.name] = report
            progress.step(run.name, "scored before, reused")
            continue
        start = time.perf_counter()
        reports[run.name] = attention.evaluate_run(
            folder, tests[run.dataset], methods, options, run.accuracy, device
        )
        seconds = time.perf_counter() - start
        progress.step(run.name, f"{len(methods)} map(s) scored in {duration(seconds)}", seconds)
    return reports, tests


def cross_run(
    study: Any, runs: list[Run], runs_dir: Path, reports: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Per data set: the stability entries (settings' own maps, seeds' kept maps), matrices and group statistics."""
    out = {}
    for dataset in _names(study.datasets):
        entries, groups = [], {}
        for run in runs:
            if run.dataset != dataset or run.name not in reports:
                continue
            kept = attention.kept_maps(runs_dir / run.name)
            if run.stability:
                label = f"{run.model} {run.setting}"
                entries.append({"label": label, "maps": kept[attention.OWN]})
                groups.setdefault(f"settings:{run.model}", []).append(label)
            if run.accuracy:
                for method, maps in kept.items():
                    label = f"{run.model} seed{run.seed} {method}"
                    entries.append({"label": label, "maps": maps})
                    groups.setdefault(f"seeds:{run.model}/{method}", []).append(label)
        out[dataset] = stability_groups(entries, groups) if entries else {"labels": [], "groups": {}}
    return out


def step_times(study: Any, runs: list[Run], runs_dir: Path, records: dict[str, Any]) -> dict[str, Any]:
    """Per data set, the side-by-side step time of every model, on the seed-0 accuracy runs' configs (cached)."""
    out: dict[str, Any] = {}
    rounds = int(study.step_time.rounds)
    for dataset in _names(study.datasets):
        first = {}
        for run in runs:
            done = records.get(run.name, {}).get("status") == "done"
            if run.dataset == dataset and run.accuracy and run.model not in first and done:
                first[run.model] = run
        if not first or rounds < 1:
            continue
        any_run = runs_dir / next(iter(first.values())).name
        hparams = read_checkpoint(attention.best_checkpoint(any_run))["hyper_parameters"]
        data = hparams["data_config"]
        configs = {
            m: read_checkpoint(attention.best_checkpoint(runs_dir / r.name))["hyper_parameters"][
                "model_config"
            ]
            for m, r in first.items()
        }
        run_config = OmegaConf.load(any_run / ".hydra" / "config.yaml")
        precision = str(run_config.trainer.precision)
        optimizer = OmegaConf.to_container(run_config.optimizer, resolve=True)
        size = int(
            data.get("image_size")
            or attention.load_test_images(
                attention.best_checkpoint(any_run), 1, torch.device("cpu")
            ).images.shape[-1]
        )
        key = {
            "configs": configs,
            "image_size": size,
            "batch_size": int(data["batch_size"]),
            "precision": precision,
            "optimizer": optimizer,
            "rounds": rounds,
        }
        path = runs_dir / dataset / "step_time.json"
        previous = read_json(path)
        if previous and previous.get("key") == json.loads(json.dumps(key)):
            out[dataset] = previous["result"]
            continue
        print(f"Step time on {dataset}: {len(configs)} models, {rounds} interleaved rounds.", flush=True)
        result = measure_step_times(
            configs,
            size,
            int(data["batch_size"]),
            precision=precision,
            rounds=rounds,
            device=str(_device(study)),
            optimizer=optimizer,
        )
        write_json(path, {"key": key, "result": result})
        out[dataset] = result
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def software_and_machine() -> tuple[dict[str, str], dict[str, str]]:
    import hydra
    import lightning
    import torchmetrics

    software = {
        "lficam": f"{lficam.__version__} (git {_git_commit()})",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torchmetrics": torchmetrics.__version__,
        "hydra": hydra.__version__,
    }
    machine = {
        "platform": platform.platform(),
        "CPU": f"{_cpu_name()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    return software, machine


def _command() -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return " ".join(["python reproduce.py", *HydraConfig.get().overrides.task])
    return "lficam.study.run_study(cfg)  # from Python"


def paper_scale(study: Any) -> dict[str, Any] | None:
    """How many runs the study of the paper's data sets on a GPU has, and its estimated GPU time."""
    name = study.get("paper_scale")
    if not name:
        return None
    paper = OmegaConf.load(CONF / "study" / f"{name}.yaml")
    runs = plan_runs(paper)
    datasets = {}
    for dataset in _names(paper.datasets):
        count = sum(r.dataset == dataset for r in runs)
        hours = float(paper.data_sets[dataset].estimate_gpu_hours_per_run)
        datasets[dataset] = {"runs": count, "hours_per_run": hours, "hours": count * hours}
    return {
        "command": str(paper.command),
        "runs": len(runs),
        "basis": " ".join(str(paper.estimate_basis).split()),
        "datasets": datasets,
        "hours": sum(d["hours"] for d in datasets.values()),
    }


def figures(
    study: Any,
    results: dict[str, Any],
    runs: list[Run],
    runs_dir: Path,
    tests: dict[str, Any],
    docs_dir: Path,
) -> None:
    figures_dir = docs_dir / "figures"
    accuracy_figure(results, figures_dir / "accuracy.png")
    pointing_figure(results, figures_dir / "pointing_game.png")
    count = int(study.figure_images)
    device = _device(study)
    for dataset, ds in results["datasets"].items():
        stability = ds["stability"]
        if stability.get("labels"):
            shown = [
                label
                for g, v in stability["groups"].items()
                if g.startswith("settings:") or g in ("seeds:plain/own", "seeds:plain/gradcam")
                for label in v["members"]
            ]
            stability_figure(dataset, stability, shown, figures_dir / f"stability_{dataset}.png")
        if dataset not in tests:
            continue
        test = tests[dataset]
        maps: dict[str, torch.Tensor] = {}
        for run in runs:  # the first seed's run of every model, every map the study scored on it
            if run.dataset != dataset or not run.accuracy or run.seed != int(study.seeds[0]):
                continue
            if ds and any(r["name"] == run.name and r["status"] != "done" for r in ds["runs"]):
                continue
            model = attention.load(attention.best_checkpoint(runs_dir / run.name), map_location=device).eval()
            for method in _methods(study, run):
                maps[f"{run.model}/{method}"] = maps_of(
                    map_fn(model, method), test.images[:count], count
                ).cpu()
        if maps:
            order = _display_order(list(maps), _names(study.models))
            maps_figure(
                test.display[:count], {k: maps[k] for k in order}, figures_dir / f"maps_{dataset}.png"
            )


def _display_order(keys: list[str], models: list[str]) -> list[str]:
    own = [f"{m}/{attention.OWN}" for m in models if f"{m}/{attention.OWN}" in keys]
    return own + [k for m in models for k in keys if k.startswith(f"{m}/") and k not in own]


def writable_folder(key: str, folder: Path) -> None:
    """Make ``folder`` (the value of config ``key``), or say in one sentence why it cannot be a folder the study
    writes into."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", str(folder))
    except OSError as error:
        raise UserError(
            f"{key}={folder} cannot be a folder the study writes into ({os_error_reason(error)}); give a folder "
            f"you can write with {key}=<folder>."
        ) from None


def run_study(cfg: DictConfig) -> dict[str, Any]:
    """The whole study (see :mod:`lficam.study`); returns what results.json holds."""
    start = time.perf_counter()
    study = cfg.study
    runs_dir, docs_dir = Path(str(study.runs_dir)), Path(str(study.docs_dir))
    runs = plan_runs(study)
    for key, folder in (("study.runs_dir", runs_dir), ("study.docs_dir", docs_dir)):
        writable_folder(key, folder)  # before hours of training, not after
    print(f"Study {study.name}: {len(runs)} runs in {runs_dir}; results to {docs_dir}.", flush=True)
    parts: dict[str, float] = {}

    def timed(name: str, fn, *args):
        t = time.perf_counter()
        value = fn(*args)
        parts[name] = time.perf_counter() - t
        return value

    records = timed("training", train_all, study, runs, runs_dir)
    reports, tests = timed("attention metrics", evaluate_all, study, runs, runs_dir, records)
    stability = timed("cross-run stability", cross_run, study, runs, runs_dir, reports)
    steps = timed("step times", step_times, study, runs, runs_dir, records)
    software, machine = software_and_machine()
    results: dict[str, Any] = {
        "study": {
            **OmegaConf.to_container(study, resolve=True),
            "datasets": _names(study.datasets),
        },
        "datasets": {},
    }
    for dataset in _names(study.datasets):
        mine = [r for r in runs if r.dataset == dataset]
        results["datasets"][dataset] = aggregate_dataset(
            study.data_sets[dataset],
            mine,
            records,
            reports,
            stability[dataset],
            steps.get(dataset),
            _names(study.models),
            _names(study.stability_models),
        )
    results["paper_scale"] = paper_scale(study)
    docs_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    results["meta"] = {"command": _command(), "runs_dir": str(runs_dir)}
    figures(study, results, runs, runs_dir, tests, docs_dir)
    parts["figures"] = time.perf_counter() - t
    results["meta"].update(
        {
            "finished": time.strftime("%Y-%m-%d %H:%M"),
            "parts_s": parts,
            "wall_s": time.perf_counter() - start,
            "software": software,
            "machine": machine,
        }
    )
    write_json(docs_dir / "results.json", results)
    (docs_dir / "results.md").write_text(render(json.loads((docs_dir / "results.json").read_text())))
    failed = sum(len(d["failed"]) for d in results["datasets"].values())
    print(
        f"Study {study.name} finished in {duration(results['meta']['wall_s'])}: {docs_dir / 'results.md'}"
        + (f" ({failed} failed run(s), listed there)" if failed else ""),
        flush=True,
    )
    return results
