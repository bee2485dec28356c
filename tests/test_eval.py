"""eval.py: a checkpoint's accuracy and attention metrics, and the paper's cross-run stability."""

import io
import json
import logging
import math
import sys
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

import lficam
from lficam import metrics
from lficam.checkpoints.records import best_checkpoint, checkpoint_data_config, find_checkpoints
from lficam.core.errors import UnknownNameError, UserError
from lficam.core.maps import upsample
from lficam.core.progress import StageProgress
from lficam.evaluation.classification import (
    accuracy_on_test_split,
    evaluate_checkpoint,
    evaluate_stability,
    results_tables,
)
from lficam.evaluation.images import build_test_data
from lficam.evaluation.protocol import protocol_options
from lficam.evaluation.scores import METRICS
from lficam.training.task import train
from tests import warm_python
from tests.conftest import CONF, ROOT, TINY, compose_train, subprocess_env


def tiny_run(tmp_path, name, *overrides):
    run_dir = tmp_path / name
    cfg = compose_train(
        [*TINY, "++trainer.limit_train_batches=3", "callbacks.attention_overlays=null", *overrides], run_dir
    )
    cfg.paths.data_dir = str(tmp_path / "data")
    train(cfg)
    return run_dir


def compose_eval(overrides, output_dir, data_dir):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.data_dir = str(data_dir)
    return cfg


