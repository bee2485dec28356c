"""eval.py: a checkpoint's accuracy and attention metrics, and the paper's cross-run stability."""

import json
import subprocess
import sys

import pytest

from lficam.train import train
from tests.conftest import ROOT, TINY, compose_train, subprocess_env


def tiny_run(tmp_path, name, *overrides):
    run_dir = tmp_path / name
    cfg = compose_train(
        [*TINY, "++trainer.limit_train_batches=3", "callbacks.attention_overlays=null", *overrides], run_dir
    )
    cfg.paths.data_dir = str(tmp_path / "data")
    train(cfg)
    return run_dir


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
    assert 0 <= report["test"]["acc"] <= 1
    assert report["num_images"] == 6
    own = report["maps"]["own"]
    for key in (
        "pointing_game",
        "energy_pointing_game",
        "mask_iou",
        "deletion_auc",
        "insertion_auc",
        "average_drop",
        "increase_in_confidence",
        "road_combined",
        "stability_noise_iou",
    ):
        assert key in own, key
    assert 0 <= own["deletion_auc"] <= 1
    assert 0 <= own["average_drop"] <= 100
    assert "| own |" in (out / "metrics.md").read_text()
    assert (out / "deletion_insertion.png").stat().st_size > 5000
    assert (out / "overlays.png").stat().st_size > 5000
    assert "Results written to" in result.stdout


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
