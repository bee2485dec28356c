"""Probing a model without side effects: the one context that metrics and CAMs run a model in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def evaluating(model: nn.Module | Callable, *, allow_grad: bool = False) -> Iterator[None]:
    """Eval mode and no autograd for the duration, then every module's own training flag restored.

    Dropout and batch-norm statistics must not move while a metric or a CAM probes the model, and the
    caller's mode (training or not) must not change as a side effect. ``model`` may be any callable; only
    an ``nn.Module``'s modules are switched.

    allow_grad: also leave inference mode, so that a hook inside may switch grad recording back on from
        its layer (gradient CAMs): the layers before it still record no graph, and leaving the block
        restores the caller's grad and inference modes.
    """
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    flags = [m.training for m in modules]
    try:
        for m in modules:
            m.training = False
        if allow_grad:
            with torch.inference_mode(False), torch.no_grad():
                yield
        else:
            with torch.no_grad():
                yield
    finally:
        for m, flag in zip(modules, flags):
            m.training = flag
