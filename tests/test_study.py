"""The reproduction study (lficam/study, reproduce.py): its plan, its resumability, the wording it chooses from
numbers, and the whole pipeline at a tiny scale with its outputs checked against the runs' own files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from lficam.core.errors import UserError
from lficam.study import launch
from lficam.study.plan import Run, plan_runs
from lficam.study.report import compare, render, sentence
from lficam.study.results import (
    aggregate_dataset,
    portable_command,
    portable_path,
    portable_results,
    study_dir_of,
)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# the tiny scale: 1 data set at 16 px, 2 seeds, 2 stability settings, Grad-CAM only → 10 runs
TINY = [
    "study=quick",
    "study.launcher=inprocess",
    "study.seeds=[0,1]",
    "study.settings=[a1,a2]",
    "study.eval.cams=[gradcam]",
    "study.eval.images=16",
    "study.eval.faithfulness_images=8",
    "study.eval.stability_images=8",
    "study.eval.faithfulness_steps=8",
    "study.eval.noise_samples=1",
    "study.step_time.rounds=1",
    "study.figure_images=3",
    "study.data_sets.shapes.overrides=['data=shapes','data.image_size=16','model=cifar_resnet20']",
    "study.data_sets.shapes.budget=['data.train_size=128','data.val_size=32','data.test_size=32',"
    "'trainer.max_epochs=1','data.cache_dir=null']",
]


def compose_study(overrides: list[str], tmp_path: Path | None = None):
    GlobalHydra.instance().clear()
    paths = [f"paths.root_dir={ROOT}"]
    if tmp_path is not None:
        paths += [f"paths.log_dir={tmp_path}", f"study.docs_dir={tmp_path / 'docs'}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("reproduce", overrides=[*overrides, *paths])


# --- the plan ----------------------------------------------------------------------------------------------


def test_full_study_plans_the_budgeted_runs() -> None:
    """Per data set: 4 models × 3 seeds, plus LFI-CAM and ABN under 4 more settings (a1 seed 0 is shared)."""
    study = compose_study([]).study
    runs = plan_runs(study)
    assert len(runs) == 60
    for dataset in ("shapes", "fashion_mnist", "fashion_clutter"):
        mine = [r for r in runs if r.dataset == dataset]
        assert len(mine) == 20
        assert sum(r.accuracy for r in mine) == 12
        assert sum(r.stability for r in mine) == 10
        shared = [r.name for r in mine if r.accuracy and r.stability]
        assert shared == [f"{dataset}/lficam/a1_seed0", f"{dataset}/abn/a1_seed0"]
    a3 = next(r for r in runs if r.name == "shapes/abn/a3_seed2")
    assert a3.overrides[-1] == "+setting=a3"  # its seed comes from the setting file
    assert "attention=abn" in a3.overrides and "experiment=study_cpu" in a3.overrides
    seed1 = next(r for r in runs if r.name == "shapes/plain/a1_seed1")
    assert seed1.overrides[-2:] == ("+setting=a1", "seed=1")


def test_the_study_base_recipe_with_a_setting_is_the_settings_values(tmp_path: Path) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        base = compose("train", overrides=["experiment=study_cpu", f"paths.root_dir={tmp_path}"])
        a5 = compose("train", overrides=["experiment=study_cpu", "+setting=a5", f"paths.root_dir={tmp_path}"])
    assert base.optimizer._target_ == "torch.optim.AdamW" and "momentum" not in base.optimizer
    assert (base.optimizer.lr, base.data.batch_size, base.optimizer.weight_decay) == (2e-3, 64, 1e-4)
    assert (a5.optimizer.lr, a5.data.batch_size, a5.seed) == (2.8e-3, 128, 4)
    assert base.trainer.precision == "32-true"


def test_an_override_that_would_hide_a_setting_is_refused() -> None:
    study = compose_study(["study=quick", "study.common=['experiment=study_cpu','optimizer.lr=0.3']"]).study
    with pytest.raises(UserError, match=r"set \['optimizer.lr'\], which the stability settings vary"):
        plan_runs(study)


def test_unknown_data_set_and_setting_are_one_sentence() -> None:
    with pytest.raises(UserError, match=r"study.datasets names 'mnist'.*choose from"):
        plan_runs(compose_study(["study.datasets=[mnist]"]).study)
    with pytest.raises(UserError, match=r"Unknown stability setting 's9'"):
        plan_runs(compose_study(["study.settings=[s1,s9]"]).study)


# --- resumability -------------------------------------------------------------------------------------------


def _run(overrides: tuple[str, ...] = ("a=1",)) -> Run:
    return Run("d", "m", "s1", 0, overrides, accuracy=True, stability=False)


def test_a_run_with_other_overrides_is_never_reused_or_overwritten(tmp_path: Path) -> None:
    launch.write_json(tmp_path / launch.RECORD, {"overrides": ["a=1"], "status": "done"})
    (tmp_path / "summary.json").write_text("{}")
    assert launch.trained(_run(), tmp_path)
    with pytest.raises(UserError, match=r"trained with other overrides.*study.runs_dir"):
        launch.trained(_run(("a=2",)), tmp_path)


def test_a_stopped_run_resumes_from_its_last_checkpoint(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake(overrides, run_dir, out):
        calls.append(overrides)
        (run_dir / "summary.json").write_text("{}")

    monkeypatch.setitem(launch.LAUNCHERS, "fake", fake)
    record = launch.train_run(_run(), tmp_path, "fake")  # a fresh run: no ckpt_path
    assert calls[-1] == ["a=1"] and record["status"] == "done"
    (tmp_path / "summary.json").unlink()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    launch.train_run(_run(), tmp_path, "fake")
    assert calls[-1] == ["a=1", f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"]

    def broken(overrides, run_dir, out):
        raise RuntimeError("out of memory")

    monkeypatch.setitem(launch.LAUNCHERS, "broken", broken)
    (tmp_path / "summary.json").unlink()
    record = launch.train_run(_run(), tmp_path, "broken")
    assert record["status"] == "failed" and "out of memory" in record["error"]
    assert not launch.trained(_run(), tmp_path)  # retried next time


def test_a_copied_study_scores_its_own_checkpoints(tmp_path: Path) -> None:
    """A summary.json of an older lficam records its best checkpoint as an absolute path: after the study folder
    was copied, the copy's own file of that name is scored, not the original's (which still exists)."""
    from lficam.study import attention

    original, copy = tmp_path / "original", tmp_path / "copy"
    for folder in (original, copy):
        (folder / "checkpoints").mkdir(parents=True)
        for name in ("epoch_002.ckpt", "last.ckpt"):
            (folder / "checkpoints" / name).write_bytes(b"")
        best = original / "checkpoints" / "epoch_002.ckpt"
        (folder / "summary.json").write_text(json.dumps({"best_checkpoint": str(best)}))
    assert attention.best_checkpoint(copy) == copy / "checkpoints" / "epoch_002.ckpt"
    (copy / "summary.json").write_text(json.dumps({"best_checkpoint": "checkpoints/epoch_002.ckpt"}))
    assert attention.best_checkpoint(copy) == copy / "checkpoints" / "epoch_002.ckpt"


@pytest.mark.parametrize("key", ["study.runs_dir", "study.docs_dir"])
def test_a_study_folder_under_a_file_is_one_sentence(key: str, tmp_path: Path, capsys) -> None:
    from lficam.cli import study_task as main

    (tmp_path / "a_file").write_text("")
    folder = tmp_path / "a_file" / "study"
    cfg = compose_study(["study=quick", f"study.runs_dir={tmp_path / 'runs'}"], tmp_path)
    cfg.study[key.split(".")[1]] = str(folder)
    with pytest.raises(SystemExit) as exit_:
        main(cfg)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"Error: {key}={folder} cannot be a folder the study writes into ({tmp_path / 'a_file'} is a file, not "
        f"a folder); give a folder you can write with {key}=<folder>.\n"
    )


# --- wording chosen from the numbers -------------------------------------------------------------------------


def test_verdicts_follow_the_difference_and_its_spread() -> None:
    a = {"mean": 0.80, "std": 0.03}
    b = {"mean": 0.76, "std": 0.04}  # |0.04| ≤ √(0.03² + 0.04²) = 0.05
    assert compare(a, b, True)[0] == "inside"
    assert compare({"mean": 0.90, "std": 0.03}, b, True)[0] == "better"
    assert compare({"mean": 0.90, "std": 0.03}, b, False)[0] == "worse"  # e.g. deletion AUC: lower is better
    assert compare({"mean": 0.90, "std": math.nan}, b, True)[0] == "unknown"
    verdict, text = sentence("LFI-CAM", a, "ABN", b, True, what="test accuracy")
    assert verdict == "inside"
    assert text == (
        "LFI-CAM (0.800 ± 0.030) and ABN (0.760 ± 0.040) differ by +0.040 in test accuracy, inside the seed "
        "spread (±0.050): no difference is measurable here."
    )
    _, text = sentence("LFI-CAM", {"mean": 0.9, "std": 0.03}, "ABN", b, True, what="test accuracy")
    assert text.startswith("LFI-CAM is better than ABN in test accuracy: 0.900 ± 0.030 against 0.760 ± 0.040")
    assert "outside the seed spread (±0.050)" in text


def test_the_accuracy_claim_is_a_sentence_per_rival() -> None:
    from lficam.study.report import accuracy_claim

    ds = {
        "accuracy": {
            "lficam": {"mean": 0.80, "std": 0.03},
            "plain": {"mean": 0.76, "std": 0.04},
            "abn": {"mean": 0.70, "std": 0.01},
        }
    }
    inside, better = accuracy_claim("shapes", ds)
    assert inside.startswith("- shapes: LFI-CAM (0.800 ± 0.030) and plain")
    assert inside.endswith('This is consistent with "at least as accurate", but shows no gain.')
    assert better.endswith("This agrees with the paper's claim on this data set.")


# --- the pipeline at a tiny scale ------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resumed(tmp_path: Path, capsys) -> None:
    from lficam.evaluation.classification import evaluate_stability
    from lficam.study import run_study

    cfg = compose_study(TINY, tmp_path)
    results = run_study(cfg)
    out = capsys.readouterr().out
    assert "[train 10/10]" in out and "ETA" in out
    docs = tmp_path / "docs"
    saved = json.loads((docs / "results.json").read_text())
    ds = saved["datasets"]["shapes"]
    runs_dir = Path(cfg.study.runs_dir)
    assert len(ds["runs"]) == 10 and not ds["failed"]

    # accuracy: each run's number is its summary.json's; the table's mean and std are those of the seeds
    for row in ds["runs"]:
        summary = json.loads((runs_dir / row["name"] / "summary.json").read_text())
        assert row["test_acc"] == pytest.approx(summary["metrics"]["test/acc"], abs=1e-12)
    for model in ("lficam", "lficam_lite", "abn", "plain"):
        seeds = [r["test_acc"] for r in ds["runs"] if r["model"] == model and r["accuracy_run"]]
        stat = ds["accuracy"][model]
        assert stat["n"] == 2 and stat["values"] == pytest.approx(seeds)
        assert stat["mean"] == pytest.approx(sum(seeds) / 2)
        assert stat["std"] == pytest.approx(abs(seeds[0] - seeds[1]) / math.sqrt(2))

    # attention table: means over the seeds of the runs' own metrics.json
    pg = [
        json.loads((runs_dir / f"shapes/lficam/a1_seed{k}" / "metrics.json").read_text())["maps"]["own"][
            "pointing_game"
        ]
        for k in (0, 1)
    ]
    assert ds["attention"]["lficam/own"]["pointing_game"]["mean"] == pytest.approx(sum(pg) / 2)
    assert set(ds["attention"]) == {
        "lficam/own",
        "lficam_lite/own",
        "abn/own",
        "plain/own",
        "lficam/gradcam",
        "plain/gradcam",
    }

    # cross-run stability: a run against itself is 1 (the a1 run is the seed-0 run), the matrix is symmetric
    stability = ds["stability"]
    labels, iou = stability["labels"], torch.tensor(stability["iou_matrix"], dtype=torch.float64)
    rho = torch.tensor(stability["spearman_matrix"], dtype=torch.float64)
    assert torch.equal(iou, iou.T) and torch.equal(rho, rho.T)
    same = (labels.index("lficam a1"), labels.index("lficam seed0 own"))
    assert iou[same] == pytest.approx(1.0) and rho[same] == pytest.approx(1.0)
    assert torch.diagonal(iou)[~torch.diagonal(iou).isnan()].tolist() == pytest.approx([1.0] * len(labels))
    # ... and the paper's protocol agrees with eval.py stability.runs= on the same checkpoints
    GlobalHydra.instance().clear()
    checkpoints = [
        str(Path(json.loads((runs_dir / f"shapes/{m}/{s}" / "metrics.json").read_text())["checkpoint"]))
        for m in ("lficam", "abn")
        for s in ("a1_seed0", "a2_seed1")
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        eval_cfg = compose(
            "eval",
            overrides=[
                f"stability.runs=[{','.join(checkpoints)}]",
                "stability.num_images=16",
                f"paths.root_dir={ROOT}",
                f"paths.output_dir={tmp_path / 'eval'}",
                "device=cpu",
            ],
        )
    by_attention = evaluate_stability(eval_cfg)["by_attention"]
    for kind in ("lficam", "abn"):
        mine = stability["groups"][f"settings:{kind}"]
        assert mine["pairs"] == 1
        assert mine["iou_mean"] == pytest.approx(by_attention[kind]["iou_mean"], abs=1e-6)
        assert mine["spearman_mean"] == pytest.approx(by_attention[kind]["spearman_mean"], abs=1e-6)

    # the page: generated from the JSON, numbers as the JSON has them
    page = (docs / "results.md").read_text()
    acc = ds["accuracy"]["lficam"]
    assert f"| shapes | {acc['mean']:.3f} ± {acc['std']:.3f} (2) |" in page
    assert "## Claim 3" in page and "python train.py experiment=study_cpu" in page
    assert any(word in page for word in ("inside the seed spread", "outside the seed spread", "is unknown"))
    for picture in ("accuracy.png", "pointing_game.png", "stability_shapes.png", "maps_shapes.png"):
        assert (docs / "figures" / picture).stat().st_size > 5000

    # resumed: nothing is trained or scored again, and the numbers are the same
    stamps = {r["name"]: (runs_dir / r["name"] / "summary.json").stat().st_mtime_ns for r in ds["runs"]}
    again = run_study(compose_study(TINY, tmp_path))
    out = capsys.readouterr().out
    assert "0 to train" in out and "0 to score" in out
    assert stamps == {
        r["name"]: (runs_dir / r["name"] / "summary.json").stat().st_mtime_ns for r in ds["runs"]
    }
    assert again["datasets"]["shapes"]["accuracy"] == results["datasets"]["shapes"]["accuracy"]


@pytest.mark.slow
def test_subprocess_launcher_runs_train_py(tmp_path: Path) -> None:
    """The default launcher: one `python train.py` per run, the run folder of any train.py run."""
    study = compose_study(TINY, tmp_path).study
    run = next(r for r in plan_runs(study) if r.name == "shapes/plain/a1_seed0")
    folder = tmp_path / "run"
    record = launch.train_run(run, folder, "subprocess")
    assert record["status"] == "done", (folder / "train.out").read_text()[-2000:]
    assert record["command"].startswith("python train.py experiment=study_cpu")
    assert (folder / ".hydra" / "config.yaml").is_file() and launch.trained(run, folder)
    saved = OmegaConf.load(folder / ".hydra" / "config.yaml")
    assert (saved.seed, saved.attention.name, saved.data.image_size) == (0, "none", 16)
    assert 0 <= json.loads((folder / "summary.json").read_text())["metrics"]["test/acc"] <= 1


def test_step_time_steps_with_the_runs_own_optimiser() -> None:
    """The light FIN's step-time ratio is measured with the optimiser the runs trained with (AdamW here), with
    the backbone's learning-rate scale applied as training applies it."""
    from lficam import create_model
    from lficam.study.steptime import _optimizer, measure_step_times

    net = create_model(backbone="cifar_resnet20", attention="lficam", num_classes=10)
    config = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 2e-3, "weight_decay": 1e-4}
    optimizer = _optimizer(net, {**config, "backbone_lr_scale": 0.5})
    assert isinstance(optimizer, torch.optim.AdamW)
    assert sorted(g["lr"] for g in optimizer.param_groups) == pytest.approx([1e-3, 2e-3])
    assert isinstance(_optimizer(net, None), torch.optim.SGD)
    result = measure_step_times(
        {"lficam": {"backbone": "cifar_resnet20", "attention": "lficam", "num_classes": 10}},
        16,
        2,
        rounds=1,
        optimizer={**config, "backbone_lr_scale": 1.0},
    )
    assert result["optimizer"] == "torch.optim.AdamW" and result["seconds_per_step"]["lficam"] > 0


