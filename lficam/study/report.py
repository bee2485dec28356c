"""docs/results.md from docs/results.json: tables, and sentences whose wording is chosen from the numbers.

Nothing here is a hand-written conclusion: :func:`compare` picks "better", "worse" or "inside the seed spread"
from a difference and its spread (:func:`lficam.study.results.difference`), and every claim's verdict is built
from those. The paper's numbers are those method.md confirms (§1.5, §1.6); the rest is said to be unverified.
"""

from __future__ import annotations

import math
from typing import Any

from lficam.evaluation.scores import METRIC_NAMES, arrow
from lficam.study.attention import METRICS, OWN
from lficam.study.launch import duration
from lficam.study.results import STUDY_DIR, difference, portable_results

#: the paper's cross-run stability (method.md §1.5): data set → (ABN, LFI-CAM) mean IoU over the pairs of runs
PAPER_STABILITY = {"Cat-vs-Dog": (0.30, 0.73), "CIFAR-10": (0.29, 0.60), "STL-10": (0.32, 0.64)}
#: ABN's own top-1 errors in % (method.md §1.6): (data set, backbone) → (plain, ABN)
ABN_ERRORS = {
    "CIFAR-100, ResNet-110": (24.1, 22.5),
    "ImageNet, ResNet-50": (24.1, 23.1),
    "ImageNet, ResNet-101": (22.5, 21.8),
    "ImageNet, ResNet-152": (22.2, 21.4),
}
MODEL_NAMES = {
    "lficam": "LFI-CAM",
    "lficam_lite": "LFI-CAM (light FIN)",
    "abn": "ABN",
    "plain": "plain",
}
METHOD_NAMES = {
    OWN: "own map",
    "gradcam": "Grad-CAM",
    "gradcampp": "Grad-CAM++",
    "scorecam": "Score-CAM",
    "layercam": "LayerCAM",
    "abscam": "Abs-CAM",
    "eigencam": "Eigen-CAM",
    "cam": "CAM",
    "fam": "FAM",
}
OWN_NAMES = {
    "lficam": "LFI-CAM's A",
    "lficam_lite": "LFI-CAM light's A",
    "abn": "ABN's M",
    "plain": "plain CAM",
}
PERCENT = {"average_drop", "increase_in_confidence"}


def map_name(key: str) -> str:
    """``"plain/gradcam"`` → ``"Grad-CAM on plain"``; ``"abn/own"`` → ``"ABN's M"``."""
    model, method = key.split("/", 1)
    if method == OWN:
        return OWN_NAMES.get(model, f"{model}'s own map")
    return f"{METHOD_NAMES.get(method, method)} on {MODEL_NAMES.get(model, model)}"


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def number(x: Any, digits: int = 3) -> str:
    return "—" if _nan(x) else f"{x:.{digits}f}"


def mean_std(s: dict[str, Any] | None, digits: int = 3, mean: str = "mean", std: str = "std") -> str:
    if not s or _nan(s.get(mean)):
        return "—"
    if _nan(s.get(std)):
        return number(s[mean], digits)
    return f"{s[mean]:.{digits}f} ± {s[std]:.{digits}f}"


def compare(
    a: dict[str, Any],
    b: dict[str, Any],
    higher_is_better: bool,
    mean: str = "mean",
    std: str = "std",
    spread_name: str = "seed spread",
) -> tuple[str, dict[str, float]]:
    """The verdict of a against b: ``better``, ``worse``, ``inside`` (|a − b| ≤ √(s_a² + s_b²)), ``unknown``
    (a spread or a value is missing), with the difference and spread."""
    d = difference(a, b, mean, std)
    if _nan(d["diff"]):
        return "missing", d
    if _nan(d["spread"]):
        return "unknown", d
    if abs(d["diff"]) <= d["spread"]:
        return "inside", d
    return ("better" if (d["diff"] > 0) == higher_is_better else "worse"), d


