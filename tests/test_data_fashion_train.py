"""A few training steps of each Fashion-MNIST module through ``train.py`` (a subprocess, as a user runs it), and
``eval.py`` on the cluttered run: localisation metrics come out of both."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_quietly
from tests.test_data_fashion import write_fashion

QUICK = [
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=1",
    "++trainer.limit_test_batches=1",
    "++trainer.enable_progress_bar=false",
    "logger=none",
    "callbacks.attention_overlays=null",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "callbacks.learning_rate_monitor=null",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "module.stability_probe_size=0",
    "module.input_stability=[]",
]
LOCALISATION = ("test/attn/pointing_game", "test/attn/energy_pointing_game", "test/attn/mask_iou")


def train_cli(tmp_path: Path, overrides: list[str]) -> dict:
    run_dir = tmp_path / "run"
    result = run_quietly(
        [
            sys.executable,
            str(ROOT / "train.py"),
            *QUICK,
            *overrides,
            f"paths.data_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_fashion_mnist_trains_with_localisation_metrics(tmp_path: Path) -> None:
    write_fashion(tmp_path / "files", gz=False)
    summary = train_cli(
        tmp_path, ["data=fashion_mnist", f"data.root={tmp_path / 'files'}", "data.val_size=8"]
    )
    for key in ("train/loss_epoch", "test/acc", *LOCALISATION):
        assert math.isfinite(summary["metrics"][key]), key
    checkpoint = torch.load(
        Path(summary["run_dir"], summary["best_checkpoint"]), weights_only=True, map_location="cpu"
    )
    stored = next(v for v in checkpoint.values() if isinstance(v, dict) and "lficam_input" in v)[
        "lficam_input"
    ]
    assert stored["image_size"] == 32 and stored["class_names"][0] == "T-shirt/top"
    assert stored["mean"][0] == pytest.approx(stored["mean"][2]) and 0 < stored["std"][0] < 1


@pytest.mark.slow
def test_fashion_clutter_trains_and_eval_reports_localisation(tmp_path: Path) -> None:
    write_fashion(tmp_path / "files")
    overrides = [
        "data=fashion_clutter",
        f"data.root={tmp_path / 'files'}",
        "data.val_garments=10",
        "data.train_size=32",
        "data.val_size=8",
        "data.test_size=8",
        "attention=none",
    ]
    summary = train_cli(tmp_path, overrides)
    for key in ("test/acc", *LOCALISATION):
        assert math.isfinite(summary["metrics"][key]), key
    assert len(list((tmp_path / "cache" / "fashion_clutter").glob("*.pt"))) == 1
    out = tmp_path / "eval"
    result = run_quietly(
        [
            sys.executable,
            str(ROOT / "eval.py"),
            f"ckpt_path={Path(summary['run_dir'], summary['best_checkpoint'])}",
            "eval.cams=[gradcam]",
            "eval.num_images=8",
            "eval.faithfulness=false",
            "eval.road=false",
            f"paths.data_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={out}",
        ]
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    report = json.loads((out / "metrics.json").read_text())
    assert report["num_images"] == 8
    for method in report["maps"].values():
        for key in ("pointing_game", "energy_pointing_game", "mask_iou"):
            assert 0 <= method[key] <= 1, key
