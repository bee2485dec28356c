"""eval.py: a checkpoint's accuracy and attention metrics, and the paper's cross-run stability."""

import io
import json
import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

import lficam
from lficam import metrics as M
from lficam.errors import UnknownNameError, UserError
from lficam.evaluate import (
    METRICS,
    best_checkpoint,
    build_test_data,
    checkpoint_data_config,
    evaluate_checkpoint,
    find_checkpoints,
    pass_over_test_split,
    protocol_options,
    results_tables,
)
from lficam.maps import upsample
from lficam.progress import StageProgress
from lficam.train import train
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
    return subprocess.run(
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
    hits = M.pointing_game(maps, masks, tolerance=15 * 32 / 224)
    per_class = [hits[classes == c].mean() for c in classes.unique()]  # per class, then over classes
    assert own["pointing_game"] == pytest.approx(float(torch.stack(per_class).mean()), abs=1e-6)
    assert own["energy_pointing_game"] == pytest.approx(
        float(M.energy_pointing_game(maps, masks).nanmean()), rel=1e-5
    )
    assert own["mask_iou"] == pytest.approx(float(M.mask_iou(maps, masks).nanmean()), rel=1e-5)
    deletion = M.deletion_auc(model, images, maps, pixels_per_step=128)
    assert own["deletion_auc"] == pytest.approx(float(deletion.nanmean()), rel=1e-4)
    gradcam = lficam.cams.create("gradcam", model)(images)
    insertion = M.insertion_auc(model, images, gradcam, pixels_per_step=128)
    assert report["maps"]["gradcam"]["insertion_auc"] == pytest.approx(float(insertion.nanmean()), rel=1e-4)


def test_eval_pointing_game_is_training_s_for_the_same_checkpoint(runs, tmp_path):
    _, (run, _) = runs
    summary = json.loads((run / "summary.json").read_text())
    ckpt = summary["best_checkpoint"]  # the checkpoint training tested
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
        pass_over_test_split(torch.nn.Identity(), empty, torch.device("cpu"), 8)


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
    assert group["iou_std"] == 0.0
    assert (out / "stability.png").is_file()


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


def test_eval_of_a_foreign_file_is_one_sentence(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    result = run_eval([f"ckpt_path={bad}", f"hydra.run.dir={tmp_path / 'o'}"], tmp_path)
    assert result.returncode == 2
    assert "Refusing" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