def sentence(
    name_a: str,
    a: dict[str, Any],
    name_b: str,
    b: dict[str, Any],
    higher_is_better: bool,
    *,
    what: str,
    digits: int = 3,
    mean: str = "mean",
    std: str = "std",
    spread_name: str = "seed spread",
) -> tuple[str, str]:
    """(verdict, one sentence): e.g. "LFI-CAM (0.912 ± 0.004) and plain (0.915 ± 0.003) differ by −0.003 in
    test accuracy, inside the seed spread (±0.005)"."""
    verdict, d = compare(a, b, higher_is_better, mean, std)
    ma, mb = mean_std(a, digits, mean, std), mean_std(b, digits, mean, std)
    if verdict == "missing":
        return verdict, f"{name_a} and {name_b} cannot be compared in {what}: a value is missing."
    # a difference that rounds to zero prints as +0.000, not -0.000
    shown = 0.0 if abs(d["diff"]) < 0.5 * 10**-digits else d["diff"]
    diff = f"{shown:+.{digits}f}"
    if verdict == "unknown":
        return verdict, (
            f"{name_a} ({ma}) and {name_b} ({mb}) differ by {diff} in {what}; with one run each the "
            f"{spread_name} is unknown, so this says nothing either way."
        )
    if verdict == "inside":
        return verdict, (
            f"{name_a} ({ma}) and {name_b} ({mb}) differ by {diff} in {what}, inside the {spread_name} "
            f"(±{d['spread']:.{digits}f}): no difference is measurable here."
        )
    return verdict, (
        f"{name_a} is {verdict} than {name_b} in {what}: {ma} against {mb}, a difference of {diff}, "
        f"outside the {spread_name} (±{d['spread']:.{digits}f})."
    )


# ------------------------------------------------------------------------------------------------ claims


def accuracy_claim(name: str, ds: dict[str, Any]) -> list[str]:
    """Claim 1 (LFI-CAM at least as accurate as the plain backbone and ABN) on one data set."""
    acc = ds["accuracy"]
    lines = []
    for other in ("plain", "abn"):
        if "lficam" not in acc or other not in acc:
            continue
        verdict, text = sentence(
            "LFI-CAM", acc["lficam"], MODEL_NAMES[other], acc[other], True, what="test accuracy"
        )
        meaning = {
            "better": "agrees with the paper's claim on this data set",
            "inside": 'is consistent with "at least as accurate", but shows no gain',
            "worse": "disagrees with the paper's claim on this data set",
            "unknown": "leaves too few runs to judge the claim",
            "missing": "cannot judge the claim",
        }[verdict]
        lines.append(f"- {name}: {text} This {meaning}.")
    return lines


def attention_claim(name: str, ds: dict[str, Any], metrics: list[str]) -> list[str]:
    """Claim 2 (LFI-CAM's maps better than ABN's and the post-hoc CAMs') on one data set: per rival map, the
    metrics on which LFI-CAM's A is better, worse, or inside the seed spread."""
    table = ds["attention"]
    mine = table.get(f"lficam/{OWN}")
    if not mine:
        return [f"- {name}: LFI-CAM's maps were not scored."]
    lines = []
    rivals = [
        k for k in table if k != f"lficam/{OWN}" and not k.startswith("lficam/") and k != f"lficam_lite/{OWN}"
    ]
    for rival in rivals:
        counts: dict[str, list[str]] = {"better": [], "worse": [], "inside": [], "unknown": []}
        for metric in metrics:
            if metric in mine and metric in table[rival]:
                verdict, _ = compare(mine[metric], table[rival][metric], METRICS[metric])
                counts.setdefault(verdict, []).append(METRIC_NAMES[metric])
        judged = sum(len(v) for v in counts.values())
        if not judged:
            continue
        parts = [f"better on {len(counts['better'])} ({', '.join(counts['better']) or 'none'})"]
        parts.append(f"worse on {len(counts['worse'])} ({', '.join(counts['worse']) or 'none'})")
        parts.append(f"inside the seed spread on {len(counts['inside'])}")
        if counts["unknown"]:
            parts.append(f"not judged (one run) on {len(counts['unknown'])}")
        if counts["better"] and not counts["worse"]:
            meaning = "agrees with the claim against this map wherever a difference is measurable"
        elif counts["worse"] and not counts["better"]:
            meaning = "disagrees with the claim against this map"
        elif counts["worse"] and counts["better"]:
            meaning = "is mixed: neither map is better on every measure"
        else:
            meaning = "shows no measurable difference"
        lines.append(
            f"- {name}, LFI-CAM's A against {map_name(rival)}, of {judged} metrics: "
            + "; ".join(parts)
            + f". This {meaning}."
        )
    return lines