def run_eval(args, tmp_path):
    return warm_python.run(
        [sys.executable, str(ROOT / "eval.py"), *args, f"paths.data_dir={tmp_path / 'data'}"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval_runs")
    return base, [tiny_run(base, f"seed{s}", f"seed={s}") for s in (1, 2)]


@pytest.mark.slow
def test_eval_checkpoint_writes_metrics_tables_and_pictures(runs):
    base, (run, _) = runs
    out = base / "eval_out"
    ckpt = run / "checkpoints" / "last.ckpt"
    result = run_eval(
        [
            f"ckpt_path={ckpt}",
            "eval.num_images=6",
            "eval.cams=[gradcam,scorecam]",
            "eval.pixels_per_step=128",
            f"hydra.run.dir={out}",
        ],
        base,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["maps"]) == {"own", "gradcam", "scorecam"}
    assert report["num_images"] == 6
    assert report["protocol"] == {
        "protocol": "quick",
        "num_images": 6,
        "curve_steps": 16,
        "road_percentages": [0.2, 0.5, 0.8],
        "pixels_per_step": 128,
    }
    own = report["maps"]["own"]
    assert set(own) == set(METRICS)
    assert "| metric | own | gradcam | scorecam |" in (out / "metrics.md").read_text()
    assert (out / "deletion_insertion.png").stat().st_size > 5000
    assert (out / "overlays.png").stat().st_size > 5000
    page = (out / "report.html").read_text()  # the same numbers, both pictures inline
    assert f"{report['maps']['gradcam']['deletion_auc']:.4f}" in page
    assert page.count('src="data:image/png;base64,') == 2
    assert "Results written to" in result.stdout
    assert "test split: done in" in result.stdout + result.stderr  # not a terminal: a line per stage

    # The same numbers computed here, independently, from the checkpoint and the first six test images.
    model = lficam.load(ckpt).eval()
    data = build_test_data(checkpoint_data_config(ckpt), str(base / "data"), {})
    labels, correct = [], 0
    with torch.no_grad():
        for batch in data.test_dataloader():
            correct += (model(batch["image"]).logits.argmax(1) == batch["label"]).sum().item()
            labels.append(batch["label"])
    assert report["test"]["acc"] == pytest.approx(correct / len(torch.cat(labels)), abs=1e-12)
    first = [data.test_set[i] for i in range(6)]
    images = torch.stack([item["image"] for item in first])
    masks = torch.stack([item["mask"] for item in first])
    classes = torch.stack([item["label"] for item in first])
    with torch.no_grad():
        maps = upsample(model(images).attention, (32, 32))
    hits = metrics.pointing_game(maps, masks, tolerance=15 * 32 / 224)
    per_class = [hits[classes == c].mean() for c in classes.unique()]  # per class, then over classes
    assert own["pointing_game"] == pytest.approx(float(torch.stack(per_class).mean()), abs=1e-6)
    assert own["energy_pointing_game"] == pytest.approx(
        float(metrics.energy_pointing_game(maps, masks).nanmean()), rel=1e-5
    )
    assert own["mask_iou"] == pytest.approx(float(metrics.mask_iou(maps, masks).nanmean()), rel=1e-5)
    deletion = metrics.deletion_auc(model, images, maps, pixels_per_step=128)
    assert own["deletion_auc"] == pytest.approx(float(deletion.nanmean()), rel=1e-4)
    gradcam = lficam.cams.create("gradcam", model)(images)
    insertion = metrics.insertion_auc(model, images, gradcam, pixels_per_step=128)
    assert report["maps"]["gradcam"]["insertion_auc"] == pytest.approx(float(insertion.nanmean()), rel=1e-4)


@pytest.mark.slow
def test_eval_pointing_game_is_training_s_for_the_same_checkpoint(runs, tmp_path):
    _, (run, _) = runs
    summary = json.loads((run / "summary.json").read_text())
    ckpt = run / summary["best_checkpoint"]  # the checkpoint training tested
    cfg = compose_eval(
        [
            f"ckpt_path={ckpt}",
            "eval.num_images=64",
            "eval.cams=[]",
            "eval.faithfulness=false",
            "eval.road=false",
        ],
        tmp_path / "out",
        run.parent / "data",
    )
    report = evaluate_checkpoint(cfg)
    assert report["num_images"] == 64  # the whole test split, as training's test
    trained = summary["metrics"]
    for name in ("pointing_game", "energy_pointing_game", "mask_iou"):
        assert report["maps"]["own"][name] == pytest.approx(trained[f"test/attn/{name}"], abs=1e-6), name
    assert report["test"]["acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    assert report["test"]["loss"] == pytest.approx(trained["test/loss"], rel=1e-5)


def test_protocols_and_their_overrides(tmp_path):
    quick = compose_eval([], tmp_path, tmp_path)
    assert protocol_options(quick.eval, quick.protocols) == {
        "protocol": "quick",
        "num_images": 32,
        "curve_steps": 16,
        "road_percentages": [0.2, 0.5, 0.8],
    }
    full = compose_eval(["eval.protocol=full", "eval.num_images=10"], tmp_path, tmp_path)
    assert protocol_options(full.eval, full.protocols) == {
        "protocol": "full",
        "num_images": 10,
        "curve_steps": 224,
        "road_percentages": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
    }
    wrong = compose_eval(["eval.protocol=paper"], tmp_path, tmp_path)
    with pytest.raises(UnknownNameError, match=r"Unknown eval\.protocol 'paper'.*quick"):
        protocol_options(wrong.eval, wrong.protocols)


def test_an_empty_test_split_is_one_sentence():
    empty = SimpleNamespace(test_dataloader=lambda: [])
    with pytest.raises(UserError, match="The test split of SimpleNamespace is empty"):
        accuracy_on_test_split(torch.nn.Identity(), empty, torch.device("cpu"))


def test_results_read_in_80_columns():
    from rich.console import Console

    methods = ["own", "gradcam", "gradcampp", "scorecam", "layercam", "eigencam", "abscam", "cam", "fam"]
    results = {m: {name: 12.3456 + i for i, name in enumerate(METRICS)} for m in methods}
    tables = results_tables("title", results, width=80)
    assert len(tables) == 2
    console = Console(width=80, file=io.StringIO(), record=True)
    for table in tables:
        console.print(table)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    for i in range(len(METRICS)):
        assert text.count(f"{12.3456 + i:.3f}") == len(methods)  # every number of every method, whole
    assert set(text.split()) >= set(methods)


def test_progress_logs_each_stage_with_the_time_left(caplog):
    with caplog.at_level(logging.INFO, logger="lficam"), StageProgress({"a": 1, "b": 3}, terminal=False) as p:
        with p.stage("a"):
            pass
        with p.stage("b"):
            pass
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("a: done in 0 s (25 %); about ") and lines[0].endswith(" left")
    assert lines[1].startswith("b: done in 0 s (100 %); about 0 s left")
    assert set(p.wall_times) == set(p.cpu_times) == {"a", "b", "total"}
    bar = StageProgress({"a": 1, "b": 1}, terminal=True)  # a rich bar instead of log lines
    with bar, bar.stage("a"):
        pass
    assert bar.done == 1 and bar.left() is not None


def _fake_run(folder, best, others, *, summary=None, recorded_in=None):
    """A run folder with epoch checkpoints and a last.ckpt whose monitoring ModelCheckpoint recorded ``best``."""
    checkpoints = folder / "checkpoints"
    checkpoints.mkdir(parents=True)
    hparams = {"model_config": {"backbone": "cifar_resnet20", "num_classes": 3}}
    for name in [best, *others]:
        torch.save({"state_dict": {}, "hyper_parameters": hparams}, checkpoints / name)
    state = {
        "monitor": "val/acc",
        "best_model_path": str((recorded_in or checkpoints) / best),
        "save_top_k": 2,
    }
    callbacks = {
        "ModelCheckpoint{'monitor': 'val/acc', 'mode': 'max'}": state,
        "ModelCheckpoint{'monitor': None, 'mode': 'min'}": {"monitor": None, "best_model_path": ""},
    }
    torch.save(
        {"state_dict": {}, "hyper_parameters": hparams, "callbacks": callbacks}, checkpoints / "last.ckpt"
    )
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps({"best_checkpoint": str(checkpoints / summary)}))


def test_the_best_checkpoint_is_the_one_the_checkpoint_callback_recorded(tmp_path):
    # save_top_k=2: epoch 0 was the best, epoch 3 the second best; the last name in sorted order is not the best
    _fake_run(tmp_path / "sweep" / "a", "epoch_000.ckpt", ["epoch_003.ckpt"])
    # the folder moved since training: the recorded absolute path is found by name in checkpoints/
    _fake_run(tmp_path / "sweep" / "b", "epoch_001.ckpt", ["epoch_002.ckpt"], recorded_in=tmp_path / "gone")
    _fake_run(tmp_path / "sweep" / "c", "epoch_000.ckpt", ["epoch_004.ckpt"], summary="epoch_004.ckpt")
    found = find_checkpoints(tmp_path / "sweep")
    assert [p.relative_to(tmp_path / "sweep").as_posix() for p in found] == [
        "a/checkpoints/epoch_000.ckpt",
        "b/checkpoints/epoch_001.ckpt",
        "c/checkpoints/epoch_004.ckpt",  # summary.json's best_checkpoint comes first
    ]
    (tmp_path / "d" / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="records no best checkpoint"):
        best_checkpoint(tmp_path / "d")


@pytest.mark.slow
def test_stability_over_a_sweep_folder(runs):
    base, _ = runs
    out = base / "stability_out"
    result = run_eval([f"stability.runs={base}", "stability.num_images=32", f"hydra.run.dir={out}"], base)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "stability.json").read_text())
    assert len(report["runs"]) == 2
    assert report["image_ids"] == list(range(32))  # paired by image id
    iou = report["iou_matrix"]
    assert iou[0][0] == pytest.approx(1.0)  # a run against itself
    assert iou[0][1] == pytest.approx(iou[1][0])
    group = report["by_attention"]["lficam"]
    assert group["pairs"] == 1
    assert group["iou_mean"] == pytest.approx(iou[0][1])
    assert group["iou_std"] is None  # one pair has no spread: NaN, written as null (not 0)
    assert (out / "stability.png").is_file()
    page = (out / "report.html").read_text()
    assert f"{group['iou_mean']:.3f} ± –" in page and page.count('src="data:image/png;base64,') == 1


