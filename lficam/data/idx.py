"""The IDX file format of MNIST and Fashion-MNIST, read strictly, gzipped or not.

Layout (LeCun et al., http://yann.lecun.com/exdb/mnist/): a 4-byte magic ``0 0 T D`` (two zero bytes, the
element type code T, the number of dimensions D), then D big-endian uint32 sizes, then the elements in
row-major order, big-endian. Type codes: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64.

The sizes in a header are a claim, checked against the bytes that are really there before anything is
allocated: for a plain file, its size must be exactly header + Π sizes · element size; for a gzipped file, the
claim must fit what deflate can expand the compressed bytes to (at most ``_DEFLATE_RATIO`` to 1), and the
elements are read in chunks, so memory follows the data actually present, never the header's claim.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lficam.core.errors import UserError

DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
MAX_DIMS = 4  # the format allows up to 255; no data set of the format has more than 3
_DEFLATE_RATIO = 1032  # deflate's largest expansion (258-byte matches coded in 2 bits)
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 22


class IdxFormatError(UserError):
    """An IDX file whose bytes are not what its header says (or not an IDX file at all)."""


def _bad(path: Path, reason: str) -> IdxFormatError:
    return IdxFormatError(
        f"{str(path)!r} is not a valid IDX file: {reason}; replace it with an intact copy "
        "(for Fashion-MNIST: `make fashion-mnist`, or the four files of the Debian package dataset-fashion-mnist)."
    )


def _read_exactly(stream, count: int, path: Path) -> bytes:
    """``count`` bytes read in chunks (memory follows the bytes present), then a check that nothing follows."""
    parts, got = [], 0
    while got < count:
        part = stream.read(min(_CHUNK, count - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    if got < count:
        raise _bad(path, f"its header announces {count} data bytes but the file holds only {got}")
    if stream.read(1):
        raise _bad(path, f"it holds more bytes than the {count} its header announces")
    return b"".join(parts)


def read_idx(path: str | Path) -> Tensor:
    """The array stored in an IDX file (``.gz`` or plain, told apart by the gzip magic, not the name).

    Returns a tensor of the file's shape: uint8 and int8 as they are, the big-endian types converted to
    native int16, int32, float32, float64. Any malformed content raises :class:`IdxFormatError`, one sentence
    naming the file.
    """
    path = Path(path)
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == _GZIP_MAGIC
        stored = path.stat().st_size
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as stream:
            head = stream.read(4)
            if len(head) < 4:
                raise _bad(path, f"it has {len(head)} bytes, fewer than the 4 of a header")
            if head[0] != 0 or head[1] != 0:
                raise _bad(path, f"its magic starts with {head[:2].hex()} instead of 0000")
            code, ndim = head[2], head[3]
            if code not in DTYPES:
                known = ", ".join(f"0x{c:02X}" for c in DTYPES)
                raise _bad(path, f"its element type code is 0x{code:02X}, not one of {known}")
            if not 1 <= ndim <= MAX_DIMS:
                raise _bad(path, f"it has {ndim} dimensions; this reader accepts 1 to {MAX_DIMS}")
            dims_bytes = stream.read(4 * ndim)
            if len(dims_bytes) < 4 * ndim:
                raise _bad(path, f"its header ends before its {ndim} sizes")
            shape = tuple(int(d) for d in np.frombuffer(dims_bytes, dtype=">u4"))
            dtype = DTYPES[code]
            if math.prod(max(d, 1) for d in shape) * dtype.itemsize >= 1 << 62:  # even with a zero size
                raise _bad(path, f"its sizes {shape} describe an array no machine can address")
            count = math.prod(shape) * dtype.itemsize
            header = 4 + 4 * ndim
            if not gzipped and header + count != stored:
                raise _bad(
                    path,
                    f"its header announces shape {shape} ({count} data bytes) but it holds {stored - header}",
                )
            if gzipped and count > _DEFLATE_RATIO * stored + header:
                raise _bad(
                    path,
                    f"its header announces shape {shape} ({count} data bytes), more than its {stored} "
                    "compressed bytes can hold",
                )
            data = _read_exactly(stream, count, path)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise _bad(path, f"its gzip stream is broken ({error})") from None
    except OSError as error:
        raise UserError(f"Cannot read {str(path)!r} ({error.strerror or error}).") from None
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def write_idx(path: str | Path, array: np.ndarray | Tensor, *, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzipped when ``compress``, or when the name ends in ``.gz``)."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX has no element type for {array.dtype}")
    code = codes[native]
    head = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = head + np.ascontiguousarray(array, dtype=DTYPES[code]).tobytes()
    path = Path(path)
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
