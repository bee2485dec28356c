"""The study's runs: which models, seeds and settings are trained, with which ``train.py`` overrides.

Per data set (study config ``data_sets.<name>``):
- accuracy runs: every model of ``models`` under the first stability setting, once per seed of ``seeds``;
- stability runs: every model of ``stability_models`` under each setting of ``settings`` (``conf/setting/<s>.yaml``,
  each with its own seed). The first setting with its own seed is an accuracy run too, so it is trained once.

A run's overrides, in order: the study's ``common``, ``data.root=<root>`` where the data set gives a ``root``, the
data set's ``overrides`` and ``budget``, the model's
(``model_overrides`` of the study, then of the data set), ``+setting=<s>`` and, for accuracy runs, ``seed=<k>``.
The stability setting is a config group so that the run is exactly ``python train.py … +setting=s3``; no other
override may set what a setting sets (it would silently win over it), which :func:`plan_runs` checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lficam.core.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


@dataclass(frozen=True)
class Run:
    """One training run of the study."""

    dataset: str
    model: str
    setting: str
    seed: int
    overrides: tuple[str, ...]
    accuracy: bool  # one of the seeds' runs (accuracy and attention quality)
    stability: bool  # one of the stability settings' runs

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.model}/{self.setting}_seed{self.seed}"


def setting_values(name: str) -> dict[str, Any]:
    """The dotted keys and values a stability setting sets (``conf/setting/<name>.yaml``)."""
    path = CONF / "setting" / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(sorted(p.stem for p in (CONF / "setting").glob("*.yaml")))
        raise UserError(f"Unknown stability setting {name!r} (no {path}); choose from {choices}.")
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(OmegaConf.to_container(OmegaConf.load(path)), "")
    return flat


def _keys(overrides: list[str]) -> set[str]:
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}


def _list(node: Any) -> list[str]:
    return [str(x) for x in (node or [])]


def plan_runs(study: Any) -> list[Run]:
    """Every run of the study, data set by data set, accuracy runs first; each run appears once."""
    settings = _list(study.settings)
    if not settings:
        raise UserError(
            "study.settings is empty: give at least one stability setting, e.g. [s1, s2, s3, s4, s5]."
        )
    seeds = [int(s) for s in study.seeds]
    if not seeds:
        raise UserError("study.seeds is empty: give at least one seed, e.g. [0, 1, 2].")
    unknown = sorted(set(_list(study.stability_models)) - set(_list(study.models)))
    if unknown:
        raise UserError(f"study.stability_models {unknown} are not in study.models {_list(study.models)}.")
    setting_keys = set().union(*(setting_values(s) for s in settings))
    runs: dict[str, Run] = {}
    for dataset in _list(study.datasets):
        if dataset not in study.data_sets:
            raise UserError(
                f"study.datasets names {dataset!r}, which study.data_sets does not define; "
                f"choose from {sorted(study.data_sets)}."
            )
        spec = study.data_sets[dataset]
        for model in _list(study.models):
            if model not in study.model_overrides:
                raise UserError(f"study.models names {model!r} without study.model_overrides.{model}.")
            base = [
                *_list(study.common),
                *([f"data.root={spec.root}"] if spec.get("root") else []),
                *_list(spec.get("overrides")),
                *_list(spec.get("budget")),
                *_list(study.model_overrides[model]),
                *_list((spec.get("model_overrides") or {}).get(model)),
            ]
            clash = sorted(_keys(base) & setting_keys)
            if clash:
                raise UserError(
                    f"The overrides of {dataset}/{model} set {clash}, which the stability settings vary; "
                    "set them in the recipe (an experiment file) instead, or the settings would not apply."
                )
            first = settings[0]
            for seed in seeds:
                overrides = (*base, f"+setting={first}", f"seed={seed}")
                run = Run(dataset, model, first, seed, overrides, accuracy=True, stability=False)
                runs[run.name] = run
            if model in _list(study.stability_models):
                for setting in settings:
                    seed = int(setting_values(setting).get("seed", 0))
                    name = f"{dataset}/{model}/{setting}_seed{seed}"
                    if name in runs:  # the first setting's own seed: an accuracy run already
                        old = runs[name]
                        runs[name] = Run(**{**old.__dict__, "stability": True})
                    else:
                        overrides = (*base, f"+setting={setting}")
                        runs[name] = Run(
                            dataset, model, setting, seed, overrides, accuracy=False, stability=True
                        )
    return list(runs.values())
