"""Fuzzing the readers of real data (IDX files, images, mask images, VOC XML): any input either reads or raises
a UserError (one sentence for the user), never another exception, and reading uses memory bounded by the
input's size, never by what its header claims.

The example budget is small and fixed (deterministic: derandomised, no example database) so the suite stays
fast; ``LFICAM_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_realdata.py`` runs a long campaign.
"""

from __future__ import annotations

import gzip
import io
import os
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lficam.core.errors import UserError
from lficam.data.boxes import boxes_to_mask, chosen_boxes, read_voc
from lficam.data.decode import decode_rgb, looks_complete
from lficam.data.idx import read_idx
from lficam.data.masks import read_mask

EXAMPLES = int(os.environ.get("LFICAM_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def bounded(read, path: Path, factor: int = 64, floor: int = 1 << 20):
    """``read(path)`` under tracemalloc: its peak Python/numpy allocation must stay within factor × the
    file's size + ``floor`` (a header that claims gigabytes must not get them)."""
    limit = factor * path.stat().st_size + floor
    tracemalloc.start()
    try:
        result = read(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= limit, f"reading {path.stat().st_size} bytes allocated {peak}"
    return result


def reads_or_refuses(read, path: Path, **bounds):
    try:
        return bounded(read, path, **bounds)
    except UserError as error:
        message = str(error)
        assert message and "\n" not in message and str(path) in message
        return None


# --- IDX ------------------------------------------------------------------------------------------------

CODES = [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x07, 0xFF]
dims = st.one_of(st.integers(0, 6), st.sampled_from([2**31, 2**32 - 1, 10**6]))


@st.composite
def idx_files(draw) -> bytes:
    magic = draw(st.sampled_from([b"\x00\x00", b"\x00\x01", b"\x08\x03"]))
    code = draw(st.sampled_from(CODES))
    shape = draw(st.lists(dims, min_size=0, max_size=5))
    ndim = draw(st.one_of(st.just(len(shape)), st.integers(0, 255)))
    header = magic + bytes([code, ndim]) + b"".join(int(d).to_bytes(4, "big") for d in shape)
    itemsize = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}.get(code, 1)
    exact = int(np.prod(shape)) * itemsize if all(d <= 6 for d in shape) else 0
    length = draw(st.one_of(st.just(exact), st.integers(0, 200)))
    payload = draw(st.binary(min_size=length, max_size=length)) if length <= 200 else bytes(length)
    data = header + payload
    if draw(st.booleans()):
        data = gzip.compress(data, mtime=0)
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] if draw(st.booleans()) else data
    return data


@FUZZ
@given(data=st.one_of(idx_files(), st.binary(max_size=300)))
def test_idx_reader_reads_or_refuses(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "file.idx"
    path.write_bytes(data)
    array = reads_or_refuses(read_idx, path)
    if array is not None:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        assert 4 + 4 * array.ndim + array.numel() * array.element_size() == len(raw)


# --- images and masks ---------------------------------------------------------------------------------


def _encoded(fmt: str, mode: str) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


SEEDS = [
    _encoded(fmt, mode)
    for fmt, mode in [
        ("PNG", "RGB"),
        ("PNG", "P"),
        ("PNG", "LA"),
        ("JPEG", "RGB"),
        ("JPEG", "L"),
        ("WEBP", "RGB"),
        ("BMP", "RGB"),
        ("GIF", "P"),
        ("TIFF", "RGB"),
    ]
]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "zero"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[position] = draw(st.integers(0, 255))
        elif kind == "cut":
            data = data[:position]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[position : position + draw(st.integers(1, 64))] = bytes(64)[
                : len(data[position : position + 64])
            ]
    return bytes(data)


@FUZZ
@given(data=st.one_of(mutated(SEEDS), st.binary(max_size=200)))
def test_image_decoder_reads_or_refuses(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    # decoded pixels are at most 13·9·3 bytes; the floor covers the decoders' own buffers
    image = reads_or_refuses(decode_rgb, path, factor=64, floor=8 << 20)
    if image is not None:
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
    reason = looks_complete(path)
    assert reason is None or isinstance(reason, str)


MASK_SEEDS = [_encoded("PNG", mode) for mode in ("L", "P", "RGB", "RGBA", "1")]


@FUZZ
@given(data=st.one_of(mutated(MASK_SEEDS), st.binary(max_size=120)), width=st.sampled_from([13, 12]))
def test_mask_reader_reads_or_refuses(tmp_path: Path, data: bytes, width: int) -> None:
    path = tmp_path / "mask.png"
    path.write_bytes(data)
    mask = reads_or_refuses(lambda p: read_mask(p, (width, 9), "image.jpg"), path, factor=64, floor=8 << 20)
    if mask is not None:
        assert mask.dtype == torch.bool and tuple(mask.shape) == (9, width)


# --- VOC XML ----------------------------------------------------------------------------------------------

TAGS = [
    "annotation",
    "object",
    "name",
    "bndbox",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
    "size",
    "width",
    "height",
    "x",
]
texts = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["dog", " Dog ", "", "1e400", "nan", "&amp;", "<", "&lol;"]),
    st.text(max_size=8),
)


def elements(depth: int):
    leaf = st.builds(lambda tag, text: f"<{tag}>{text}</{tag}>", st.sampled_from(TAGS), texts)
    if depth == 0:
        return leaf
    return st.one_of(
        leaf,
        st.builds(
            lambda tag, children: f"<{tag}>{''.join(children)}</{tag}>",
            st.sampled_from(TAGS),
            st.lists(elements(depth - 1), max_size=4),
        ),
    )


PROLOGUES = [
    "",
    '<?xml version="1.0" encoding="utf-8"?>',
    '<!DOCTYPE annotation [<!ENTITY lol "lol">]>',
    '<!DOCTYPE annotation SYSTEM "file:///etc/passwd">',
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "&b;&b;"><!ENTITY b "x">]>',
]


@st.composite
def voc_documents(draw) -> bytes:
    body = "<annotation>" + "".join(draw(st.lists(elements(3), max_size=5))) + "</annotation>"
    text = draw(st.sampled_from(PROLOGUES)) + body
    encoding = draw(st.sampled_from(["utf-8", "utf-16"]))
    data = bytearray(text.encode(encoding))
    if draw(st.booleans()) and data:
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(data=st.one_of(voc_documents(), st.binary(max_size=200)))
def test_voc_reader_reads_or_refuses(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "boxes.xml"
    path.write_bytes(data)
    parsed = reads_or_refuses(read_voc, path)
    if parsed is None:
        return
    size, boxes = parsed
    assert b"DOCTYPE" not in data.replace(b"\x00", b"")  # a document type is never accepted
    assert size is None or all(isinstance(v, int) for v in size)
    mask = boxes_to_mask(chosen_boxes(boxes, "dog"), 7, 5)
    assert mask.dtype == torch.bool and tuple(mask.shape) == (5, 7)
