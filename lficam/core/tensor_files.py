"""Tensors from files a user gives (checkpoints, exports, backbone weights): no code run, memory bounded.

Two formats are read. A torch file must be the zip archive ``torch.save`` writes (PyTorch ≥ 1.6): every
record stored uncompressed and lying within the file, which is checked with :mod:`zipfile` before torch
reads it, so that no record's declared size is allocated beyond what the file holds; torch then reads it
with ``weights_only=True`` (tensors, numbers, strings and containers only) and checks each tensor's bytes
against its record. The older pickle format is refused: its loader allocates the storage sizes the file
declares before it reads them. A safetensors file is read by safetensors, which checks the header and every
tensor's offsets against the file.

Readers raise :class:`TensorFileError` with the reason; callers turn it into their one sentence.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

_ZIP_MAGIC = b"PK\x03\x04"
# pickle of torch's legacy magic number 0x1950a86a20f9469cfc6c, how files of PyTorch < 1.6 begin
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


class TensorFileError(Exception):
    """A file that is not a readable torch or safetensors file; the message is the reason."""


def read_torch_file(path: str | Path) -> Any:
    """What ``torch.save`` wrote to ``path``, read with ``weights_only=True`` after the zip check above."""
    path = Path(path)
    _check_torch_zip(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise  # a bound is missing here: not the user's to fix
    except Exception as error:  # torch raises many types for foreign bytes (KeyError, UnpicklingError, ...)
        raise TensorFileError(_reason(error)) from None


def _check_torch_zip(path: Path) -> None:
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            head = file.read(len(_LEGACY_MAGIC))
        if head == _LEGACY_MAGIC:
            raise TensorFileError(
                "it is in the format of PyTorch before 1.6, which is not read; re-save it with "
                "torch.save(torch.load(path, weights_only=True), new_path)"
            )
        if not head.startswith(_ZIP_MAGIC):
            raise TensorFileError("it is not a file torch.save writes (a zip archive)")
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except TensorFileError:
        raise
    except MemoryError:
        raise
    except Exception as error:  # zipfile: BadZipFile, struct.error, UnicodeDecodeError, ...
        raise TensorFileError(
            f"its zip directory is damaged ({type(error).__name__}: {str(error)[:80]})"
        ) from None
    for record in records:
        if (
            record.compress_type != zipfile.ZIP_STORED
            or record.compress_size != record.file_size
            or record.header_offset + record.file_size > size
        ):
            raise TensorFileError(f"its record {record.filename[:60]!r} is not stored within the file")


def read_safetensors_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and the header's metadata (str → str) of a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (no __iter__)
    except MemoryError:
        raise
    except BaseException as error:  # SafetensorError, OSError, and a Rust panic (a BaseException)
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        raise TensorFileError(f"it is not a readable safetensors file ({str(error)[:120]})") from None
    return tensors, metadata


def _reason(error: BaseException) -> str:
    """The part of torch's long weights_only message that says what was refused."""
    text = " ".join(str(error).split())
    # a pickled call or class: torch names the global it blocked ("GLOBAL posix.system"), in words that
    # change between releases ("Unsupported global: GLOBAL io.open was not an allowed global", "unsupported
    # GLOBAL posix.system whose module posix is blocked"); the name is what the user needs
    blocked = re.search(r"\bGLOBAL ([A-Za-z_][\w.]*\w)", text)
    if blocked:
        return f"it pickles the Python global {blocked.group(1)}, which is never loaded or called"
    match = re.search(r"WeightsUnpickler error: (.+?)(?: Please use| Check the documentation|$)", text)
    if match:
        return match.group(1).strip().rstrip(".")[:120]
    if isinstance(error, EOFError) or not text:
        return "the file is empty or cut short"
    return f"{type(error).__name__}: {text[:120]}"
