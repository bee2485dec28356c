"""Post-hoc CAM methods, batched and on the device: ``lficam.cams.create(name, model)(x, targets)``.

Methods: CAM, Grad-CAM, Grad-CAM++, Score-CAM, Eigen-CAM, LayerCAM, Abs-CAM and FAM (method.md §3). Each
returns B×H×W maps in [0, 1] on the input's device (``raw=True``: the map at the target layer's
resolution), leaves the model as it found it (training flags, grad mode, no hooks) and works inside
``torch.inference_mode()``.
"""

from lficam.cams.abscam import AbsCAM
from lficam.cams.base import CAMMethod
from lficam.cams.cam import CAM
from lficam.cams.eigencam import EigenCAM, principal_projection
from lficam.cams.fam import FAM
from lficam.cams.gradcam import GradCAM, GradientCAM
from lficam.cams.gradcampp import GradCAMPlusPlus
from lficam.cams.layercam import LayerCAM
from lficam.cams.layers import default_target_layer
from lficam.cams.registry import available, create, method_name, register
from lficam.cams.scorecam import ScoreCAM
from lficam.core.maps import logits_of

__all__ = [
    "CAM",
    "FAM",
    "AbsCAM",
    "CAMMethod",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientCAM",
    "LayerCAM",
    "ScoreCAM",
    "available",
    "create",
    "default_target_layer",
    "logits_of",
    "method_name",
    "principal_projection",
    "register",
]
