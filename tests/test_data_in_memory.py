"""The cache files of the in-memory splits (lficam/data/in_memory.py): a cache that cannot be read or written
is warned about, by name and with the reason, and the data served is the data built from the source."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from lficam.data.in_memory import load_cache, load_splits, save_cache, save_splits
from lficam.data.shapes_datamodule import ShapesDataModule

SHAPES = {"image_size": 16, "train_size": 8, "val_size": 6, "test_size": 4}


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lficam" and r.levelno == logging.WARNING]


def _splits() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return {
        split: (
            torch.randint(0, 256, (n, 3, 5, 5), dtype=torch.uint8, generator=generator),
            torch.arange(n) % 3,
            torch.rand(n, 5, 5, generator=generator) > 0.5,
        )
        for split, n in (("train", 4), ("val", 3), ("test", 2))
    }


def test_a_cache_round_trip_is_silent_and_exact(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, splits = tmp_path / "cache" / "splits.pt", _splits()
    with caplog.at_level(logging.WARNING, logger="lficam"):
        save_splits(path, splits)
        loaded = load_splits(path, 5)
    assert _warnings(caplog) == []
    assert sorted(loaded) == ["test", "train", "val"]
    for split, tensors in splits.items():
        for read, written in zip(loaded[split], tensors, strict=True):
            assert read.dtype == written.dtype and torch.equal(read, written), split
    assert sorted(p.name for p in path.parent.iterdir()) == ["splits.pt"]  # no temporary file left


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: b"", "it is not a file torch.save writes"),
        (lambda data: b"not a torch file at all", "it is not a file torch.save writes"),
        (lambda data: data[: len(data) // 2], "its zip directory is damaged"),
    ],
    ids=["empty", "foreign", "cut-short"],
)
def test_a_damaged_cache_is_warned_about_and_the_data_is_built_again(
    damage, reason: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fresh = ShapesDataModule(**SHAPES, cache_dir=None).render_split("val")
    ShapesDataModule(**SHAPES, cache_dir=str(tmp_path)).render_split("val")
    [path] = (tmp_path / "shapes").glob("val-*.pt")
    path.write_bytes(damage(path.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="lficam"):
        assert load_cache(path) is None
        served = ShapesDataModule(**SHAPES, cache_dir=str(tmp_path)).render_split("val")
    [warning, again] = _warnings(caplog)  # once by load_cache, once by the data module
    assert warning == again
    assert warning.startswith(f"Cannot read the cache file {path} ({reason}")
    assert warning.endswith(": building the data from its source instead and writing the cache again.")
    for read, built in zip(served, fresh, strict=True):
        assert torch.equal(read, built)
    # the cache was written again, and a third module reads it without a word
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lficam"):
        cached = load_cache(path)
    assert _warnings(caplog) == [] and torch.equal(cached["images"], fresh[0])


def test_a_cache_the_os_refuses_to_read_gives_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "splits.pt"
    save_splits(path, _splits())
    opened = Path.open

    def refuse(self: Path, *args: object, **kwargs: object):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return opened(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)  # root reads any file: chmod cannot make one unreadable
    with caplog.at_level(logging.WARNING, logger="lficam"):
        assert load_splits(path, 5) is None
    assert _warnings(caplog) == [
        f"Cannot read the cache file {path} (Permission denied): building the data from its source instead "
        "and writing the cache again."
    ]


def test_a_cache_folder_that_is_a_file_is_warned_about_and_the_data_still_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the cache folder should be")
    fresh = ShapesDataModule(**SHAPES, cache_dir=None).render_split("train")
    with caplog.at_level(logging.WARNING, logger="lficam"):
        served = ShapesDataModule(**SHAPES, cache_dir=str(blocker)).render_split("train")
    [warning] = _warnings(caplog)
    assert warning.startswith(f"Cannot write the cache file {blocker / 'shapes'}/train-")
    assert warning.endswith(
        f".pt ({blocker} is a file, not a folder): using the data built in memory without caching it, so "
        "the next run builds it again."
    )
    for read, built in zip(served, fresh, strict=True):
        assert torch.equal(read, built)
    assert blocker.read_text() == "a file where the cache folder should be"


def test_a_failed_torch_save_is_warned_about_and_leaves_no_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.pt"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.mkdir()  # torch's own writer cannot open it: a RuntimeError, not an OSError
    with caplog.at_level(logging.WARNING, logger="lficam"):
        save_cache(path, {"images": torch.zeros(2, 3)})
    [warning] = _warnings(caplog)
    assert warning.startswith(f"Cannot write the cache file {path} (")
    assert "open file failed" in warning and warning.endswith("so the next run builds it again.")
    assert not path.exists() and tmp.is_dir()
