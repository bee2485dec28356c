"""A non-editable install runs every command from a folder outside the checkout.

The wheel is built from a copy of the sources (what a fresh clone holds: pyproject.toml, README.md, lficam/
with its conf link, conf/) and installed with pip into a temporary target without dependencies: the suite's
environment provides torch and the rest, and PYTHONPATH points at the target only, so the installed copy
(not the checkout, not the environment's editable install) is what runs; the test checks that it is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT

TINY_RUN = [
    "data.image_size=16",
    "data.train_size=32",
    "data.val_size=16",
    "data.test_size=16",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=2",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "callbacks.attention_overlays=null",
]


def _run(
    command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command[0]} …: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_a_non_editable_install_runs_train_eval_explain_and_export_from_another_folder(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "lficam", source / "lficam", symlinks=True, ignore=ignore)  # lficam/conf: a link
    shutil.copytree(ROOT / "conf", source / "conf", ignore=ignore)
    assert (source / "lficam" / "conf").is_symlink()

    base_env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PIP_NO_INDEX": "1"}
    base_env.pop("PYTHONPATH", None)
    base_env.pop("HYDRA_FULL_ERROR", None)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = _run(
        [*pip, "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
        tmp_path,
        base_env,
    )
    assert "deprecated" not in built.stdout + built.stderr  # setuptools warned about the license table
    [wheel] = (tmp_path / "dist").glob("lficam-*.whl")
    site = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], tmp_path, base_env)

    work = tmp_path / "elsewhere"  # no conf/, no lficam/ here: everything comes from the install
    work.mkdir()
    env = {**base_env, "PYTHONPATH": str(site)}
    located = _run(
        [
            sys.executable,
            "-c",
            "import importlib.util as u; s = u.find_spec('lficam'); print(s.origin);"
            "print(*s.submodule_search_locations)",
        ],
        work,
        env,
    ).stdout.split()
    assert located == [str(site / "lficam" / "__init__.py"), str(site / "lficam")]
    assert not (site / "lficam" / "conf").is_symlink()  # the wheel holds the files themselves
    assert (site / "lficam" / "conf" / "train.yaml").is_file()
    assert (site / "lficam" / "conf" / "data" / "shapes.yaml").is_file()
    bin_dir = site / "bin"

    run_dir = work / "run"
    trained = _run(
        [str(bin_dir / "lficam-train"), *TINY_RUN, f"hydra.run.dir={run_dir}", "+foo.bar=1"], work, env
    )
    output = trained.stdout + trained.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run_dir"] == str(run_dir)
    assert 0 <= summary["metrics"]["test/acc"] <= 1
    assert f"Run folder: {run_dir}" in trained.stdout
    assert (work / "data" / "shapes").is_dir()  # paths.root_dir is the folder the command ran in
    hydra_cfg = (run_dir / ".hydra" / "hydra.yaml").read_text()
    assert "path: lficam.conf" in hydra_cfg and "schema: pkg" in hydra_cfg  # the installed configs
    assert "+foo.bar=1 has no effect: nothing reads 'foo'" in output
    assert "💡" not in output and "litlogger" not in output and "litmodels" not in output

    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    evaluated = _run(
        [
            str(bin_dir / "lficam-eval"),
            f"ckpt_path={checkpoint}",
            "eval.num_images=4",
            "eval.cams=[gradcam]",
            "eval.faithfulness=false",
            "eval.road=false",
            f"hydra.run.dir={work / 'eval'}",
        ],
        work,
        env,
    )
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 4
    assert set(metrics["maps"]) == {"own", "gradcam"}
    assert f"Results written to {work / 'eval'}" in evaluated.stdout

    picture = work / "red.png"
    Image.new("RGB", (20, 20), (255, 0, 0)).save(picture)
    explained = _run(
        [
            str(bin_dir / "lficam-explain"),
            f"ckpt_path={checkpoint}",
            f"images=[{picture}]",
            "methods=[own,gradcam]",
            "output_dir=pictures",
        ],
        work,
        env,
    )
    assert explained.stdout.strip() == "pictures"
    assert [p.name for p in (work / "pictures").iterdir()] == ["red.png"]

    exported = _run(
        [str(bin_dir / "lficam-export"), f"ckpt_path={checkpoint}", "format=safetensors", "output=model.st"],
        work,
        env,
    )
    assert exported.stdout.startswith("safetensors: wrote model.st")
    assert (work / "model.st").stat().st_size > 10_000
    assert sorted(p.name for p in work.iterdir()) == [
        "data",
        "eval",
        "model.st",
        "pictures",
        "red.png",
        "run",
    ]
