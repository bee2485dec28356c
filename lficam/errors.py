"""Errors a user can cause and fix, raised with one sentence that says what to do.

Entry points catch :class:`UserError` and print its message without a traceback; everything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable

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
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""
