"""The training-step time of each model of a data set, measured side by side in the study (the light FIN's cost).

One step = forward, loss, backward and an update by the runs' own optimiser (``optimizer`` of their config, e.g.
AdamW; SGD with momentum 0.9 when none is given), on a random batch of the runs' batch size and image side, under
the runs' precision (bf16 autocast where they use it). The models are timed in interleaved rounds, so a
change of machine load touches all of them alike; the median over the rounds is reported, and ratios to the paper
FIN's LFI-CAM and to the plain model. The whole-run wall times of the study's own runs are reported beside it
(they include validation and checkpointing).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lficam import create_model
from lficam.training.optimizers import build_optimizer, split_optimizer_config


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x, y, bf16: bool) -> None:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        output = model(x)
        loss = model.loss(output, y)
    loss.backward()
    optimizer.step()


def _optimizer(model: torch.nn.Module, config: dict[str, Any] | None) -> torch.optim.Optimizer:
    if config is None:
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    factory_config, backbone_lr_scale = split_optimizer_config(OmegaConf.create(config))
    return build_optimizer(instantiate(factory_config), model, backbone_lr_scale)


def measure_step_times(
    model_configs: dict[str, dict[str, Any]],
    image_size: int,
    batch_size: int,
    *,
    precision: str = "32-true",
    rounds: int = 5,
    device: str = "cpu",
    optimizer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Median seconds per training step of each model (``name → create_model kwargs``), interleaved.

    ``optimizer``: the runs' optimiser config (``_target_``, ``_partial_: true``, its keywords and our
    ``backbone_lr_scale``), built for each model as training builds it.
    """
    torch.manual_seed(0)
    bf16 = "bf16" in str(precision)
    num_classes = int(next(iter(model_configs.values()))["num_classes"])
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    models, optimizers = {}, {}
    for name, config in model_configs.items():
        models[name] = create_model(**config).to(device).train()
        optimizers[name] = _optimizer(models[name], optimizer)
        _step(models[name], optimizers[name], x, y, bf16)  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            _step(model, optimizers[name], x, y, bf16)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "image_size": image_size,
        "batch_size": batch_size,
        "precision": str(precision),
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "optimizer": (optimizer or {}).get("_target_", "torch.optim.SGD"),
        "seconds_per_step": medians,
        "images_per_second": {name: batch_size / t for name, t in medians.items()},
    }
