"""Backbones as trunks split into stages, so that any attention head can sit on any of them.

A :class:`Backbone` answers the questions a head asks (timm's ``feature_info`` in spirit): how many
channels and what stride each stage has, and it runs the stem and stages separately, because ABN needs
the output of the second-to-last stage and a copy of the last one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from lficam.errors import UnknownNameError, UserError
from lficam.models.init import he_init
from lficam.tensor_files import TensorFileError, read_safetensors_file, read_torch_file


@dataclass(frozen=True)
class StageInfo:
    """Channels and total stride (input pixels per feature pixel) of one stage's output."""

    channels: int
    reduction: int


class Backbone(nn.Module):
    """A stem followed by a sequence of stages; ``forward`` returns the last stage's feature map."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], info: list[StageInfo], family: str) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.feature_info = list(info)
        self.family = family  # "cifar" or "imagenet": picks defaults such as the FIN's activations

    @property
    def out_channels(self) -> int:
        return self.feature_info[-1].channels

    def forward_until(self, x: Tensor, num_stages: int) -> Tensor:
        """Run the stem and the first ``num_stages`` stages."""
        x = self.stem(x)
        for stage in self.stages[:num_stages]:
            x = stage(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_until(x, len(self.stages))

    def last_stage_copy(self, stride: int = 1) -> nn.Module:
        """A freshly initialised copy of the last stage whose first block has the given stride (ABN)."""
        stage = copy.deepcopy(self.stages[-1])
        for module in stage.modules():
            if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
                module.stride = (stride, stride)
        return he_init(stage)


_REGISTRY: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    def wrap(builder: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _REGISTRY[name] = builder
        return builder

    return wrap


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(name: str, **options: object) -> Backbone:
    """Build a backbone by name, e.g. ``create_backbone("resnet50", stem_stride=1)``."""
    if name not in _REGISTRY:
        raise UnknownNameError("backbone", name, _REGISTRY)
    return _REGISTRY[name](**options)


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from a ``.safetensors`` file or a tensor-only ``.pt``/``.pth`` file.

    Pickled code is never executed and no size field of the file is trusted (:mod:`lficam.tensor_files`).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"Backbone weights file {str(path)!r} does not exist; give the path of a state dict.")
    try:
        state = read_safetensors_file(path)[0] if path.suffix == ".safetensors" else read_torch_file(path)
    except TensorFileError as error:
        raise UserError(
            f"Could not read {str(path)!r} as a plain state dict ({error}); "
            "save the weights with torch.save(model.state_dict(), path) or as safetensors."
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict of tensors.")
    return state