@pytest.mark.slow
def test_stability_refuses_one_run_and_mixed_data(runs, tmp_path):
    _, (run, _) = runs
    one = run_eval(
        [f"stability.runs=[{run / 'checkpoints' / 'last.ckpt'}]", f"hydra.run.dir={tmp_path / 'o'}"], tmp_path
    )
    assert one.returncode == 2
    assert "at least two checkpoints" in one.stdout + one.stderr
    other = tiny_run(tmp_path, "big", "data.image_size=48")
    mixed = run_eval(
        [
            f"stability.runs=[{run / 'checkpoints' / 'last.ckpt'},{other / 'checkpoints' / 'last.ckpt'}]",
            f"hydra.run.dir={tmp_path / 'm'}",
        ],
        tmp_path,
    )
    assert mixed.returncode == 2
    assert "other data" in mixed.stdout + mixed.stderr
    assert "Traceback" not in mixed.stderr


@pytest.mark.slow
def test_eval_of_a_foreign_file_is_one_sentence(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    result = run_eval([f"ckpt_path={bad}", f"hydra.run.dir={tmp_path / 'o'}"], tmp_path)
    assert result.returncode == 2
    assert "Refusing" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_eval_over_several_checkpoints_fails_the_bad_job_and_scores_the_others(runs, tmp_path):
    # issue 18: a user's mistake in one job of `eval.py -m` is that job's failure, not the sweep's end
    base, (run, _) = runs
    missing = tmp_path / "missing.ckpt"
    good = run / "checkpoints" / "last.ckpt"
    sweep = tmp_path / "sweep"
    result = run_eval(
        [
            "-m",
            f"ckpt_path={missing},{good}",
            "eval.num_images=4",
            "eval.cams=[]",
            "eval.faithfulness=false",
            "eval.road=false",
            f"hydra.sweep.dir={sweep}",
        ],
        base,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (sweep / "0" / "metrics.json").exists()
    assert str(missing) in result.stdout + result.stderr + (sweep / "0" / "eval.log").read_text()
    report = json.loads((sweep / "1" / "metrics.json").read_text())
    assert report["num_images"] == 4
    assert 0 <= report["maps"]["own"]["pointing_game"] <= 1


# ------------------------------------------------------------- copied run folders (issue 17, item 7)


@pytest.mark.slow
def test_stability_on_copied_run_folders_uses_the_copies_files(runs, tmp_path, caplog):
    import shutil

    from lficam.evaluation.classification import evaluate_stability

    base, originals = runs
    first, second = tmp_path / "first", tmp_path / "second"
    for run in originals:
        shutil.copytree(run, first / run.name)
    shutil.copytree(first, second)
    shutil.rmtree(first)  # the folder the copy was made from is gone; the fixture's runs are still there
    cfg = compose_eval(
        [f"stability.runs={second}", "stability.num_images=8"], tmp_path / "out", base / "data"
    )
    report = evaluate_stability(cfg)
    assert [r["checkpoint"] for r in report["runs"]] == [
        str(second / run.name / "checkpoints" / "epoch_000.ckpt") for run in originals
    ]
    # a summary.json of an older lficam records absolute paths: one outside the folder is not followed
    summary = second / "seed1" / "summary.json"
    recorded = json.loads(summary.read_text())
    recorded["best_checkpoint"] = str(originals[0] / "checkpoints" / "epoch_000.ckpt")  # exists
    summary.write_text(json.dumps(recorded))
    caplog.clear()  # the progress lines of the stability run above
    with caplog.at_level(logging.WARNING, logger="lficam"):
        assert best_checkpoint(second / "seed1") == second / "seed1" / "checkpoints" / "epoch_000.ckpt"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"{second / 'seed1'} records the checkpoint {originals[0] / 'checkpoints' / 'epoch_000.ckpt'}, outside "
        f"the run folder (copied or moved); using {second / 'seed1' / 'checkpoints' / 'epoch_000.ckpt'} instead."
    ]
    # an absolute one inside the folder is used as it is; a relative one that climbs out of it is not
    recorded["best_checkpoint"] = str(second / "seed1" / "checkpoints" / "last.ckpt")
    summary.write_text(json.dumps(recorded))
    assert best_checkpoint(second / "seed1") == second / "seed1" / "checkpoints" / "last.ckpt"
    recorded["best_checkpoint"] = "../seed2/checkpoints/epoch_000.ckpt"
    summary.write_text(json.dumps(recorded))
    assert best_checkpoint(second / "seed1") == second / "seed1" / "checkpoints" / "epoch_000.ckpt"


# ------------------------------------------------------ options no evaluation can use (item 9)


@pytest.mark.parametrize(
    ("overrides", "sentence"),
    [
        (
            ["eval.num_images=0"],
            "eval.num_images=0 is not a number of test images to score the maps on; use a whole number of at least 1.",
        ),
        (
            ["eval.num_images=-3"],
            "eval.num_images=-3 is not a number of test images to score the maps on; use a whole number of at least 1.",
        ),
        (
            ["protocols.quick.num_images=0"],
            "protocols.quick.num_images=0 is not a number of test images to score the maps on; use a whole number "
            "of at least 1.",
        ),
        (
            ["eval.curve_steps=0"],
            "eval.curve_steps=0 is not a number of deletion/insertion steps; use a whole number of at least 1.",
        ),
        (
            ["eval.protocol=full", "eval.curve_steps=2.5"],
            "eval.curve_steps=2.5 is not a number of deletion/insertion steps; use a whole number of at least 1.",
        ),
        (
            ["eval.road_percentages=[]"],
            "eval.road_percentages=[] is not a list of fractions of the image to remove; give numbers strictly "
            "between 0 and 1, e.g. eval.road_percentages=[0.2,0.5,0.8].",
        ),
        (
            ["eval.road_percentages=[0.5,1.5]"],
            "eval.road_percentages=[0.5, 1.5] is not a list of fractions of the image to remove; give numbers "
            "strictly between 0 and 1, e.g. eval.road_percentages=[0.2,0.5,0.8].",
        ),
        (
            ["eval.pixels_per_step=0"],
            "eval.pixels_per_step=0 is not a number of pixels per deletion/insertion step; use a whole number of "
            "at least 1.",
        ),
        (
            ["eval.batch_size=0"],
            "eval.batch_size=0 is not a number of images per batch; use a whole number of at least 1.",
        ),
        (
            ["eval.retrieval_pictures=-1"],
            "eval.retrieval_pictures=-1 is not a number of retrieval queries to draw; use a whole number of at "
            "least 0.",
        ),
        (
            ["stability.runs=[a.ckpt,b.ckpt]", "stability.num_images=0"],
            "stability.num_images=0 is not a number of test images to compare; use a whole number of at least 1.",
        ),
        (
            ["stability.runs=[a.ckpt,b.ckpt]", "stability.batch_size=-2"],
            "stability.batch_size=-2 is not a number of images per batch; use a whole number of at least 1.",
        ),
        (
            ["stability.runs=[a.ckpt,b.ckpt]", "stability.threshold=1.5"],
            "stability.threshold=1.5 is not a fraction of a map's range; use a number from 0 up to (not "
            "including) 1, e.g. the paper's 0.39215686 (100/255).",
        ),
    ],
)
@pytest.mark.slow
def test_an_eval_count_no_evaluation_can_use_is_one_sentence(overrides, sentence, tmp_path, caplog):
    from lficam.evaluation.command import run_eval as eval_task

    # the options are refused before the checkpoint is read: it need not exist
    cfg = compose_eval([f"ckpt_path={tmp_path / 'absent.ckpt'}", *overrides], tmp_path / "out", tmp_path)
    # a UserError: the command line says it in one sentence, exit code 2 (in eval.py -m, the sweep goes on)
    with pytest.raises(UserError) as refused:
        eval_task(cfg)
    assert [str(refused.value)] == [sentence]


# ---------------------------------------------- test data of other classes (item 8), data_overrides (12e)

SHAPES = "10 classes (disk, square, triangle, star, …)"
QUICK_EVAL = ["eval.num_images=2", "eval.cams=[]", "eval.faithfulness=false", "eval.road=false"]


def test_the_documented_data_overrides_form_works(tmp_path):
    # conf/eval.yaml: 'eval.data_overrides={num_workers: 2, test_size: 500}'
    cfg = compose_eval(["eval.data_overrides={num_workers: 2, test_size: 500}"], tmp_path, tmp_path)
    assert dict(cfg.eval.data_overrides) == {"num_workers": 2, "test_size": 500}


@pytest.mark.slow
def test_test_data_of_other_classes_is_refused_unless_allowed(runs, tmp_path, caplog):
    from lficam.evaluation.command import run_eval as eval_task

    _, (run, _) = runs
    ckpt = run / "checkpoints" / "last.ckpt"
    fewer = [f"ckpt_path={ckpt}", "eval.data_overrides={num_classes: 4}", *QUICK_EVAL]
    cfg = compose_eval(fewer, tmp_path / "refused", run.parent / "data")
    # a UserError: the command line says it in one sentence, exit code 2 (in eval.py -m, the sweep goes on)
    with pytest.raises(UserError) as refused:
        eval_task(cfg)
    assert [str(refused.value)] == [
        f"{str(ckpt)!r} was trained on {SHAPES} but the test data (ShapesDataModule) has 4 classes (disk, square, "
        "triangle, star); evaluate on the checkpoint's own data (leave data unset), or pass "
        "eval.allow_other_data=true to score it on these classes anyway."
    ]
    assert not (tmp_path / "refused" / "metrics.json").exists()
    caplog.clear()

    cfg = compose_eval([*fewer, "eval.allow_other_data=true"], tmp_path / "allowed", run.parent / "data")
    with caplog.at_level(logging.WARNING, logger="lficam"):
        report = eval_task(cfg)
    assert f"Scoring {ckpt} (trained on {SHAPES}) on ShapesDataModule of 4 classes" in caplog.text
    assert report["num_images"] == 2 and 0 <= report["test"]["acc"] <= 1
    assert (tmp_path / "allowed" / "metrics.json").is_file()


def _image_folder(root, classes):
    """train/ and val/ with one 16 px image per class."""
    from PIL import Image

    for split in ("train", "val"):
        for i, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (16, 16), (20 * i, 0, 0)).save(root / split / name / "a.png")


