"""Errors a user can cause and fix, raised with one sentence that says what to do.

Entry points catch :class:`UserError` and print its message without a traceback; everything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(ValueError):
    """A mistake in the user's input: a name, a path, a file or a value. The message is the whole story."""


class UnknownNameError(UserError, KeyError):
    """A name (backbone, attention, data set, method, format) that no registry knows."""

    def __init__(self, kind: str, name: object, choices: Iterable[str]) -> None:
        listed = ", ".join(sorted(choices))
        super().__init__(f"Unknown {kind} {name!r}: choose one of {listed}.")

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return str(self.args[0])


class NonFiniteLossError(UserError, FloatingPointError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""