# --- paths that read the same on any machine -------------------------------------------------------------------


def test_paths_are_written_relative_to_the_repository_or_the_study_folder(tmp_path: Path) -> None:
    study = tmp_path / "study" / "full"
    assert portable_path(str(ROOT / "outputs" / "study" / "full"), str(study)) == "outputs/study/full"
    assert portable_path(str(ROOT)) == "."
    assert portable_path(str(study / "shapes" / "abn"), str(study)) == "$STUDY_DIR/shapes/abn"
    assert portable_path(str(study), str(study)) == "$STUDY_DIR"
    assert portable_path("/data/cifar", str(study)) == "/data/cifar"  # a folder of the user's own, as given
    assert portable_path("outputs/study/full", str(study)) == "outputs/study/full"  # already portable
    command = (
        f"python train.py data=shapes  data.root=/data/shapes ckpt_path={study}/shapes/abn/a1_seed0/last.ckpt "
        f"hydra.run.dir={study}/shapes/abn/a1_seed0"
    )
    assert study_dir_of(command, "shapes/abn/a1_seed0") == str(study)
    assert study_dir_of(command, "shapes/plain/a1_seed0") is None
    assert portable_command(command, str(study)) == (
        "python train.py data=shapes  data.root=/data/shapes ckpt_path=$STUDY_DIR/shapes/abn/a1_seed0/last.ckpt "
        "hydra.run.dir=$STUDY_DIR/shapes/abn/a1_seed0"
    )


