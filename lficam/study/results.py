"""The study's numbers, per data set, from the runs' records and metrics (what docs/results.json holds).

Statistics over seeds are mean ± sample std (n − 1); over pairs of runs mean ± population std (as eval.py).
A difference of two means a − b comes with its spread √(s_a² + s_b²), the std of the difference of one run of
each: the report calls a difference "inside the seed spread" when |a − b| ≤ that spread.

Paths are written so that results.json and results.md read the same on any machine (:func:`portable_path`):
relative to the repository root, else as ``$STUDY_DIR/…`` inside the study folder, else as given.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lficam.core.paths import relative_inside
from lficam.study.attention import METRICS, OWN
from lficam.study.plan import ROOT, Run

#: how a path inside the study folder but outside the repository is written: a shell variable, so that a run's
#: command stays runnable (in the repository root) once ``STUDY_DIR`` is set to wherever the study folder is
STUDY_DIR = "$STUDY_DIR"


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


def portable_path(path: str, study_dir: str | None = None, root: Path = ROOT) -> str:
    """``path`` as results.json and results.md write it, the same on any machine.

    - Under the repository root (the folder of pyproject.toml, where every run's ``train.py`` runs): relative to
      it, e.g. ``outputs/study/full/shapes/lficam/a1_seed0`` (``.`` for the root itself).
    - Else under the study folder ``study_dir`` (absolute): ``$STUDY_DIR/shapes/lficam/a1_seed0``
      (``$STUDY_DIR`` for the folder itself), see :data:`STUDY_DIR`.
    - Else as given: a folder of the user's own (a data set's ``root``, say) names no machine of ours, and a
      relative path is portable already, so that a results.json written so passes unchanged.
    """
    if not Path(path).is_absolute():
        return path
    inside = relative_inside(Path(path), root)
    if inside is not None:
        return inside.as_posix()
    if study_dir and Path(study_dir).is_absolute():
        inside = relative_inside(Path(path), Path(study_dir))
        if inside is not None:
            return STUDY_DIR if inside == Path() else f"{STUDY_DIR}/{inside.as_posix()}"
    return path


def portable_command(command: str, study_dir: str | None = None, root: Path = ROOT) -> str:
    """``command`` with every absolute path in it (a ``key=/path`` override's value, or a whole word) as
    :func:`portable_path` writes it; the other words, and the spaces between words, unchanged."""
    words = []
    for word in command.split(" "):
        key, eq, value = word.partition("=")
        if not eq:  # a word of its own, not an override
            key, value = "", word
        words.append(key + eq + portable_path(value, study_dir, root))
    return " ".join(words)


def study_dir_of(command: str, run_name: str) -> str | None:
    """The study folder a run's command trains into: its ``hydra.run.dir`` less the run's name, since a run
    folder is ``<study folder>/<run name>`` (:func:`lficam.study.pipeline.train_all`); None when the command
    says otherwise."""
    for word in command.split(" "):
        if word.startswith("hydra.run.dir="):
            folder, name = Path(word.partition("=")[2]), Path(run_name).parts
            if folder.parts[-len(name) :] == name:
                return str(folder.parents[len(name) - 1])
    return None


def portable_results(results: dict[str, Any], root: Path = ROOT) -> dict[str, Any]:
    """A copy of results.json's contents with its paths as :func:`portable_path` writes them: the study's
    ``runs_dir``, ``docs_dir`` and data sets' ``root``, ``meta.runs_dir`` and every run's command. The study
    folder is the one it was written with, so that older results.json files, with absolute paths, read as new
    ones; applied twice it changes nothing."""
    out = copy.deepcopy(results)
    study, meta = out.get("study") or {}, out.get("meta") or {}
    study_dir = meta.get("runs_dir") or study.get("runs_dir")
    for part, key in ((study, "runs_dir"), (study, "docs_dir"), (meta, "runs_dir")):
        if isinstance(part.get(key), str):
            part[key] = portable_path(part[key], study_dir, root)
    for spec in (study.get("data_sets") or {}).values():
        if isinstance(spec, dict) and isinstance(spec.get("root"), str):
            spec["root"] = portable_path(spec["root"], study_dir, root)
    for ds in (out.get("datasets") or {}).values():
        for row in ds.get("runs") or []:
            if row.get("command"):
                row["command"] = portable_command(row["command"], study_dir, root)
    return out


def run_row(run: Run, record: dict[str, Any], report: dict[str, Any] | None) -> dict[str, Any]:
    """One run as results.json lists it: its plan, its record's status, error, wall time and command, and its
    report's test accuracy, best validation accuracy and own map's pointing game (None where it was not scored).
    The command is written with :func:`portable_command`, in the study folder its ``hydra.run.dir`` names."""
    command = record.get("command")
    if command:
        command = portable_command(command, study_dir_of(command, run.name))
    return {
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
        "command": command,
        "test_acc": report.get("test_acc") if report else None,
        "val_acc_best": report.get("val_acc_best") if report else None,
        "own_pointing_game": report["maps"][OWN].get("pointing_game") if report else None,
    }


def run_rows(
    runs: list[Run], records: dict[str, dict[str, Any]], reports: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """:func:`run_row` of every run, in plan order; a run without a record counts as ``missing``."""
    return [run_row(run, records.get(run.name, {}), reports.get(run.name)) for run in runs]


def seed_stats(by_name: dict[str, dict[str, Any]], runs: list[Run], key: str, model: str) -> dict[str, Any]:
    """:func:`stat` of the rows' ``key`` over ``model``'s accuracy runs (one per seed)."""
    return stat(by_name[r.name][key] for r in runs if r.model == model and r.accuracy)


def settings_rows(
    by_name: dict[str, dict[str, Any]], runs: list[Run], stability_models: list[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """model → setting → {"test_acc", "own_pointing_game"} of its stability runs, one value per run: the
    stability protocol wants settings of similar accuracy, and this is where the report shows it."""
    return {
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


def light_differences(
    accuracy: dict[str, Any], attention: dict[str, dict[str, Any]], groups: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """The light FIN against the paper's, each as :func:`difference` light − paper with its spread: test
    accuracy, the own maps' localisation and input-stability metrics, and the cross-seed IoU of the own maps."""
    paper, lite = "lficam/" + OWN, "lficam_lite/" + OWN
    light = {"test_acc": {**difference(accuracy["lficam_lite"], accuracy["lficam"])}}
    for metric in ("pointing_game", "energy_pointing_game", "stability_noise_iou", "stability_flip_iou"):
        if metric in attention.get(paper, {}) and metric in attention.get(lite, {}):
            light[metric] = difference(attention[lite][metric], attention[paper][metric])
    if f"seeds:{lite}" in groups and f"seeds:{paper}" in groups:
        light["cross_seed_iou"] = difference(
            groups[f"seeds:{lite}"], groups[f"seeds:{paper}"], "iou_mean", "iou_std"
        )
    return light


def light_ratios(
    by_name: dict[str, dict[str, Any]], runs: list[Run], step_time: dict[str, Any] | None
) -> dict[str, float]:
    """Time light / paper: ``run_wall_ratio`` = mean training wall time of the light FIN's seeds over the paper
    FIN's; ``step_time_ratio`` = seconds per training step, light over paper, from the side-by-side
    measurement (absent when none was made)."""
    walls = {m: seed_stats(by_name, runs, "train_wall_s", m) for m in ("lficam", "lficam_lite")}
    ratios = {"run_wall_ratio": walls["lficam_lite"]["mean"] / walls["lficam"]["mean"]}
    if step_time:
        seconds = step_time["seconds_per_step"]
        ratios["step_time_ratio"] = seconds["lficam_lite"] / seconds["lficam"]
    return ratios


def wall_times(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Σ over the runs of the training and of the attention-scoring wall times, the runs without one left out
    (0 where none has one)."""
    train = sum(_value(r["train_wall_s"]) for r in rows if r["train_wall_s"] is not None)
    scoring = sum(_value(r["eval_wall_s"]) for r in rows if r["eval_wall_s"] is not None)
    return {"train": train, "eval": scoring}


def spec_texts(spec: Any) -> dict[str, Any]:
    """The data set's own words and overrides (study config ``data_sets.<name>``), as plain strings."""
    return {
        "title": str(spec.get("title", "")),
        "why": str(spec.get("why", "")),
        "overrides": [str(o) for o in (spec.get("overrides") or [])],
        "budget": [str(o) for o in (spec.get("budget") or [])],
    }


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
    """Everything results.md says about one data set (pure: it reads only its arguments)."""
    rows = run_rows(runs, records, reports)
    by_name = {r["name"]: r for r in rows}
    accuracy = {model: seed_stats(by_name, runs, "test_acc", model) for model in models}
    attention = attention_table(reports, runs)
    light = {}
    if "lficam" in models and "lficam_lite" in models:
        light = {
            **light_differences(accuracy, attention, stability["groups"]),
            **light_ratios(by_name, runs, step_time),
        }
    return {
        **spec_texts(spec),
        "runs": rows,
        "failed": [r["name"] for r in rows if r["status"] != "done"],
        "accuracy": accuracy,
        "by_setting": settings_rows(by_name, runs, stability_models),
        "attention": attention,
        "stability": stability,
        "light_vs_paper": light,
        "step_time": step_time,
        "wall_s": wall_times(rows),
    }