@pytest.mark.slow
def test_test_data_of_other_class_names_is_refused(runs, tmp_path, caplog):
    from lficam.evaluation.command import run_eval as eval_task

    _, (run, _) = runs
    ckpt = run / "checkpoints" / "last.ckpt"
    garments = ["bag", "boot", "coat", "dress", "pullover", "sandal", "shirt", "sneaker", "top", "trouser"]
    _image_folder(tmp_path / "garments", garments)
    data = [
        "+data=image_folder",
        f"data.root={tmp_path / 'garments'}",
        "data.image_size=16",
        "data.num_workers=0",
    ]
    cfg = compose_eval([f"ckpt_path={ckpt}", *data, *QUICK_EVAL], tmp_path / "out", tmp_path)
    # a UserError: the command line says it in one sentence, exit code 2 (in eval.py -m, the sweep goes on)
    with pytest.raises(UserError) as refused:
        eval_task(cfg)
    assert [str(refused.value)] == [
        f"{str(ckpt)!r} was trained on {SHAPES} but the test data (ImageFolderDataModule) has 10 classes (bag, "
        "boot, coat, dress, …); evaluate on the checkpoint's own data (leave data unset), or pass "
        "eval.allow_other_data=true to score it on these classes anyway."
    ]
    # more classes than the model has outputs: its labels cannot be scored, allowed or not
    _image_folder(tmp_path / "more", [f"c{i:02d}" for i in range(12)])
    data[1] = f"data.root={tmp_path / 'more'}"
    cfg = compose_eval(
        [f"ckpt_path={ckpt}", *data, *QUICK_EVAL, "eval.allow_other_data=true"], tmp_path / "o2", tmp_path
    )
    caplog.clear()
    with pytest.raises(UserError) as refused:
        eval_task(cfg)
    assert [str(refused.value)] == [
        "The test data (ImageFolderDataModule) has 12 classes (c00, c01, c02, c03, …), more than the 10 outputs "
        f"of {str(ckpt)!r}, so its labels cannot be scored even with eval.allow_other_data=true; evaluate on "
        "data of at most 10 classes."
    ]


