"""The one choice of device for evaluation, explanations and the study: the one asked for, else a GPU when there
is one, else the CPU."""

from __future__ import annotations

import torch

from lficam.core.errors import UserError


def choose_device(name: str | None = None) -> torch.device:
    """``torch.device(name)``; ``None`` (or ``auto``): cuda when a GPU is visible, else cpu. A device that does
    not exist here is one sentence."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except RuntimeError:
        raise UserError(
            f"device={name!r} is not a device name; use cpu, cuda, cuda:0 or leave it unset."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device={name!r} asks for a GPU but none is visible here; use device=cpu or leave it unset."
        )
    return device
