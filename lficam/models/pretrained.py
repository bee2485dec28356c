"""Pretrained weights: where they come from, where they are cached, and which normalisation they expect.

Downloads go to the caches everyone else uses, so that a file fetched once (or copied in by hand on a
machine without network) is found again offline:
- torchvision weights: torch hub's cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (``torch.hub.get_dir()``);
- timm weights: the Hugging Face cache, ``$HF_HOME/hub/models--timm--<name>`` (``HF_HUB_CACHE``), or torch
  hub's cache for the few timm weights that only have a URL.
Files are read without running pickled code (``weights_only=True``, safetensors).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor

from lficam.core.errors import UserError
from lficam.models.weight_files import load_weights_file, looks_like_path

#: A value of ``weights`` that asks for the default pretrained weights of a backbone.
IMAGENET = "imagenet"
#: torchvision's ResNets and their depths (the backbones with torchvision weights)
TORCHVISION_RESNETS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}


def torch_hub_cache_path(url: str) -> Path:
    """Where ``torch.hub`` keeps the file of ``url``: ``<torch.hub.get_dir()>/checkpoints/<file name>``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url.split("?")[0]).name


def fetch_torch_hub_file(url: str, what: str) -> Path:
    """The cached file of ``url``, downloaded into torch hub's cache first if it is not there yet.

    Without network and without the file: one sentence saying which file to put where.
    """
    import torch.hub

    path = torch_hub_cache_path(url)
    if path.is_file():
        return path
    hash_prefix = re.search(r"-([a-f0-9]+)\.", path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            url, str(path), hash_prefix=hash_prefix.group(1) if hash_prefix else None
        )
    except (OSError, RuntimeError, ValueError) as error:  # URLError and HTTPError are OSErrors
        path.unlink(missing_ok=True)
        raise UserError(
            f"The {what} are not in torch's cache and could not be downloaded ({_first_line(error)}): "
            f"download {url} and put it at {path} (the cache; TORCH_HOME moves it), or pass the file "
            "as model.options.weights=/path/to/file."
        ) from None
    return path


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:120]}" if text else type(error).__name__


# torchvision


def torchvision_weights(arch: str, name: str) -> Any:
    """The torchvision weights enum member of ``arch`` called ``name``: ``imagenet`` (the default weights),
    ``DEFAULT``, ``IMAGENET1K_V1``, ``IMAGENET1K_V2`` or ``ResNet50_Weights.IMAGENET1K_V2``."""
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    key = str(name).split(".")[-1].upper()
    key = "DEFAULT" if key == IMAGENET.upper() else key
    if key not in enum.__members__:
        choices = ", ".join([IMAGENET, *enum.__members__])
        raise UserError(
            f"weights={name!r} is neither an existing file nor a torchvision weight name of {arch}: "
            f"choose one of {choices}, or give the path of a state dict."
        )
    return enum[key]


def torchvision_state_dict(arch: str, name: str) -> dict[str, Tensor]:
    """The state dict of torchvision's pretrained ``arch`` weights ``name``, from torch hub's cache."""
    weights = torchvision_weights(arch, name)
    path = fetch_torch_hub_file(weights.url, f"torchvision {arch} weights {weights}")
    return load_weights_file(path)


def torchvision_normalization(arch: str, name: str) -> tuple[list[float], list[float], str]:
    """(mean, std, source) of the transforms that torchvision publishes with the weights."""
    weights = torchvision_weights(arch, name)
    transform = weights.transforms()
    return [float(v) for v in transform.mean], [float(v) for v in transform.std], f"torchvision {weights}"


# timm


def timm_pretrained_cfg(name: str) -> Any:
    """timm's pretrained config of ``name`` (``resnet50`` or ``resnet50.a1_in1k``), which holds the source of
    its weights and their mean and std."""
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(name)


def check_timm_has_weights(name: str) -> Any:
    """The pretrained config of ``name`` if timm knows weights for it; else one sentence naming variants."""
    import timm

    cfg = timm_pretrained_cfg(name)
    if cfg is not None and (cfg.hf_hub_id or cfg.url or cfg.file):
        return cfg
    arch = name.split(".")[0]
    tagged = timm.list_pretrained(f"{arch}.*")
    hint = (
        f"its variants with weights are {', '.join(tagged[:6])}" if tagged else "no variant of it has weights"
    )
    raise UserError(
        f"timm/{name} has no pretrained weights in timm {timm.__version__} ({hint}); drop "
        "model.options.pretrained=true to start from random weights, or give a file with "
        "model.options.weights=/path/to/file."
    )


def hf_cache_folder(repo_id: str) -> Path:
    """The Hugging Face cache folder of a model repository: ``<HF_HUB_CACHE>/models--<org>--<name>``."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))


def missing_timm_weights_message(name: str, cfg: Any, error: BaseException) -> str:
    """The sentence for timm weights that are neither cached nor downloadable."""
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id.split("@")[0]
        filename = cfg.hf_hub_filename or "model.safetensors"
        return (
            f"The timm weights of {name} ({repo}, file {filename}) are not in the Hugging Face cache "
            f"{hf_cache_folder(repo)} and could not be downloaded ({_first_line(error)}): run "
            f"`hf download {repo} {filename}` where there is network and copy that cache folder here "
            f"(HF_HOME moves it), or download https://huggingface.co/{repo}/resolve/main/{filename} and pass it as "
            "model.options.weights=/path/to/file."
        )
    return (
        f"The timm weights of {name} are not in torch's cache and could not be downloaded "
        f"({_first_line(error)}): download {cfg.url} and put it at {torch_hub_cache_path(cfg.url)}, or pass "
        "it as model.options.weights=/path/to/file."
    )


def timm_normalization(name: str) -> tuple[list[float], list[float], str]:
    """(mean, std, source) of timm's pretrained config of ``name``."""
    cfg = check_timm_has_weights(name)
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    return [float(v) for v in cfg.mean], [float(v) for v in cfg.std], f"timm/{tag} pretrained_cfg"


def pretrained_normalization(model_config: dict[str, Any]) -> tuple[list[float], list[float], str] | None:
    """The input normalisation that a model's pretrained weights were trained with, or None (random weights,
    a local file, or a backbone without published weights)."""
    backbone = str(model_config.get("backbone", ""))
    weights = model_config.get("weights")
    if backbone.startswith("timm/"):
        if model_config.get("pretrained") or (weights is not None and str(weights).lower() == IMAGENET):
            return timm_normalization(backbone.removeprefix("timm/"))
        return None
    if backbone in TORCHVISION_RESNETS and weights is not None and not looks_like_path(weights):
        return torchvision_normalization(backbone, str(weights))
    return None