def _stability_meaning(verdict: str, d: float) -> str:
    """What a verdict of LFI-CAM against ABN in cross-run IoU says of the paper's claim; a gap d = IoU_LFI − IoU_ABN
    that is "better" is also placed against the paper's gaps (its LFI-CAM − ABN mean IoUs)."""
    gaps = [b - a for a, b in PAPER_STABILITY.values()]
    if verdict == "better":
        size = "larger than" if d > max(gaps) else "smaller than" if d < min(gaps) else "within"
        return (
            f"agrees in direction with the paper; the gap of {d:.2f} is {size} the paper's gaps "
            f"({min(gaps):.2f}–{max(gaps):.2f})"
        )
    if verdict == "inside":
        return f"does not reproduce the paper's gap ({min(gaps):.2f}–{max(gaps):.2f})"
    if verdict == "worse":
        return "disagrees with the paper: ABN's maps are the more stable here"
    return "leaves the claim open (too few runs or pairs)"


def _settings_verdicts(name: str, lfi: dict[str, Any], abn: dict[str, Any]) -> list[str]:
    """LFI-CAM against ABN across the settings: cross-run IoU with its meaning, then Spearman's ρ."""
    verdict, text = sentence(
        "LFI-CAM",
        lfi,
        "ABN",
        abn,
        True,
        what="cross-run IoU across the settings",
        mean="iou_mean",
        std="iou_std",
        spread_name="spread over pairs",
    )
    d = difference(lfi, abn, "iou_mean", "iou_std")["diff"]
    _, rho = sentence(
        "LFI-CAM",
        lfi,
        "ABN",
        abn,
        True,
        what="Spearman's ρ across the settings",
        mean="spearman_mean",
        std="spearman_std",
        spread_name="spread over pairs",
    )
    return [
        f"- {name}: {text} This {_stability_meaning(verdict, d)}.",
        f"- {name} (threshold-free): {rho}",
    ]


def _seed_controls(name: str, lfi: dict[str, Any] | None, groups: dict[str, Any]) -> list[str]:
    """LFI-CAM across the settings against the plain backbone's maps across seeds alone: how much of the
    settings' instability the seed by itself would explain."""
    lines = []
    for control in (f"seeds:plain/{OWN}", "seeds:plain/gradcam"):
        seeds = groups.get(control)
        if lfi and seeds and seeds.get("pairs") and lfi.get("pairs"):
            label = map_name(control.split(":", 1)[1])
            _, text = sentence(
                "LFI-CAM across the settings",
                lfi,
                f"{label} across seeds alone",
                seeds,
                True,
                what="cross-run IoU",
                mean="iou_mean",
                std="iou_std",
                spread_name="spread over pairs",
            )
            lines.append(f"- {name}, control: {text}")
    return lines


def stability_claim(name: str, ds: dict[str, Any]) -> list[str]:
    """Claim 3 (LFI-CAM's maps far more stable than ABN's across hyper-parameters) and the seed control."""
    groups = ds["stability"]["groups"]
    lines = []
    lfi, abn = groups.get("settings:lficam"), groups.get("settings:abn")
    if lfi and abn and lfi.get("pairs") and abn.get("pairs"):
        lines += _settings_verdicts(name, lfi, abn)
    return lines + _seed_controls(name, lfi, groups)


def light_claim(name: str, ds: dict[str, Any]) -> list[str]:
    """4: the light FIN against the paper's."""
    light = ds.get("light_vs_paper") or {}
    acc, attn = ds["accuracy"], ds["attention"]
    lines = []
    if "lficam" in acc and "lficam_lite" in acc:
        _, text = sentence(
            "The light FIN", acc["lficam_lite"], "the paper's FIN", acc["lficam"], True, what="test accuracy"
        )
        lines.append(f"- {name}: {text}")
    for metric in ("pointing_game", "stability_noise_iou", "stability_flip_iou"):
        a, b = attn.get(f"lficam_lite/{OWN}", {}).get(metric), attn.get(f"lficam/{OWN}", {}).get(metric)
        if a and b:
            _, text = sentence(
                "The light FIN's A", a, "the paper FIN's A", b, METRICS[metric], what=METRIC_NAMES[metric]
            )
            lines.append(f"- {name}: {text}")
    groups = ds["stability"]["groups"]
    a, b = groups.get(f"seeds:lficam_lite/{OWN}"), groups.get(f"seeds:lficam/{OWN}")
    if a and b and a.get("pairs") and b.get("pairs"):
        _, text = sentence(
            "The light FIN's A",
            a,
            "the paper FIN's A",
            b,
            True,
            what="cross-seed IoU",
            mean="iou_mean",
            std="iou_std",
            spread_name="spread over pairs",
        )
        lines.append(f"- {name}: {text}")
    if not _nan(light.get("step_time_ratio")):
        ratio = light["step_time_ratio"]
        faster = "faster" if ratio < 1 else "slower"
        lines.append(
            f"- {name}: a training step with the light FIN takes {ratio:.2f}× the paper FIN's time "
            f"({faster}), measured side by side in this study; whole runs took {number(light.get('run_wall_ratio'), 2)}×."
        )
    return lines