# ------------------------------------- one definition of each number: eval.py and the study agree (issue 18)


@pytest.mark.slow
def test_eval_and_the_study_give_the_same_value_for_every_metric(runs, tmp_path):
    """One checkpoint, the same first 8 test images, the same protocol: eval.py's metrics.json and the study's
    metrics.json agree on every metric both compute (all of them but ROAD, which the study does not run), for
    the own map and Grad-CAM; and the cross-run statistics of a one-pair group agree, std NaN in both."""
    from omegaconf import OmegaConf

    from lficam.study import attention as study_attention
    from lficam.study.stability import stability_groups

    base, (run, second) = runs
    best = best_checkpoint(run)
    cfg = compose_eval(
        [f"ckpt_path={best}", "eval.num_images=8", "eval.cams=[gradcam]", "eval.road=false"],
        tmp_path / "eval",
        base / "data",
    )
    report = evaluate_checkpoint(cfg)
    options = OmegaConf.create(
        {
            "images": 8,
            "faithfulness_images": 8,
            "stability_images": 8,
            "faithfulness_steps": report["protocol"]["curve_steps"],
            "noise_std": 0.1,
            "noise_samples": 4,
            "mask_iou_threshold": 0.5,
            "batch_size": int(cfg.eval.batch_size),
        }
    )
    test = study_attention.load_test_images(best, 8, torch.device("cpu"))
    study = study_attention.evaluate_run(run, test, ["own", "gradcam"], options, True, torch.device("cpu"))
    assert report["num_images"] == study["num_images"] == 8
    expected = {
        "own": set(METRICS) - {"road_morf", "road_lerf", "road_combined"},
        # eval.py scores input stability for the own map only
        "gradcam": set(METRICS)
        - {"road_morf", "road_lerf", "road_combined"}
        - {m for m in METRICS if "stab" in m},
    }
    for method, names in expected.items():
        assert set(report["maps"][method]) == names
        for name in names:
            mine, theirs = report["maps"][method][name], study["maps"][method][name]
            assert mine == pytest.approx(theirs, rel=1e-6, nan_ok=True), (method, name)

    out = tmp_path / "stability"
    cfg = compose_eval(
        [f"stability.runs=[{best},{best_checkpoint(second)}]", "stability.num_images=8"], out, base / "data"
    )
    cross = evaluate_stability(cfg)
    kept = []
    for folder in (run, second):
        model = lficam.load(best_checkpoint(folder)).eval()
        from lficam.evaluation.maps import map_fn, maps_of

        kept.append({"label": folder.name, "maps": maps_of(map_fn(model, "own"), test.images, 8)})
    studied = stability_groups(kept, {"lficam": [run.name, second.name]})["groups"]["lficam"]
    group = cross["by_attention"]["lficam"]
    assert group["pairs"] == studied["pairs"] == 1
    for key in ("iou_mean", "spearman_mean"):
        assert group[key] == pytest.approx(studied[key], rel=1e-6)
    assert math.isnan(group["iou_std"]) and math.isnan(studied["iou_std"])
    assert json.loads((out / "stability.json").read_text())["by_attention"]["lficam"]["iou_std"] is None