def _as_written_on(results: dict, study: Path) -> dict:
    """docs/results.json as an older lficam wrote it on a machine whose study folder was ``study``: absolute."""
    old = json.loads(json.dumps(results))
    old["study"]["runs_dir"] = old["meta"]["runs_dir"] = str(study)
    old["study"]["docs_dir"] = str(study / "docs")
    for ds in old["datasets"].values():
        for row in ds["runs"]:
            row["command"] = row["command"].replace(
                "hydra.run.dir=outputs/study/full", f"hydra.run.dir={study}"
            )
    assert str(study) in json.dumps(old)
    return old


@pytest.mark.parametrize("inside", [True, False], ids=["study_in_the_repository", "study_elsewhere"])
def test_report_and_json_name_no_absolute_path_of_the_machine(inside: bool, tmp_path: Path) -> None:
    """An older results.json with the machine's absolute study folder renders, and is rewritten, without it."""
    study = ROOT / "outputs" / "study" / "full" if inside else tmp_path / "study" / "full"
    old = _as_written_on(json.loads((ROOT / "docs" / "results.json").read_text()), study)
    page = render(old)
    written = json.dumps(portable_results(old))
    for text in (page, written):
        assert str(study) not in text and str(ROOT) not in text and str(tmp_path) not in text
    if inside:
        assert "hydra.run.dir=outputs/study/full/shapes/abn/a1_seed0" in page
        assert "the study folder is `outputs/study/full`" in page
    else:
        assert "hydra.run.dir=$STUDY_DIR/shapes/abn/a1_seed0" in page
        assert "with `STUDY_DIR` set to the study folder" in page
    assert portable_results(json.loads(written)) == json.loads(written)  # already portable: unchanged


def test_aggregated_runs_write_their_commands_without_the_study_folder(tmp_path: Path) -> None:
    run = Run("shapes", "plain", "a1", 0, ("a=1",), accuracy=True, stability=False)
    study = tmp_path / "study"
    record = {
        "status": "done",
        "wall_s": 2.0,
        "command": f"python train.py a=1 hydra.run.dir={study / run.name}",
    }
    ds = aggregate_dataset({}, [run], {run.name: record}, {}, {"groups": {}}, None, ["plain"], [])
    assert ds["runs"][0]["command"] == "python train.py a=1 hydra.run.dir=$STUDY_DIR/shapes/plain/a1_seed0"
    assert str(tmp_path) not in json.dumps(ds)


def test_the_committed_report_is_its_json_rendered_and_names_no_path_of_the_machine() -> None:
    docs = ROOT / "docs"
    page, saved = (docs / "results.md").read_text(), (docs / "results.json").read_text()
    assert render(json.loads(saved)) == page
    for text in (page, saved):
        assert str(ROOT) not in text and "hydra.run.dir=/" not in text and '_dir": "/' not in text