# ------------------------------------------------------------------------------------------------ tables


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), "|" + "---|" * len(header), *(_row(r) for r in rows)]


def accuracy_table(results: dict[str, Any]) -> list[str]:
    models = results["study"]["models"]
    rows = []
    for name, ds in results["datasets"].items():
        cells = [
            f"{mean_std(ds['accuracy'].get(m))} ({ds['accuracy'].get(m, {}).get('n', 0)})" for m in models
        ]
        rows.append([name, *cells])
    return _table(["data set", *(f"{MODEL_NAMES.get(m, m)} (seeds)" for m in models)], rows)


def attention_rows(ds: dict[str, Any], models: list[str]) -> list[str]:
    """Own maps first (in model order), then each model's post-hoc CAMs."""
    keys = [f"{m}/{OWN}" for m in models if f"{m}/{OWN}" in ds["attention"]]
    keys += [
        k for m in models for k in ds["attention"] if k.startswith(f"{m}/") and not k.endswith(f"/{OWN}")
    ]
    return keys


def attention_table(ds: dict[str, Any], models: list[str]) -> list[str]:
    keys = attention_rows(ds, models)
    metrics = [m for m in METRICS if any(m in ds["attention"][k] for k in keys)]
    header = ["map", *(f"{METRIC_NAMES[m]} {arrow(m)}" for m in metrics)]
    rows = []
    for key in keys:
        row = ds["attention"][key]
        rows.append([map_name(key), *(mean_std(row.get(m), 1 if m in PERCENT else 3) for m in metrics)])
    return _table(header, rows)


def stability_table(ds: dict[str, Any]) -> list[str]:
    rows = []
    for group, g in ds["stability"]["groups"].items():
        if not g.get("pairs"):
            continue
        kind, key = group.split(":", 1)
        what = (
            f"{MODEL_NAMES.get(key, key)}'s own map across the settings"
            if kind == "settings"
            else (f"{map_name(key)} across seeds")
        )
        rows.append(
            [
                what,
                str(g["runs"]),
                str(g["pairs"]),
                mean_std(g, 3, "iou_mean", "iou_std"),
                mean_std(g, 3, "spearman_mean", "spearman_std"),
            ]
        )
    return _table(["maps", "runs", "pairs", "IoU (> 100/255) mean ± std", "Spearman ρ mean ± std"], rows)


def settings_table(ds: dict[str, Any], settings: list[str]) -> list[str]:
    rows = []
    for model, by in ds["by_setting"].items():
        cells = [
            f"{number(by[s]['test_acc'])} / {number(by[s]['own_pointing_game'])}" if s in by else "—"
            for s in settings
        ]
        rows.append([MODEL_NAMES.get(model, model), *cells])
    return _table(["model (test accuracy / own-map pointing game)", *settings], rows)


def light_table(results: dict[str, Any]) -> list[str]:
    rows = []
    for name, ds in results["datasets"].items():
        light = ds.get("light_vs_paper") or {}
        if not light:
            continue

        def cell(key: str, light: dict[str, Any] = light) -> str:
            d = light.get(key)
            if not d or _nan(d.get("diff")):
                return "—"
            return f"{d['diff']:+.3f} ± {number(d.get('spread'))}"

        rows.append(
            [
                name,
                cell("test_acc"),
                cell("pointing_game"),
                cell("stability_noise_iou"),
                cell("cross_seed_iou"),
                number(light.get("step_time_ratio"), 2),
                number(light.get("run_wall_ratio"), 2),
            ]
        )
    header = [
        "data set",
        "Δ test accuracy",
        "Δ pointing game",
        "Δ noise stability IoU",
        "Δ cross-seed IoU",
        "step time light/paper",
        "run time light/paper",
    ]
    return _table(header, rows)


