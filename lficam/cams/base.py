"""The machinery every post-hoc CAM method shares: hooks, isolation from the caller's state, targets, output.

A method subclasses :class:`CAMMethod` and implements :meth:`CAMMethod.compute`, which maps a batch to
raw maps at the target layer's resolution (B×h×w). Everything else lives here:

- the target layer's activation is recorded by a forward hook that exists only inside a context manager
  (removed even when the forward raises);
- the call is isolated: the model runs in eval mode (BatchNorm statistics and dropout untouched), every
  module's training flag and the caller's grad mode are restored afterwards, and it works inside
  ``torch.inference_mode()`` (a Lightning validation step) because the forward runs under
  ``torch.inference_mode(False)`` on a copy of the input made outside inference mode;
- gradient methods never backpropagate through the whole network: the part before the target layer runs
  without autograd, grad recording starts at the target layer's output (a fresh leaf), and
  ``torch.autograd.grad(Σ_b y^{c_b}, A)`` stops there. One forward pass plus a backward pass over the
  layers after the target layer, no parameter gradients.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lficam.cams.layers import resolve_target_layer
from lficam.core.errors import UserError
from lficam.core.maps import logits_of, minmax, target_classes, upsample
from lficam.core.probing import evaluating


class _StopForward(Exception):
    """Raised by the hook when only the activation is needed: the layers after the target layer never run."""


@dataclass
class Recording:
    """What one forward pass left behind: the target layer's activation (B×C×h×w) and the logits (B×N)."""

    activation: Tensor | None = None
    logits: Tensor | None = None


def weighted_sum(weights: Tensor, activation: Tensor) -> Tensor:
    """Σ_k w_bk · A_bk: B×C weights and B×C×h×w activations → B×h×w."""
    return torch.einsum("bc,bchw->bhw", weights, activation)


@contextmanager
def record(layer: nn.Module, *, with_grad: bool = False, stop: bool = False) -> Iterator[Recording]:
    """Record ``layer``'s output during the forward passes inside the block; the hook is removed on exit.

    with_grad: the activation becomes a leaf that requires grad and grad recording is switched on from
        here, so ``torch.autograd.grad(score, recording.activation)`` runs only over the later layers.
    stop: abort the forward right after the layer (for methods that need only the activation).
    The layer's output is replaced by a copy, so in-place operations after the layer (``out += identity``
    in a ResNet block) cannot change the recorded activation. A layer called more than once keeps its
    last call.
    """
    recording = Recording()

    def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
        is_tuple = isinstance(output, tuple)
        tensor = output[0] if is_tuple else output
        if not isinstance(tensor, Tensor) or tensor.ndim != 4:
            shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise UserError(
                f"The target layer {type(module).__name__} outputs {shape}; CAM methods need a "
                "B×C×h×w feature map: choose a convolutional layer or block."
            )
        if stop:
            recording.activation = tensor.detach()
            raise _StopForward
        if with_grad:
            torch.set_grad_enabled(True)
            recording.activation = tensor.detach().requires_grad_(True)
        else:
            recording.activation = tensor.detach()
        replacement = recording.activation.clone()
        return (replacement, *output[1:]) if is_tuple else replacement

    handle = layer.register_forward_hook(hook)
    try:
        yield recording
    finally:
        handle.remove()


