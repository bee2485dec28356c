"""lficam: LFI-CAM (Lee et al., ICCV 2021) and its baselines, trained with Lightning and configured with Hydra."""

from lficam.checkpoints.loading import load
from lficam.models import ModelOutput, available_attentions, available_backbones, create_model
from lficam.version import __version__

__all__ = [
    "ModelOutput",
    "__version__",
    "available_attentions",
    "available_backbones",
    "create_model",
    "load",
]
