"""The training task end to end: fast_dev_run, a short real training, the CLI contract and its errors."""

import csv
import json
import math
import sys

import pytest

from lficam.training.task import train
from tests import warm_python
from tests.conftest import ROOT, TINY, compose_train, subprocess_env

CLI_TINY = [
    "data.train_size=128",
    "data.val_size=64",
    "data.test_size=64",
    "data.batch_size=32",
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=4",
    "++trainer.limit_val_batches=2",
    "++trainer.limit_test_batches=2",
]


def run_cli(args, tmp_path, timeout=300):
    env = subprocess_env()
    return warm_python.run(
        [sys.executable, str(ROOT / "train.py"), *args, f"paths.data_dir={tmp_path / 'data'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_fast_dev_run_through_the_task(tmp_path):
    cfg = compose_train([*TINY, "debug=fdr"], tmp_path)
    metrics = train(cfg)
    for key in ("train/loss_step", "val/acc", "test/acc", "test/attn/pointing_game"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert 0 <= metrics["test/acc"] <= 1


@pytest.mark.slow
def test_short_training_learns_the_shapes(tmp_path):
    cfg = compose_train(
        [
            *TINY,
            "data.image_size=24",
            "data.train_size=1600",
            "data.val_size=300",
            "data.test_size=300",
            "data.batch_size=64",
            "trainer.max_epochs=6",
            "optimizer=adam",
            "optimizer.lr=5e-3",
            "callbacks.attention_overlays=null",
        ],
        tmp_path,
    )
    metrics = train(cfg)
    # Chance is 0.10 on ten classes; six short epochs on 1600 images of 24 px get far beyond it (0.41 on one
    # thread; 16 px is too coarse for the shapes: 0.22 after eight).
    assert metrics["test/acc"] >= 0.3, metrics
    assert metrics["val/acc_best"] >= metrics["val/acc"] - 1e-6
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metrics"]["test/acc"] == pytest.approx(metrics["test/acc"])
    assert summary["best_checkpoint"].endswith(".ckpt")


@pytest.mark.slow
def test_cli_short_job_writes_checkpoint_and_csv(tmp_path):
    run_dir = tmp_path / "SOME_DIR"
    result = run_cli([*CLI_TINY, f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == ["epoch_000.ckpt", "last.ckpt"]
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    accuracies = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    assert len(accuracies) == 1 and 0 <= accuracies[0] <= 1
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "overlays" / "final.png").stat().st_size > 10_000
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run_dir"] == str(run_dir)
    # relative to the run folder: a copied or moved folder still names its own checkpoint
    assert summary["best_checkpoint"] == "checkpoints/epoch_000.ckpt"
    assert "test/acc" in summary["metrics"]
    assert "lficam run summary" in result.stdout and str(run_dir) in result.stdout


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model=resnet9", "Available options in 'model'"),
        ("attention=gradcam", "Available options in 'attention'"),
        ("data=imagenet21k", "Available options in 'data'"),
        ("no_such_key=1", "Could not override 'no_such_key'"),
    ],
)
@pytest.mark.slow
def test_cli_bad_choice_is_one_clear_message(override, expected, tmp_path):
    result = run_cli([override, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=120)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_non_finite_loss_stops_with_a_sentence(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli([*CLI_TINY, "optimizer.lr=1e30", f"hydra.run.dir={run_dir}"], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "The training loss became" in output and "lower the learning rate" in output
    assert "Traceback" not in output
    assert str(run_dir) in output  # says where what was written lies
