"""The study's numbers, per data set, from the runs' records and metrics (what docs/results.json holds).

Statistics over seeds are mean ± sample std (n − 1); over pairs of runs mean ± population std (as eval.py).
A difference of two means a − b comes with its spread √(s_a² + s_b²), the std of the difference of one run of
each: the report calls a difference "inside the seed spread" when |a − b| ≤ that spread.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

from lficam.study.attention import METRICS, OWN
from lficam.study.plan import Run


def _numbers(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def stat(values: Iterable[Any]) -> dict[str, Any]:
    """{"mean", "std", "n", "values"} of the defined values; std is NaN below two values."""
    numbers = _numbers(values)
    return {
        "mean": statistics.fmean(numbers) if numbers else math.nan,
        "std": statistics.stdev(numbers) if len(numbers) > 1 else math.nan,
        "n": len(numbers),
        "values": numbers,
    }


def _value(x: Any) -> float:
    return math.nan if x is None else float(x)


def difference(
    a: dict[str, Any], b: dict[str, Any], mean: str = "mean", std: str = "std"
) -> dict[str, float]:
    """a − b with its spread √(s_a² + s_b²) (NaN where a std is unknown)."""
    diff = _value(a.get(mean)) - _value(b.get(mean))
    spread = math.sqrt(_value(a.get(std)) ** 2 + _value(b.get(std)) ** 2)
    return {"diff": diff, "spread": spread}


def attention_table(reports: dict[str, dict[str, Any]], runs: list[Run]) -> dict[str, dict[str, Any]]:
    """``"<model>/<method>"`` → metric → stat over the seeds' runs."""
    table: dict[str, dict[str, list[Any]]] = {}
    for run in runs:
        report = reports.get(run.name)
        if not run.accuracy or report is None:
            continue
        for method, values in report["maps"].items():
            row = table.setdefault(f"{run.model}/{method}", {})
            for metric in METRICS:
                if metric in values:
                    row.setdefault(metric, []).append(values[metric])
    return {key: {metric: stat(v) for metric, v in row.items()} for key, row in table.items()}


def aggregate_dataset(
    spec: Any,
    runs: list[Run],
    records: dict[str, dict[str, Any]],
    reports: dict[str, dict[str, Any]],
    stability: dict[str, Any],
    step_time: dict[str, Any] | None,
    models: list[str],
    stability_models: list[str],
) -> dict[str, Any]:
    """Everything results.md says about one data set."""
    rows = []
    for run in runs:
        record, report = records.get(run.name, {}), reports.get(run.name)
        rows.append(
            {
                "name": run.name,
                "model": run.model,
                "setting": run.setting,
                "seed": run.seed,
                "accuracy_run": run.accuracy,
                "stability_run": run.stability,
                "status": record.get("status", "missing"),
                "error": record.get("error"),
                "train_wall_s": record.get("wall_s"),
                "eval_wall_s": report.get("wall_s") if report else None,
                "command": record.get("command"),
                "test_acc": report.get("test_acc") if report else None,
                "val_acc_best": report.get("val_acc_best") if report else None,
                "own_pointing_game": report["maps"][OWN].get("pointing_game") if report else None,
            }
        )
    by_name = {r["name"]: r for r in rows}
    accuracy = {
        model: stat(by_name[r.name]["test_acc"] for r in runs if r.model == model and r.accuracy)
        for model in models
    }
    by_setting = {
        model: {
            r.setting: {
                "test_acc": by_name[r.name]["test_acc"],
                "own_pointing_game": by_name[r.name]["own_pointing_game"],
            }
            for r in runs
            if r.model == model and r.stability
        }
        for model in stability_models
    }
    attention = attention_table(reports, runs)
    groups = stability["groups"]
    light = {}
    if "lficam" in models and "lficam_lite" in models:
        paper, lite = "lficam/" + OWN, "lficam_lite/" + OWN
        light["test_acc"] = {**difference(accuracy["lficam_lite"], accuracy["lficam"])}
        for metric in ("pointing_game", "energy_pointing_game", "stability_noise_iou", "stability_flip_iou"):
            if metric in attention.get(paper, {}) and metric in attention.get(lite, {}):
                light[metric] = difference(attention[lite][metric], attention[paper][metric])
        if f"seeds:{lite}" in groups and f"seeds:{paper}" in groups:
            light["cross_seed_iou"] = difference(
                groups[f"seeds:{lite}"], groups[f"seeds:{paper}"], "iou_mean", "iou_std"
            )
        walls = {
            m: stat(by_name[r.name]["train_wall_s"] for r in runs if r.model == m and r.accuracy)
            for m in ("lficam", "lficam_lite")
        }
        light["run_wall_ratio"] = walls["lficam_lite"]["mean"] / walls["lficam"]["mean"]
        if step_time:
            seconds = step_time["seconds_per_step"]
            light["step_time_ratio"] = seconds["lficam_lite"] / seconds["lficam"]
    wall_train = sum(_value(r["train_wall_s"]) for r in rows if r["train_wall_s"] is not None)
    wall_eval = sum(_value(r["eval_wall_s"]) for r in rows if r["eval_wall_s"] is not None)
    return {
        "title": str(spec.get("title", "")),
        "why": str(spec.get("why", "")),
        "overrides": [str(o) for o in (spec.get("overrides") or [])],
        "budget": [str(o) for o in (spec.get("budget") or [])],
        "runs": rows,
        "failed": [r["name"] for r in rows if r["status"] != "done"],
        "accuracy": accuracy,
        "by_setting": by_setting,
        "attention": attention,
        "stability": stability,
        "light_vs_paper": light,
        "step_time": step_time,
        "wall_s": {"train": wall_train, "eval": wall_eval},
    }