def step_table(results: dict[str, Any]) -> list[str]:
    models = results["study"]["models"]
    rows = []
    for name, ds in results["datasets"].items():
        st = ds.get("step_time")
        if not st:
            continue
        sec = st["seconds_per_step"]
        cells = [
            f"{sec[m] * 1000:.0f} ms ({st['images_per_second'][m]:.0f} img/s)" if m in sec else "—"
            for m in models
        ]
        rows.append([name, f"{st['image_size']} px × {st['batch_size']}, {st['precision']}", *cells])
    return _table(["data set", "batch", *(MODEL_NAMES.get(m, m) for m in models)], rows)


# ------------------------------------------------------------------------------------------------ the page


def introduction(results: dict[str, Any]) -> list[str]:
    """The title, how the page was made, and what a measured difference is: |a − b| > √(s_a² + s_b²)."""
    study, meta = results["study"], results["meta"]
    return [
        f"# Reproduction study: {study['title']}",
        "",
        f"Generated by `{meta['command']}` on {meta['finished']} from `results.json` (same folder) by "
        '`lficam/study/report.py`: every number, and every word that judges one ("better", "worse", "inside the '
        'seed spread"), is chosen by the script from the numbers; rerunning the command regenerates this page, the '
        "JSON and the pictures. A difference counts as measured only when it exceeds the spread √(s_a² + s_b²) of "
        "its two sides (std over seeds, or over pairs of runs for cross-run stability).",
        "",
    ]


def what_was_run(results: dict[str, Any]) -> list[str]:
    """Models, seeds and settings; a row per data set (overrides, budget, number of runs); the common overrides."""
    study = results["study"]
    rows = [
        [
            name,
            ds["title"],
            "`" + " ".join(ds["overrides"]) + "`",
            "`" + " ".join(ds["budget"]) + "`",
            str(len(ds["runs"])),
            ds["why"],
        ]
        for name, ds in results["datasets"].items()
    ]
    return [
        "## What was run",
        "",
        f"Models: {', '.join(MODEL_NAMES.get(m, m) for m in study['models'])}; seeds {study['seeds']} for accuracy and attention "
        f"quality; LFI-CAM and ABN also under the stability settings {study['settings']} (`conf/setting/`, each with "
        "its own seed; the first setting with its seed is also an accuracy run). Every model of a data set gets "
        "the same data, budget and recipe.",
        "",
        *_table(["data set", "what", "overrides", "budget", "runs", "why this backbone and size"], rows),
        "",
        f"Common overrides of every run: `{' '.join(study['common'])}`.",
        "",
    ]


def how_maps_were_scored(ev: dict[str, Any]) -> list[str]:
    """The attention-quality protocol of study config ``eval``: images, CAMs, noise and thresholds."""
    return [
        f"Attention quality: the first {ev['images']} test images of each data set for localisation and cross-run "
        f"stability, the first {ev['stability_images']} of them for input stability, the first "
        f"{ev['faithfulness_images']} for deletion/insertion (about "
        f"{ev['faithfulness_steps']} steps), Average Drop and Increase in Confidence; post-hoc CAMs "
        f"({', '.join(METHOD_NAMES.get(c, c) for c in ev['cams'])}) on {', '.join(MODEL_NAMES.get(m, m) for m in ev['cam_models'])}; "
        f"input noise σ = {ev['noise_std']} ({ev['noise_samples']} draw(s) per image) and the left-right flip. Mask IoU at "
        f"{ev['mask_iou_threshold']} of each map's range; the pointing game's 15 px tolerance at 224 px is scaled to "
        "the image size and its accuracy is averaged over classes.",
        "",
    ]


def failed_runs(results: dict[str, Any]) -> list[str]:
    """One bold paragraph naming the failed runs of every data set, or nothing when none failed."""
    failed = [f for ds in results["datasets"].values() for f in ds["failed"]]
    if not failed:
        return []
    return [
        f"**{len(failed)} run(s) failed and are left out of every statistic:** "
        + ", ".join(failed)
        + ". Their errors are in `results.json` and in each run folder's `train.out`.",
        "",
    ]


