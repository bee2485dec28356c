"""python -m lficam.export: ONNX, TorchScript and safetensors exports agree with PyTorch at another batch size."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch

import lficam
from lficam.cli import export as main
from lficam.data import ShapesDataModule
from lficam.export import export
from lficam.training.module import LitClassifier
from tests.conftest import quiet_trainer

CONFIG = {"backbone": "cifar_resnet20", "num_classes": 5, "attention": "lficam", "block": "auto"}
SIZE = 24  # not a power of two: the ONNX graph must not bake in the training size of the maps


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Lightning checkpoint after two SGD steps (BatchNorm statistics no longer at their init)."""
    torch.manual_seed(0)
    data = ShapesDataModule(
        image_size=SIZE, num_classes=5, train_size=8, val_size=4, test_size=4, batch_size=4, cache_dir=None
    )
    module = LitClassifier(
        lficam.create_model(**CONFIG), partial(torch.optim.SGD, lr=0.1), num_classes=5, model_config=CONFIG
    )
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    path = tmp_path_factory.mktemp("export") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def _probe(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7)) * 1.5


def _reference(checkpoint: Path, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        output = lficam.load(checkpoint)(images)
    return output.logits, output.attention


@pytest.mark.slow
def test_onnx_matches_pytorch_at_another_batch_size(checkpoint: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime

    report = export(checkpoint, "onnx", tmp_path / "model.onnx", batch_size=2, check_batch_size=3)
    print(report)
    assert report.check_batch_size != report.batch_size
    assert report.max_abs_diff_attention < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # one file, no external-data file
    # independently of export()'s own check: a third batch size through onnxruntime
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "attention"]
    images = _probe(5)
    logits, attention = session.run(None, {"images": images.numpy()})
    expected_logits, expected_attention = _reference(checkpoint, images)
    scale = float(expected_logits.abs().max())
    diff_logits = float(abs(logits - expected_logits.numpy()).max())
    diff_attention = float(abs(attention - expected_attention.numpy()).max())
    print(
        f"onnxruntime vs PyTorch at batch 5: max |Δ logits| = {diff_logits:.3g} (max |logits| = {scale:.3g}), "
        f"max |Δ attention| = {diff_attention:.3g}"
    )
    assert logits.shape == (5, 5)
    assert attention.shape == (5, 6, 6)
    assert diff_logits < 1e-5 * max(1.0, scale)  # float32 sums in another order: relative error ~1e-6
    assert report.max_abs_diff_logits < 1e-5 * max(1.0, scale)
    assert diff_attention < 1e-5
    assert [(o.domain, o.version) for o in onnx.load(str(report.path)).opset_import if o.domain == ""] == [
        ("", 18)
    ]
    metadata = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
    stored = json.loads(metadata["lficam"])
    assert stored["model_config"] == CONFIG
    assert stored["input"]["image_size"] == SIZE


def test_torchscript_matches_pytorch_at_another_batch_size(checkpoint: Path, tmp_path: Path) -> None:
    report = export(checkpoint, "torchscript", tmp_path / "model.pt", batch_size=2, check_batch_size=4)
    print(report)
    assert report.max_abs_diff_logits < 1e-5
    assert report.max_abs_diff_attention < 1e-5
    files = {"lficam.json": ""}
    scripted = torch.jit.load(str(report.path), _extra_files=files)
    images = _probe(1)
    with torch.no_grad():
        logits, attention = scripted(images)
    expected_logits, expected_attention = _reference(checkpoint, images)
    diff = max(
        float((logits - expected_logits).abs().max()), float((attention - expected_attention).abs().max())
    )
    print(f"TorchScript vs PyTorch at batch 1: max |Δ| = {diff:.3g}")
    assert diff < 1e-5
    assert json.loads(files["lficam.json"])["outputs"] == ["logits", "attention"]


def test_safetensors_round_trip_is_exact(checkpoint: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    report = export(checkpoint, "safetensors", tmp_path / "model.safetensors")
    print(report)
    assert report.max_abs_diff_logits == 0.0
    assert report.max_abs_diff_attention == 0.0
    with safe_open(str(report.path), framework="pt") as f:
        keys = set(f.keys())
        metadata = json.loads(f.metadata()["lficam"])
    # exactly the network's own tensors under its own names (fin.body.*, fc.*), not the LightningModule's net.*
    assert keys == set(lficam.create_model(**CONFIG).state_dict())
    assert "fin.body.0.weight" in keys
    assert metadata["model_config"] == CONFIG
    assert metadata["input"]["image_size"] == SIZE
    assert metadata["input"]["mean"] == [0.5, 0.5, 0.5]
    assert metadata["input"]["std"] == [0.25, 0.25, 0.25]
    assert metadata["class_names"] == ["disk", "square", "triangle", "star", "cross"]
    # a safetensors export is itself a valid source for another export
    again = export(report.path, "safetensors", tmp_path / "again.safetensors")
    assert again.max_abs_diff_logits == 0.0


def test_default_output_sits_next_to_the_checkpoint(checkpoint: Path) -> None:
    report = export(checkpoint, "safetensors")
    assert report.path == checkpoint.with_suffix(".safetensors")
    assert report.path.is_file()


def test_cli_unknown_format_is_one_sentence(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([f"ckpt_path={checkpoint}", "format=tflite"]) == 2
    assert capsys.readouterr().err == (
        "Error: Unknown export format 'tflite': choose one of onnx, safetensors, torchscript.\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["format=onnx"], "No checkpoint given: pass ckpt_path="),
        (
            ["ckpt_path=x.ckpt", "fromat=onnx"],
            "Unknown export option 'fromat': choose among ckpt_path, format",
        ),
        (["ckpt_path"], "Expected key=value arguments, got 'ckpt_path'"),
        (["ckpt_path=missing.ckpt"], "Model file 'missing.ckpt' does not exist"),
    ],
)
def test_cli_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_writes_and_reports(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main([f"ckpt_path={checkpoint}", "format=safetensors", f"output={tmp_path / 'cli.safetensors'}"]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("safetensors: wrote ")
    assert "checked with batch 3: max |Δ logits| = 0, max |Δ attention| = 0 against PyTorch" in out


# ONNX opsets: exactly the one asked for, or one sentence and nothing written


def _default_opset(model_path: Path) -> list[tuple[str, int]]:
    import onnx

    return [
        (o.domain, o.version) for o in onnx.load(str(model_path)).opset_import if o.domain in ("", "ai.onnx")
    ]


@pytest.mark.slow
def test_onnx_is_written_at_the_opset_asked_for(checkpoint: Path, tmp_path: Path) -> None:
    """21 is not the exporter's own 18: the file really is converted to it."""
    report = export(checkpoint, "onnx", tmp_path / "model.onnx", opset=21)
    assert _default_opset(report.path) == [("", 21)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # the staging folder is gone


@pytest.mark.parametrize("opset", [1, 17, 29])
def test_an_opset_the_exporter_cannot_write_is_one_sentence_and_nothing_is_written(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], opset: int
) -> None:
    import onnx

    from lficam.export.exporter import onnx_opsets

    assert onnx_opsets() == (18, onnx.defs.onnx_opset_version())
    kept = tmp_path / "kept.onnx"
    kept.write_bytes(b"an earlier export")
    for output in (tmp_path / "new.onnx", kept):
        assert main([f"ckpt_path={checkpoint}", "format=onnx", f"opset={opset}", f"output={output}"]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == (
            f"Error: opset={opset} cannot be exported: the installed exporter (torch "
            f"{torch.__version__.split('+')[0]}, onnx {onnx.__version__}) writes ONNX opsets 18 to "
            f"{onnx.defs.onnx_opset_version()} only; choose one of them (nothing was written).\n"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.onnx"]
    assert kept.read_bytes() == b"an earlier export"


@pytest.mark.slow
def test_an_export_at_another_opset_than_asked_is_refused_and_not_kept(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were 17 offered, torch would export at 18 (its version converter fails on these models) and say so
    only in a log line: the written file's opset is checked, and the file is not kept."""
    import lficam.export.exporter as exporting
    from lficam.core.errors import UserError

    monkeypatch.setattr(exporting, "onnx_opsets", lambda: (7, 28))
    kept = tmp_path / "model.onnx"
    kept.write_bytes(b"an earlier export")
    with pytest.raises(UserError) as refused:
        export(checkpoint, "onnx", kept, opset=17)
    message = str(refused.value)
    assert message.startswith(
        "The ONNX exporter wrote opset 18 instead of opset=17 (its version converter failed: "
    )
    assert message.endswith("), so nothing was written; choose opset=18.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert kept.read_bytes() == b"an earlier export"