class CAMMethod(ABC):
    """Base of every post-hoc CAM: ``cam(x, targets=None, raw=False) -> Tensor``.

    model: any classifier returning logits, a ``ModelOutput`` or a tuple starting with the logits.
    target_layer: the module (or its dotted name) whose activations A^k are explained; by default
        ``model.target_layer`` (our models: the last backbone stage), ``model.layer4`` (torchvision ResNets),
        else the last child module that contains a convolution.

    Calling it: x is B×C×H×W (normalised as the model expects), targets a LongTensor of B class indices
    (an int or a list also works; None: the predicted class). It returns B×H×W maps on x's device,
    upsampled bilinearly to the input size and min-max scaled to [0, 1] per image (a flat map gives zeros),
    or with ``raw=True`` the map at the target layer's resolution before upsampling and scaling.
    """

    name: ClassVar[str] = ""

    def __init__(self, model: nn.Module, target_layer: nn.Module | str | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise UserError(f"CAM methods explain a torch.nn.Module, got {type(model).__name__}.")
        self.model = model
        self.target_layer = resolve_target_layer(model, target_layer)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target_layer={type(self.target_layer).__name__})"

    def __call__(
        self, x: Tensor, targets: Tensor | int | Sequence[int] | None = None, raw: bool = False, **inputs: Any
    ) -> Tensor:
        _check_batch(x)
        self._check_inputs(inputs)
        with evaluating(self.model, allow_grad=True):
            # A tensor made in inference mode cannot enter autograd; its copy made here can.
            images = x.detach().clone() if x.is_inference() else x.detach()
            maps = self.compute(images, targets, **inputs).float()
        if raw:
            return maps
        return minmax(upsample(maps, x.shape[-2:]))

    @abstractmethod
    def compute(self, x: Tensor, targets: Tensor | int | Sequence[int] | None, **inputs: Any) -> Tensor:
        """Raw maps (B×h×w) at the target layer's resolution; runs isolated, under no_grad."""

    # Helpers for the methods ------------------------------------------------------------------------

    def activations(self, x: Tensor, *, logits: bool = True) -> Recording:
        """One forward pass without autograd; ``logits=False`` stops right after the target layer."""
        with record(self.target_layer, stop=not logits) as recording, suppress(_StopForward):
            recording.logits = logits_of(self.model(x))
        return self._checked(recording)

    def activations_and_gradients(self, x: Tensor, targets: Any) -> tuple[Tensor, Tensor, Tensor]:
        """A, ∂(Σ_b y^{c_b})/∂A and the resolved targets c, from one forward and a backward stopped at A.

        Summing the scores over the batch gives every image its own gradient: image b's score does not
        depend on image b′'s activation (the model runs in eval mode, so no batch statistics couple them).
        """
        with record(self.target_layer, with_grad=True) as recording:
            recording.logits = logits_of(self.model(x))
        activation = self._checked(recording).activation
        classes = self.resolve_targets(targets, recording.logits)
        score = recording.logits.gather(1, classes[:, None]).sum()
        if not score.requires_grad:
            raise UserError(
                f"The model's class scores do not depend on the target layer {type(self.target_layer).__name__}: "
                "choose a layer that the logits are computed from."
            )
        (gradient,) = torch.autograd.grad(score, activation, allow_unused=True)
        if gradient is None:
            gradient = torch.zeros_like(activation)
        return activation.detach(), gradient, classes

    def resolve_targets(self, targets: Any, logits: Tensor) -> Tensor:
        """Class indices as a LongTensor of B on the logits' device; None: the predicted classes."""
        return target_classes(logits, targets)

    def _check_inputs(self, inputs: dict[str, Any]) -> None:
        """Extra keyword inputs (FAM's ``reference=``) must be ones this method's ``compute`` takes."""
        parameters = list(inspect.signature(self.compute).parameters.values())[2:]  # after x and targets
        if any(p.kind is p.VAR_KEYWORD for p in parameters):
            return
        accepted = [p.name for p in parameters]
        for name in inputs:
            if name in accepted:
                continue
            takes = f"it takes {', '.join(a + '=' for a in accepted)}" if accepted else "it takes none"
            hint = "; a reference is FAM's: lficam.cams.create('fam', model)" if name == "reference" else ""
            raise UserError(f"{type(self).__name__} has no input {name}= ({takes}){hint}.")

    def _checked(self, recording: Recording) -> Recording:
        if recording.activation is None:
            raise UserError(
                f"The target layer {type(self.target_layer).__name__} was not called during the forward pass: "
                "choose a layer that the model uses."
            )
        return recording


def _check_batch(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise UserError(f"Expected a tensor of images shaped B×C×H×W, got {type(x).__name__}.")
    if x.ndim != 4:
        raise UserError(
            f"Expected a batch of images shaped B×C×H×W, got shape {tuple(x.shape)}; add a batch dimension "
            "with x.unsqueeze(0)."
        )
    if not x.is_floating_point():
        raise UserError(
            f"Expected floating-point (normalised) images, got dtype {x.dtype}; convert with x.float()."
        )
