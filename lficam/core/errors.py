"""Errors a user can cause and fix, raised with one sentence that says what to do.

Entry points catch :class:`UserError` and print its message without a traceback; everything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

_WORKER_TRACEBACK = ".\nOriginal Traceback (most recent call last):\n"  # torch's ExceptionWrapper.reraise


def _original_message(text: str, kind: type) -> str:
    """The message of the exception that ``traceback.format_exception`` wrote as its last entry."""
    marker = f"\n{kind.__module__}.{kind.__qualname__}: "
    at = text.rfind(marker)
    return text[at + len(marker) :].strip() if at >= 0 else text


class UserError(ValueError):
    """A mistake in the user's input: a name, a path, a file or a value. The message is the whole story.

    Raised in a data-loader worker, PyTorch re-raises it in the main process as ``UserError(text)`` with the
    worker's whole traceback in ``text`` ("Caught UserError in DataLoader worker process 0. Original
    Traceback ..."); the original sentence is taken back from its last line, so the user reads what
    ``num_workers=0`` would have said.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and _WORKER_TRACEBACK in args[0]:
            args = (_original_message(args[0], type(self)),)
        super().__init__(*args)


class UnknownNameError(UserError, KeyError):
    """A name (backbone, attention, data set, method, format) that no registry knows."""

    def __init__(self, kind: str, name: object, choices: Iterable[str]) -> None:
        listed = ", ".join(sorted(choices))
        super().__init__(f"Unknown {kind} {name!r}: choose one of {listed}.")

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return str(self.args[0])


class NonFiniteLossError(UserError, FloatingPointError):
    """Training produced a NaN or infinite loss; whatever checkpoint was saved before it is kept."""

    @classmethod
    def during_training(cls, trainer: Any, loss: float) -> NonFiniteLossError:
        """The error for a non-finite ``loss`` at the trainer's current epoch and step, naming the latest
        checkpoint on disk (this run's, else the one it resumed from) or saying that none exists yet."""
        saved = [
            Path(path)
            for callback in getattr(trainer, "checkpoint_callbacks", [])
            for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", ""))
            if path and Path(path).is_file()
        ]
        if not saved and getattr(trainer, "ckpt_path", None) and Path(trainer.ckpt_path).is_file():
            saved = [Path(trainer.ckpt_path)]
        if saved:
            latest = max(saved, key=lambda p: p.stat().st_mtime)
            kept = (
                f"the latest checkpoint, saved before it, is {str(latest)!r} (init_from={latest} starts a "
                "new run from its weights with a lower optimizer.lr)"
            )
        else:
            kept = "no checkpoint had been saved yet"
        return cls(
            f"The training loss became {loss} at epoch {trainer.current_epoch}, step {trainer.global_step}; "
            f"training stopped and {kept}: lower the learning rate or use gradient clipping "
            "(trainer.gradient_clip_val=1.0)."
        )


def os_error_reason(error: OSError) -> str:
    """Why a path could not be written, in words: "File exists" from ``mkdir`` means a file is where a folder
    should be, so say which."""
    if isinstance(error, FileExistsError | NotADirectoryError) and error.filename:
        path = Path(str(error.filename))
        for folder in (path, *path.parents):
            if folder.exists() and not folder.is_dir():
                return f"{folder} is a file, not a folder"
    return error.strerror or str(error)
