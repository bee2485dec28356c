"""Post-hoc CAM methods by name."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from lficam.cams.abscam import AbsCAM
from lficam.cams.base import CAMMethod
from lficam.cams.cam import CAM
from lficam.cams.eigencam import EigenCAM
from lficam.cams.fam import FAM
from lficam.cams.gradcam import GradCAM
from lficam.cams.gradcampp import GradCAMPlusPlus
from lficam.cams.layercam import LayerCAM
from lficam.cams.scorecam import ScoreCAM
from lficam.core.errors import UnknownNameError, UserError

_METHODS: dict[str, type[CAMMethod]] = {
    cls.name: cls for cls in (CAM, GradCAM, GradCAMPlusPlus, ScoreCAM, EigenCAM, LayerCAM, AbsCAM, FAM)
}


def _canonical(name: str) -> str:
    # "Grad-CAM++", "grad_cam_pp" and "gradcampp" name the same method.
    return name.lower().replace("++", "pp").replace("-", "").replace("_", "").replace(" ", "")


def register(cls: type[CAMMethod]) -> type[CAMMethod]:
    """Add a :class:`CAMMethod` subclass under its ``name`` (usable as a class decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty class attribute `name` to be registered.")
    _METHODS[_canonical(cls.name)] = cls
    return cls


def available() -> list[str]:
    """The names :func:`create` accepts."""
    return sorted(_METHODS)


def method_name(name: str) -> str:
    """The registered name of a method (``"Grad-CAM++"`` → ``"gradcampp"``); unknown names raise."""
    key = _canonical(str(name))
    if key not in _METHODS:
        raise UnknownNameError("CAM method", name, _METHODS)
    return key


def create(
    name: str, model: nn.Module, target_layer: nn.Module | str | None = None, **options: Any
) -> CAMMethod:
    """A CAM method for ``model``: ``cam = create("gradcam", model); maps = cam(x, targets)``.

    name: one of :func:`available` (case, dashes, underscores and "++" are forgiven: "Grad-CAM++").
    target_layer: the module (or dotted name) to explain; see :class:`CAMMethod` for the default.
    options: the method's own keyword options (``batch_size`` for Score-CAM, ``phase2`` for Abs-CAM,
        ``reference`` and ``similarity`` for FAM, ``classifier`` for CAM).
    """
    cls = _METHODS[method_name(name)]
    allowed = [p for p in list(inspect.signature(cls.__init__).parameters)[3:] if p != "kwargs"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        choices = ", ".join(allowed) if allowed else "none"
        raise UserError(
            f"Unknown option(s) {unknown} for CAM method {cls.name!r}; its options are: {choices}."
        )
    return cls(model, target_layer, **options)
