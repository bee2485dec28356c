"""timm CNNs as :class:`Backbone` trunks: ``create_model("timm/<name>", ...)`` for any timm model with a
``features_only`` form (Wightman, PyTorch Image Models, https://github.com/huggingface/pytorch-image-models).

The stages are timm's ``feature_info`` stages: stage i ends at the module whose output timm reports as
feature i (its channels and reduction become :class:`StageInfo` i), so the FIN's width, the post-hoc CAMs'
default target layer (the last stage) and the map's resolution (input side / last reduction) follow from
timm. Two forms of timm feature extractors are cut into stages:
- ``FeatureListNet`` (ResNets, ResNeXts, SE-ResNets, RegNets, DenseNets, ConvNeXts, most CNNs): its modules
  run one after the other, a stage ends at each returned module;
- ``EfficientNetFeatures`` / ``MobileNetV3Features`` (EfficientNets, MobileNetV2/3/4, MixNets, ...): stem,
  then blocks, a stage ends after each block group that timm returns.
Any other form (hook- or getter-based extractors: Xception, NASNet, HRNet, CSPNeXt, ConvMixer, vision
transformers; channels-last outputs: Swin, MambaOut) is kept whole as one stage that returns its last
feature map in NCHW layout: LFI-CAM and the plain head work on it, ABN (which branches before the last
stage) does not.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lficam.core.errors import UserError
from lficam.models.backbones import (
    Backbone,
    StageInfo,
    register_backbone_prefix,
)
from lficam.models.pretrained import (
    IMAGENET,
    check_timm_has_weights,
    fetch_torch_hub_file,
    looks_like_path,
    missing_timm_weights_message,
)
from lficam.models.weight_files import load_matching_state, load_weights_file

PREFIX = "timm/"


def _import_timm() -> Any:
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a dependency
        raise UserError("timm/<name> backbones need the timm package: pip install 'timm>=1.0'.") from None
    return timm


def check_timm_name(name: str) -> None:
    """One sentence for a name timm does not know, with the closest names it does know."""
    timm = _import_timm()
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(PREFIX + c for c in close)}?" if close else "see timm.list_models()."
        raise UserError(f"Unknown timm model {name!r} (backbone {PREFIX}{name}): {hint}")
    tags = timm.list_pretrained(arch + ".*") if tag else []
    if tag and name not in tags:
        raise UserError(
            f"timm model {arch} has no pretrained tag {tag!r}: choose one of "
            f"{', '.join(PREFIX + t for t in tags[:8]) or 'none (it has no weights)'}, or drop the tag."
        )


class TimmFeatures(nn.Module):
    """A timm feature extractor kept whole: returns its last feature map as B×C×h×w."""

    def __init__(self, net: nn.Module, nhwc: bool) -> None:
        super().__init__()
        self.net = net
        self.nhwc = nhwc  # Swin, MambaOut: B×h×w×C token grids

    def forward(self, x: Tensor) -> Tensor:
        features = self.net(x)
        last = features[-1] if isinstance(features, list | tuple) else features
        return last.permute(0, 3, 1, 2) if self.nhwc else last


def _stage_infos(net: nn.Module) -> list[StageInfo]:
    return [StageInfo(int(d["num_chs"]), int(d["reduction"])) for d in net.feature_info.get_dicts()]


def _groups_of_list_net(net: nn.Module) -> list[list[tuple[str, nn.Module]]] | None:
    """FeatureListNet: consecutive modules, one group per returned module."""
    from timm.models._features import FeatureDictNet

    if not isinstance(net, FeatureDictNet) or getattr(net, "concat", False):
        return None
    if str(getattr(net, "output_fmt", "NCHW")).split(".")[-1] != "NCHW":
        return None
    groups, current = [], []
    for name, module in net.named_children():
        current.append((name, module))
        if name in net.return_layers:
            groups.append(current)
            current = []
    return groups


def _groups_of_block_net(net: nn.Module) -> list[list[tuple[str, nn.Module]]] | None:
    """EfficientNetFeatures / MobileNetV3Features: conv_stem, bn1 (, act1), then ``blocks``, a feature after
    block i where i + 1 is in ``_stage_out_idx`` (0: the stem's output)."""
    names = {n for n, _ in net.named_children()}
    if not {"conv_stem", "bn1", "blocks"} <= names or getattr(net, "feature_hooks", None) is not None:
        return None
    out = set(getattr(net, "_stage_out_idx", ()))
    if not out:
        return None
    current = [(n, getattr(net, n)) for n in ("conv_stem", "bn1", "act1") if n in names]
    groups = []
    if 0 in out:
        groups.append(current)
        current = []
    for i, block in enumerate(net.blocks):
        current.append((f"blocks_{i}", block))
        if i + 1 in out:
            groups.append(current)
            current = []
    return groups


class TimmBackbone(Backbone):
    """A timm model's features as a :class:`Backbone`; ``pretrained_cfg`` is timm's pretrained config of the
    model (mean, std, input size, where the weights come from)."""

    def __init__(self, net: nn.Module, timm_name: str) -> None:
        infos = _stage_infos(net)
        groups = _groups_of_list_net(net) or _groups_of_block_net(net)
        split = groups is not None and len(groups) == len(infos)
        if split:
            stages = [nn.Sequential(OrderedDict(group)) for group in groups]
        else:
            nhwc = str(getattr(net, "output_fmt", "NCHW")).split(".")[-1] == "NHWC"
            stages, infos = [TimmFeatures(net, nhwc)], infos[-1:]
        super().__init__(nn.Identity(), stages, infos, family="imagenet")
        self.split = split  # False: kept whole as one stage (see the module docstring)
        self.timm_name = timm_name
        self.pretrained_cfg = dict(getattr(net, "pretrained_cfg", {}) or {})


def _variants(key: str) -> list[str]:
    """Names a full-model key can have in timm's feature extractors: itself, with its first two parts joined
    by ``_`` (flattened Sequentials: ``features.denseblock1`` → ``features_denseblock1``), or under the
    wrapper's ``body.`` / ``model.`` attribute."""
    parts = key.split(".")
    joined = ["_".join(parts[:2]) + "." + ".".join(parts[2:])] if len(parts) > 2 else []
    return [key, *joined, "body." + key, "model." + key]


def load_timm_weights(net: nn.Module, name: str, path: str | Path, kwargs: dict[str, Any]) -> None:
    """Load a local file with timm's key names (a whole model, classifier included, or the features_only
    model) into the feature extractor ``net``; the classifier and other head keys are ignored."""
    timm = _import_timm()
    state = load_weights_file(path)
    targets = net.state_dict()
    renamed: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, value in state.items():
        for variant in _variants(key):
            if variant in targets and variant not in renamed:
                renamed[variant] = value
                used.add(key)
                break
    with torch.device("meta"):  # only the key names of the whole model: which keys belong to its head
        whole = set(timm.create_model(name, **kwargs).state_dict())
    for key, value in state.items():
        if key not in used and key not in whole:
            renamed[key] = value  # neither ours nor timm's head: reported as unexpected
    load_matching_state(net, renamed, source=f"file {str(path)!r}", target=f"{PREFIX}{name}")


def _is_download_error(error: BaseException) -> bool:
    libraries = ("huggingface_hub", "requests", "httpx", "urllib3")
    return isinstance(error, OSError) or type(error).__module__.startswith(libraries)


def _fetch_timm_pretrained(name: str) -> None:
    """Put timm's pretrained file of ``name`` into its cache (a no-op when it is there); one sentence when
    it is neither cached nor downloadable."""
    cfg = check_timm_has_weights(name)
    if cfg.hf_hub_id:
        import huggingface_hub.errors as hf_errors
        from huggingface_hub import hf_hub_download

        repo, _, revision = cfg.hf_hub_id.partition("@")
        try:
            hf_hub_download(repo, cfg.hf_hub_filename or "model.safetensors", revision=revision or None)
        except getattr(hf_errors, "RemoteEntryNotFoundError", ()):
            return  # online, but the repository holds another file name: timm looks for its alternatives
        except Exception as error:
            # offline, not cached, no network, HTTP errors: huggingface_hub's, requests' and httpx' own types
            if not _is_download_error(error):
                raise
            raise UserError(missing_timm_weights_message(name, cfg, error)) from None
    elif cfg.url:
        fetch_torch_hub_file(cfg.url, f"timm weights of {name}")


def build_timm_backbone(
    name: str,
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    timm_kwargs: dict[str, Any] | None = None,
) -> Backbone:
    """``timm/<name>`` (``name`` as timm spells it, optionally with a pretrained tag: ``resnet50.a1_in1k``).

    pretrained: timm's pretrained weights of ``name``, fetched into the Hugging Face cache (read from it
        offline); their mean and std are in ``pretrained_cfg`` (train.py uses them, see
        ``model.normalization``).
    weights: a local file with timm's key names (safetensors or a tensor-only torch file), or ``imagenet``
        for ``pretrained=True``.
    timm_kwargs: keyword arguments of ``timm.create_model`` (e.g. ``output_stride: 16`` for maps twice as
        large, ``drop_path_rate: 0.1``).
    """
    timm = _import_timm()
    check_timm_name(name)

    if weights is not None and not looks_like_path(weights):
        if str(weights).lower() != IMAGENET:
            raise UserError(
                f"weights={weights!r} is neither an existing file nor 'imagenet' for {PREFIX}{name}: give the "
                "path of a state dict with timm's key names, or model.options.pretrained=true."
            )
        pretrained, weights = True, None
    if pretrained and weights is not None:
        raise UserError(
            f"{PREFIX}{name} got both pretrained=true and weights={str(weights)!r}: choose one of the two."
        )
    kwargs = dict(timm_kwargs or {})
    if pretrained:
        _fetch_timm_pretrained(name)
    try:
        net = timm.create_model(name, features_only=True, pretrained=pretrained, **kwargs)
    except (RuntimeError, AssertionError, NotImplementedError, AttributeError, TypeError) as error:
        # timm's feature wrappers fail this way on a model without feature_info (a model registered outside
        # timm, or an architecture of another timm version); an option of timm_kwargs it does not take too
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        if kwargs:
            raise UserError(
                f"timm could not build {PREFIX}{name} as a feature extractor with timm_kwargs={kwargs} "
                f"({reason}): check those options against timm's {name}."
            ) from None
        raise UserError(
            f"timm model {name} has no features_only form ({type(error).__name__}: {reason}), so it cannot be "
            "a backbone: choose a CNN such as timm/resnet50, timm/convnext_tiny or timm/efficientnet_b0."
        ) from None
    if weights is not None:
        load_timm_weights(net, name, weights, kwargs)
    return TimmBackbone(net, name)


register_backbone_prefix(PREFIX, build_timm_backbone)