def accuracy_section(results: dict[str, Any]) -> list[str]:
    """Claim 1: ABN's own errors for reference, our accuracy table, a verdict per data set and rival."""
    out = [
        "## Claim 1: accuracy at least that of the plain backbone and of ABN",
        "",
        "The paper claims a lower top-1 error than ABN and the plain ResNet on CIFAR-10/100 and ImageNet; its "
        "numbers are not confirmed here (method.md §1.6: unverified). ABN's own errors, for reference: "
        + "; ".join(f"{k}: plain {p} %, ABN {a} %" for k, (p, a) in ABN_ERRORS.items())
        + ". Ours (test accuracy of the checkpoint chosen on validation, mean ± std over seeds, number of seeds):",
        "",
        *accuracy_table(results),
        "",
    ]
    for name, ds in results["datasets"].items():
        out += accuracy_claim(name, ds)
    return [*out, "", "![accuracy](figures/accuracy.png)", ""]


def attention_section(results: dict[str, Any]) -> list[str]:
    """Claim 2: per data set the attention-quality table of every map, the verdicts and the maps' picture."""
    models = results["study"]["models"]
    out = [
        "## Claim 2: better attention maps than ABN's and the post-hoc CAMs'",
        "",
        "The paper reports Average Drop and Increase in Confidence on ImageNet against Grad-CAM, Grad-CAM++, "
        "Score-CAM and ABN; those numbers are not confirmed here (unverified). Ours, mean ± std over seeds "
        "(↑ higher is better, ↓ lower):",
        "",
    ]
    for name, ds in results["datasets"].items():
        out += [f"### {name}", "", *attention_table(ds, models), ""]
        out += attention_claim(name, ds, list(METRICS))
        out += ["", f"![maps on {name}](figures/maps_{name}.png)", ""]
    return [*out, "![pointing game](figures/pointing_game.png)", ""]


def stability_section(results: dict[str, Any]) -> list[str]:
    """Claim 3: the paper's protocol and mean IoU, then per data set our cross-run table, the verdicts and the
    settings' own accuracies (the protocol compares settings of similar accuracy)."""
    out = [
        "## Claim 3: maps far more stable than ABN's across training hyper-parameters",
        "",
        "The paper's protocol (method.md §1.5): maps of the same test images (paired by image id) upsampled, "
        "binarised at > 100/255 of their range, IoU per image, mean over images, then mean ± std over the pairs of "
        "runs; Spearman's ρ beside it. The paper's mean IoU:",
        "",
        *_table(
            ["data set", "ABN", "LFI-CAM"],
            [[k, f"{a:.2f}", f"{b:.2f}"] for k, (a, b) in PAPER_STABILITY.items()],
        ),
        "",
        "Ours (settings: LFI-CAM and ABN under the stability settings; seeds: each map across the accuracy runs' "
        "seeds, the control of how much a map moves with the seed alone):",
        "",
    ]
    for name, ds in results["datasets"].items():
        out += [f"### {name}", "", *stability_table(ds), ""]
        out += stability_claim(name, ds)
        out += [
            "",
            "The settings' runs (the protocol asks for settings of similar accuracy):",
            "",
            *settings_table(ds, results["study"]["settings"]),
            "",
            f"![stability on {name}](figures/stability_{name}.png)",
            "",
        ]
    return out


def light_section(results: dict[str, Any]) -> list[str]:
    """The light FIN against the paper's: the differences table, the sentences, the measured step times."""
    out = [
        "## The light FIN against the paper's FIN",
        "",
        "Differences light − paper with their spread, and the training-step time ratio measured side by side in "
        "this study (interleaved rounds, median):",
        "",
        *light_table(results),
        "",
    ]
    for name, ds in results["datasets"].items():
        out += light_claim(name, ds)
    return [
        *out,
        "",
        "Training-step times (forward, backward and the runs' own optimiser's update) as measured:",
        "",
        *step_table(results),
        "",
    ]


def wall_time_section(results: dict[str, Any]) -> list[str]:
    """Σ training and scoring time per data set (as trained), and this invocation's parts and total."""
    meta = results["meta"]
    rows = [
        [
            name,
            duration_text(ds["wall_s"]["train"]),
            duration_text(ds["wall_s"]["eval"]),
            str(len(ds["runs"])),
        ]
        for name, ds in results["datasets"].items()
    ]
    return [
        "## Wall time",
        "",
        *_table(["data set", "training (sum over runs, as trained)", "attention metrics", "runs"], rows),
        "",
        "This invocation: "
        + ", ".join(f"{k} {duration_text(v)}" for k, v in meta["parts_s"].items())
        + f"; total {duration_text(meta['wall_s'])}. Runs reused from an earlier invocation keep the time they took "
        "when trained.",
        "",
    ]


