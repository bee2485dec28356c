"""Read a pickle of plain data and numpy arrays without running its code, in memory bounded by its size.

The CIFAR Python version is pickled dicts of lists, bytes and numpy arrays. Three things keep such a file
harmless:

- No code of the file's choosing runs: the unpickler resolves five globals, none of them to numpy. An array
  in the file becomes an :class:`_ArrayRecipe` (the shape, dtype and bytes the pickle gives) and is built
  afterwards from its checked parts, so numpy never allocates what a pickle asks of it.
- No allocation follows a size field: CPython's unpickler allocates the length an opcode declares before it
  reads the bytes (an 11-byte BINBYTES8 of 2⁶² bytes is a MemoryError, one of 2⁶³ an OverflowError) and grows
  its memo to the index a PUT names (a 6-byte LONG_BINPUT of 2³¹ zero-fills 16 GiB). :func:`_check_opcodes`
  walks the opcodes first, building nothing, and refuses a declared length longer than the rest of the
  file, or a memo index out of sequence.
- No amplification: an object the memo refers to many times is one object, but arrays and encoded strings
  built from it would be copies, so everything built from the file's bytes is counted against its size.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

#: The largest file read (CIFAR-100's training pickle is 155 MB).
MAX_BYTES = 1 << 30
# numpy dtypes an array in a data pickle may have: plain numbers, nothing structured or of objects
_DTYPES = frozenset(("b1", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8"))
_LATIN1 = frozenset(("latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"))
_PUTS = frozenset(("PUT", "BINPUT", "LONG_BINPUT"))


class PickleRefused(Exception):
    """The file is not a pickle of plain data and arrays; the message says why, for the caller's sentence."""


def read_pickle(path: Path, *, max_bytes: int = MAX_BYTES) -> Any:
    """The object pickled in ``path``, with numpy arrays rebuilt from checked shapes, dtypes and bytes.

    Raises :class:`PickleRefused` for anything else: a global other than numpy's array pickling and
    ``_codecs.encode`` (as Python 3 writes bytes at protocol 2), a declared length past the end of the file,
    an array whose bytes do not match its shape, a file over ``max_bytes``. MemoryError is not caught: it
    would mean a bound here is missing.
    """
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise PickleRefused(f"it is {size} bytes, more than the {max_bytes} read from a data pickle")
        data = path.read_bytes()
        _check_opcodes(data)
        # the bytes of an array may be pickled as text that _codecs.encode turns into bytes: two copies
        budget = _Budget(2 * len(data))
        loaded = _Unpickler(io.BytesIO(data), budget).load()
        return _build_arrays(loaded, budget)
    except (PickleRefused, MemoryError):
        raise
    except Exception as error:  # the unpickler and pickletools raise many types for foreign bytes
        # one line: some of CPython's unpickler messages span two ("... was encountered,\nbut no ...")
        reason = " ".join(str(error).split())[:120]
        raise PickleRefused(f"{type(error).__name__}: {reason}") from None


_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_TWO_LINES = frozenset(("GLOBAL", "INST"))  # "module\nname\n"
# how many bytes of an argument's length field precede its bytes, and whether the length is signed
_COUNTED = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}


def _check_opcodes(data: bytes) -> None:
    """Walk the opcodes up to STOP without building anything: every argument (a counted string or bytes,
    a FRAME's length) ends within the file, and every memo index a PUT names is the next one or an earlier
    one (picklers number their memo 0, 1, 2, ...)."""
    position, puts, end = 0, 0, len(data)
    while position < end:
        op = _OPCODES.get(data[position : position + 1])
        if op is None:
            raise PickleRefused(f"byte {position} ({data[position]:#04x}) is not a pickle opcode")
        start, position = position, position + 1
        argument = op.arg
        if argument is None:
            size = 0
        elif argument.n >= 0:
            size = argument.n
        elif argument.n == pickletools.UP_TO_NEWLINE:
            stop = position
            for _ in range(2 if op.name in _TWO_LINES else 1):
                stop = data.find(b"\n", stop, end) + 1
                if stop == 0:
                    raise PickleRefused(f"the {op.name} at byte {start} has no end of line")
            size = stop - position
        else:
            width, signed = _COUNTED[argument.n]
            if position + width > end:
                raise PickleRefused(f"the {op.name} at byte {start} is cut short")
            length = int.from_bytes(data[position : position + width], "little", signed=signed)
            size = width + length if length >= 0 else end  # a negative length is refused below
        if position + size > end:
            raise PickleRefused(f"the {op.name} at byte {start} declares more bytes than the file holds")
        value = data[position : position + size] if op.name in _PUTS or op.name == "FRAME" else b""
        position += size
        if op.name == "FRAME" and position + int.from_bytes(value, "little") > end:
            raise PickleRefused(f"the frame at byte {start} declares more bytes than the file holds")
        if op.name in _PUTS:
            index = int(value) if op.name == "PUT" else int.from_bytes(value, "little")
            if index > puts:
                raise PickleRefused(f"memo index {index} at byte {start} is out of sequence")
            puts = max(puts, index + 1)
        elif op.name == "MEMOIZE":
            puts += 1
        elif op.name == "STOP":
            return
    raise PickleRefused("the pickle has no STOP: it is cut short")


