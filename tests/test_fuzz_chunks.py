"""Fuzzing the reader of streamed data sets' chunks (tests/fuzzing.py's harness): a litdata chunk written by
lficam-optimize, edited or truncated, is either read or refused with one sentence, in bounded memory.

Each example is read twice over: with the index as written (a chunk of another length is refused before
litdata opens it: a truncated copy would otherwise be waited on until litdata times out) and with the index's
size set to the edited file's, so that litdata's own header and offset parsing meets every edit.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from functools import cache
from pathlib import Path

import torch
from hypothesis import given
from hypothesis import strategies as st

from lficam.data.stream_items import StreamMetadata
from lficam.data.stream_write import write_streamed
from lficam.data.streaming import _split_dataset_class
from tests.fuzzing import check_reader, file_bytes, fuzz_settings, read_valid
from tests.test_resume_mid_epoch import shapes

CHUNK = "chunk-0-0.bin"


@cache
def _valid() -> tuple[bytes, dict, StreamMetadata]:
    """(the validation split's one chunk, its index, the data set's metadata) of tiny shapes."""
    folder = Path(tempfile.mkdtemp(prefix="lficam-fuzz-chunks-"))
    try:
        metadata = write_streamed(shapes(), str(folder / "data"), chunk_bytes="64MB")
        split = folder / "data" / "val"
        return (split / CHUNK).read_bytes(), json.loads((split / "index.json").read_text()), metadata
    finally:
        shutil.rmtree(folder)


def _read_split(chunk: Path, *, sized: bool) -> list[dict[str, torch.Tensor]]:
    """Every item of a split made of ``chunk`` and the valid index (its size set to the chunk's when sized)."""
    _, index, metadata = _valid()
    index = json.loads(json.dumps(index))
    if sized:
        index["chunks"][0]["chunk_bytes"] = chunk.stat().st_size
    (chunk.parent / "index.json").write_text(json.dumps(index))
    split = _split_dataset_class()(
        str(chunk.parent), metadata=metadata, augment=False, aug_seed=0, shuffle=False, drop_last=False
    )
    return list(split)


def test_the_valid_chunk_is_read_with_the_values_written() -> None:
    content, _, _ = _valid()
    items = read_valid(lambda p: _read_split(p, sized=False), content, CHUNK)
    source = shapes()
    source.setup("validate")
    assert len(items) == 16
    for item in items:
        expected = source.val_set[int(item["index"])]
        assert torch.equal(item["image"], expected["image"]) and torch.equal(item["mask"], expected["mask"])


@fuzz_settings(default=60)
@given(content=file_bytes(_valid()[0]), sized=st.booleans())
def test_a_damaged_chunk_is_read_or_one_sentence(content: bytes, sized: bool) -> None:
    check_reader(lambda p: _read_split(p, sized=sized), content, CHUNK)