def _where_commands_run(runs_dir: str) -> str:
    """Where the commands run and where the study folder is, as :func:`lficam.study.results.portable_path`
    wrote it: a path in the repository, or ``$STUDY_DIR`` for one outside it (no machine's own path)."""
    if runs_dir.startswith(STUDY_DIR):
        return (
            f"run in the repository root, with `{STUDY_DIR[1:]}` set to the study folder, which was outside "
            "the repository"
        )
    return f"run in the repository root; the study folder is `{runs_dir}`"


def commands_section(results: dict[str, Any]) -> list[str]:
    """The study's command, every run's ``train.py`` command (folded), and the stability protocol alone."""
    meta = results["meta"]
    commands = [
        r["command"] or f"# {r['name']}: not run" for ds in results["datasets"].values() for r in ds["runs"]
    ]
    return [
        "## Commands",
        "",
        "```bash",
        meta["command"],
        "```",
        "",
        f"Each run is one `train.py` command ({_where_commands_run(meta['runs_dir'])}):",
        "",
        "<details><summary>every run's command</summary>",
        "",
        "```bash",
        *commands,
        "```",
        "",
        "</details>",
        "",
        "The stability protocol alone, on any data set: `python train.py experiment=stability data=<data set>` then "
        "`python eval.py stability.runs=outputs/stability/multiruns/<date>_<time>`.",
        "",
    ]


def software_section(meta: dict[str, Any]) -> list[str]:
    """The versions and the machine the study ran with, one item each."""
    return [
        "## Software and machine",
        "",
        *(f"- {k}: {v}" for k, v in meta["software"].items()),
        *(f"- {k}: {v}" for k, v in meta["machine"].items()),
        "",
    ]


def render(results: dict[str, Any]) -> str:
    """The whole of results.md (pure: the page is a function of results.json alone), its sections in order.
    Paths are shown as :func:`lficam.study.results.portable_results` writes them, also from an older
    results.json that holds the absolute paths of the machine that ran the study."""
    results = portable_results(results)
    sections = [
        introduction(results),
        what_was_run(results),
        how_maps_were_scored(results["study"]["eval"]),
        failed_runs(results),
        accuracy_section(results),
        attention_section(results),
        stability_section(results),
        light_section(results),
        wall_time_section(results),
        commands_section(results),
        paper_scale_section(results.get("paper_scale")),
        software_section(results["meta"]),
    ]
    return "\n".join(line for section in sections for line in section)


def duration_text(seconds: Any) -> str:
    return "—" if _nan(seconds) else duration(float(seconds))


def paper_scale_section(scale: dict[str, Any] | None) -> list[str]:
    """The commands for the paper's data sets on a GPU, and the (estimated) time there."""
    if not scale:
        return []
    out = [
        "## At the paper's scale, on a GPU",
        "",
        "With CIFAR-10, STL-10 and Cat-vs-Dog in local folders (see `conf/experiment/*_resnet*` for the layouts), "
        "the same study with the paper's recipes (300 epochs; `conf/study/paper.yaml`):",
        "",
        "```bash",
        scale["command"],
        "```",
        "",
        f"It trains {scale['runs']} runs. **Estimate** (not measured end to end): {scale['basis']}",
        "",
        *_table(
            ["data set", "runs", "GPU hours per run (estimate)", "GPU hours (estimate)"],
            [
                [k, str(v["runs"]), f"{v['hours_per_run']:.1f}", f"{v['hours']:.0f}"]
                for k, v in scale["datasets"].items()
            ],
        ),
        "",
        f"In all about {scale['hours']:.0f} GPU hours on one GPU, one run after another. The runs are "
        "independent: on N GPUs start the command N times with disjoint `study.datasets=[...]` (one GPU each, "
        "`CUDA_VISIBLE_DEVICES`) on the same `study.runs_dir`, then once more with every data set: it reuses all "
        "runs and writes the whole report.",
        "",
    ]
    return out