class _Budget:
    """Bytes that may still be built from the file."""

    def __init__(self, size: int) -> None:
        self.left = size

    def spend(self, size: int) -> None:
        if size > self.left:
            raise PickleRefused("it builds more bytes than the file holds (one object copied many times)")
        self.left -= size


class _NdarrayClass:
    """What ``numpy.ndarray`` in the file stands for: only a marker that ``_reconstruct`` expects."""


class _DtypeRecipe:
    """``numpy.dtype(code, align, copy)`` as the pickle gives it, with its state (the byte order)."""

    def __init__(self, code: object = None, align: object = False, copy: object = False) -> None:
        self.code, self.state = code, None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def resolve(self) -> np.dtype:
        code = self.code.decode("ascii") if isinstance(self.code, bytes) else self.code
        if not isinstance(code, str) or code not in _DTYPES:
            raise PickleRefused(f"arrays of dtype {str(code)[:20]!r} are not read")
        order = self.state[1] if isinstance(self.state, tuple) and len(self.state) > 1 else "|"
        return np.dtype(code).newbyteorder(order if order in ("<", ">") else "=")


class _ArrayRecipe:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b"b")`` then ``__setstate__`` as data."""

    def __init__(self, subtype: object = None, shape: object = None, typecode: object = None) -> None:
        if subtype is not _NdarrayClass:
            raise PickleRefused("_reconstruct is only read for numpy.ndarray")
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def build(self, budget: _Budget) -> np.ndarray:
        state = self.state
        if not (isinstance(state, tuple) and len(state) == 5):
            raise PickleRefused("an array without its (version, shape, dtype, order, bytes) state")
        _, shape, dtype, fortran, raw = state
        if not (
            isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape) and len(shape) <= 8
        ):
            raise PickleRefused(f"an array of shape {str(shape)[:40]}")
        if not isinstance(dtype, _DtypeRecipe) or not isinstance(raw, bytes):
            raise PickleRefused("an array whose dtype or bytes are not plain")
        dtype = dtype.resolve()
        count = 1
        for n in shape:
            count *= n
        if count * dtype.itemsize != len(raw):
            raise PickleRefused(f"an array of shape {shape} comes with {len(raw)} bytes")
        budget.spend(len(raw))
        return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


def _codecs_encode(budget: _Budget) -> Any:
    def encode(text: object, encoding: object = "utf-8") -> bytes:
        """How Python 3 pickles bytes at protocol 2: ``_codecs.encode(str, "latin1")``; no other codec."""
        if not isinstance(text, str) or str(encoding).lower() not in _LATIN1:
            raise PickleRefused("_codecs.encode is only read for latin-1 text")
        budget.spend(len(text))
        return text.encode("latin-1")

    return encode


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, budget: _Budget) -> None:
        super().__init__(file, encoding="bytes")
        self.globals = {
            ("numpy.core.multiarray", "_reconstruct"): _ArrayRecipe,
            ("numpy._core.multiarray", "_reconstruct"): _ArrayRecipe,
            ("numpy", "ndarray"): _NdarrayClass,
            ("numpy", "dtype"): _DtypeRecipe,
            ("_codecs", "encode"): _codecs_encode(budget),
        }

    def find_class(self, module: str, name: str) -> Any:
        found = self.globals.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return found


def _build_arrays(value: Any, budget: _Budget) -> Any:
    """The loaded object with the arrays of a top-level dict (or the object itself) built."""
    if isinstance(value, _ArrayRecipe):
        return value.build(budget)
    if isinstance(value, dict):
        return {k: v.build(budget) if isinstance(v, _ArrayRecipe) else v for k, v in value.items()}
    return value
