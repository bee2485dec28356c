"""What can be checked of the Docker image without a Docker engine: its inputs exist, its pins and command agree."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def _args() -> dict[str, str]:
    args = {}
    for name, rest in _instructions():
        if name == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = shlex.split(value)[0] if value.startswith('"') else value
    return args


def _ignored(relative: str, patterns: list[str]) -> bool:
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            candidates = [prefix, prefix.split("/")[-1]] if pattern.startswith("**/") else [prefix]
            if any(fnmatch.fnmatch(c, bare) for c in candidates):
                return True
    return False


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _copies() -> list[tuple[list[str], str]]:
    copies = []
    for name, rest in _instructions():
        if name in ("COPY", "ADD"):
            tokens = [t for t in shlex.split(rest) if not t.startswith("--")]
            assert not rest.startswith("--from"), "multi-stage copies are not checked here"
            copies.append((tokens[:-1], tokens[-1]))
    return copies


def test_every_copy_source_exists_and_is_not_ignored() -> None:
    patterns = _dockerignore()
    copies = _copies()
    assert copies
    for sources, _ in copies:
        for source in sources:
            matches = sorted(ROOT.glob(source))
            assert matches, f"COPY source {source!r} matches nothing in the repository"
            for match in matches:
                relative = match.relative_to(ROOT).as_posix()
                assert not _ignored(relative, patterns), f"{relative} is copied but excluded by .dockerignore"


def test_dockerignore_keeps_environments_data_and_runs_out() -> None:
    patterns = _dockerignore()
    for path in (
        ".venv/bin/python",
        "outputs/train/runs/x/last.ckpt",
        "data/cifar-10-batches-bin/data_batch_1.bin",
        ".git/HEAD",
        "lficam/__pycache__/x.pyc",
        "multirun/0/a.log",
        "wandb/run/x",
    ):
        assert _ignored(path, patterns), path
    for path in (
        "lficam/data/cifar.py",
        "lficam/checkpoints/loading.py",
        "conf/data/cifar10.yaml",
        "train.py",
    ):
        assert not _ignored(path, patterns), path


def test_torch_pins_equal_the_makefile() -> None:
    makefile = (ROOT / "Makefile").read_text()
    pins = re.search(r"^TORCH_PINS \?= (.+)$", makefile, re.MULTILINE).group(1).strip()
    assert _args()["TORCH_PINS"] == pins == "torch==2.14.1 torchvision==0.29.1"
    installs = [rest for name, rest in _instructions() if name == "RUN" and "pip install" in rest]
    assert installs
    assert all("${TORCH_PINS}" in rest for rest in installs)  # torch is never left unpinned


def test_installed_extras_exist_in_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installs = " ".join(rest for name, rest in _instructions() if name == "RUN")
    wanted = re.search(r'"\.\[([a-z,]+)\]"', installs).group(1).split(",")
    assert set(wanted) <= set(extras), set(wanted) - set(extras)
    assert "dev" not in wanted


def test_default_command_is_train_py_with_its_configs() -> None:
    instructions = _instructions()
    cmd = [rest for name, rest in instructions if name == "CMD"]
    assert len(cmd) == 1
    command = json.loads(cmd[0])
    assert command == ["python", "train.py"]
    workdir = [rest for name, rest in instructions if name == "WORKDIR"][-1]
    copied = {}
    for sources, destination in _copies():
        for source in sources:
            for match in ROOT.glob(source):
                target = destination if not destination.endswith("/") else destination + match.name
                copied[match.relative_to(ROOT).as_posix()] = target
    script = ROOT / command[1]
    assert script.is_file()
    assert copied["train.py"] in ("./train.py", "train.py", f"{workdir}/train.py")
    # train.py composes its config from conf/ beside it (config_path="conf")
    assert 'config_path="conf"' in script.read_text()
    assert copied["conf"] in ("./conf", "conf", f"{workdir}/conf")
    # pip builds the package from pyproject.toml, which names README.md as its readme
    assert {"pyproject.toml", "README.md", "lficam"} <= set(copied)


def test_image_is_gpu_capable_and_offline_by_default() -> None:
    instructions = _instructions()
    env = " ".join(rest for name, rest in instructions if name == "ENV")
    assert "WANDB_MODE=offline" in env
    base = [rest for name, rest in instructions if name == "FROM"]
    assert base == ["${BASE_IMAGE}"]
    # PyPI's Linux torch wheels carry their CUDA runtime; a CUDA base image works as well via --build-arg
    assert _args()["BASE_IMAGE"].startswith(("python:3.1", "nvidia/cuda:", "pytorch/pytorch:"))


@pytest.mark.parametrize("pattern", ["data", "outputs", ".venv", ".git"])
def test_each_required_exclusion_is_listed(pattern: str) -> None:
    assert pattern in _dockerignore()
