"""Shared helpers for fuzzing the readers of user files (tests/test_fuzz_*.py).

A fuzz test feeds a reader bytes that are a valid file with a few edits (:func:`mutated`) or plain noise
(:func:`file_bytes`) and checks, with :func:`check_reader`, the two promises every reader of a user file
makes: it either succeeds or raises :class:`lficam.core.errors.UserError` (one sentence, exit code 2), and its
memory stays bounded whatever the file's size fields say.

The suite runs a fixed budget per test, derandomised so that it is the same every time;
``LFICAM_FUZZ_EXAMPLES=20000`` gives each test that many random examples instead::

    LFICAM_FUZZ_EXAMPLES=20000 OMP_NUM_THREADS=1 python -m pytest tests/test_fuzz_readers.py -q

To fuzz a new reader::

    @fuzz_settings(default=100)
    @given(content=file_bytes(VALID_FILE))
    def test_my_reader_says_one_sentence(content: bytes) -> None:
        check_reader(my_reader, content, "file.ext")

and check that the valid file itself is read, with the values written: ``read_valid(my_reader, VALID_FILE,
"file.ext")`` fails on a refusal.
"""

from __future__ import annotations

import ctypes
import os
import resource
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from lficam.core.errors import UserError

EXAMPLES_VARIABLE = "LFICAM_FUZZ_EXAMPLES"
#: What a reader may allocate beyond what it held before, for a file of a few kilobytes: Python objects
#: (tracemalloc, numpy included) and the address space of everything else (torch, PIL, safetensors).
PYTHON_BOUND = 64 << 20
ADDRESS_BOUND = 1 << 30

# integers that size fields meet at their edges: zero, sign bits, all ones, 2^31, 2^62
_EDGES = (
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0x8000,
    0xFFFF,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**40,
    2**62,
    2**63 - 1,
)


def budget(default: int) -> int:
    """Examples per test: ``LFICAM_FUZZ_EXAMPLES`` when set, else ``default``."""
    return int(os.environ.get(EXAMPLES_VARIABLE) or default)


def fuzz_settings(default: int) -> settings:
    """Hypothesis settings for a fuzz test: ``default`` derandomised examples in the suite, the
    environment's budget of random ones when it is set; no deadline, no example database on disk."""
    long_run = bool(os.environ.get(EXAMPLES_VARIABLE))
    return settings(
        max_examples=budget(default),
        deadline=None,
        derandomize=not long_run,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


@st.composite
def mutated(draw: st.DrawFn, valid: bytes, *, max_edits: int = 4, hot: int = 512) -> bytes:
    """``valid`` with a few edits: bytes overwritten (often an edge integer in either byte order, where
    size fields live), inserted, deleted, or the file cut short. Edits fall in the first or last ``hot``
    bytes half the time (headers, zip directories), anywhere otherwise."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, max_edits))):
        if not data:
            break
        near_end = draw(st.booleans())
        if draw(st.booleans()):
            span = min(hot, len(data))
            offset = draw(st.integers(0, span - 1))
            at = len(data) - 1 - offset if near_end else offset
        else:
            at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(("edge", "bytes", "insert", "delete", "truncate")))
        if kind == "edge":
            width = draw(st.sampled_from((1, 2, 4, 8)))
            value = draw(st.sampled_from(_EDGES)) % (1 << (8 * width))
            data[at : at + width] = value.to_bytes(width, draw(st.sampled_from(("little", "big"))))
        elif kind == "bytes":
            patch = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(patch)] = patch
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            del data[at:]
    return bytes(data)


def file_bytes(*valid: bytes) -> st.SearchStrategy[bytes]:
    """Mutations of any of the ``valid`` files, or a short run of random bytes."""
    return st.one_of(st.binary(max_size=64), *(mutated(v) for v in valid))


@contextmanager
def bounded_memory(python: int = PYTHON_BOUND, address: int = ADDRESS_BOUND) -> Iterator[None]:
    """Fail if the block allocates more than ``python`` bytes of Python objects (tracemalloc's peak), and
    make any allocation past ``address`` more bytes of address space fail (RLIMIT_AS), so that a reader
    that obeys a size field raises MemoryError here instead of filling the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_address_space() + address, hard))
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1] - before
        assert peak <= python, f"the reader allocated {peak} bytes of Python objects"
    finally:
        if started:
            tracemalloc.stop()
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        _LIBC.malloc_trim(0)  # hand freed heap back: a long run's memory stays flat instead of fragmenting


_LIBC = ctypes.CDLL(None)
if not hasattr(_LIBC, "malloc_trim"):  # not glibc
    _LIBC = type("NoLibc", (), {"malloc_trim": staticmethod(lambda pad: 0)})


def _address_space() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def _allocation_failures(error: BaseException) -> list[BaseException]:
    """MemoryError, or a C++ allocator's failure, anywhere in the chain of causes and contexts."""
    found, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, MemoryError) or "can't allocate memory" in str(error):
            found.append(error)
        error = error.__cause__ or error.__context__
    return found


@contextmanager
def _written(content: bytes, name: str) -> Iterator[Path]:
    """The path of a fresh file called ``name`` holding ``content``, removed afterwards."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        yield path


def read_valid(read: Callable[[Path], Any], content: bytes, name: str) -> Any:
    """What ``read`` returns for a file called ``name`` holding ``content``, within :func:`bounded_memory`.

    For the valid files a fuzz test starts from: unlike :func:`check_reader`, a refusal (UserError) fails the
    test, and the caller checks the values read against those written."""
    with _written(content, name) as path, bounded_memory():
        return read(path)


def check_reader(read: Callable[[Path], Any], content: bytes, name: str) -> None:
    """Write ``content`` to a fresh file called ``name`` and read it with ``read``: success or one
    UserError sentence, neither caused by an allocation that failed, within :func:`bounded_memory`.

    For edited (fuzzed) files, which a reader may rightly refuse; a valid file is read with :func:`read_valid`.
    """
    with _written(content, name) as path:
        refused = None
        with bounded_memory():
            try:
                read(path)
            except UserError as error:
                refused = error
    if refused is not None:
        failures = _allocation_failures(refused)
        assert not failures, f"a size field was obeyed: {failures[0]!r} became {refused}"
        message = str(refused)
        assert "\n" not in message and "Traceback" not in message, message
