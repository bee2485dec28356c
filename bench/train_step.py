"""Time one training step (forward + backward + SGD) of the plain backbone and of LFI-CAM, side by side.

    python bench/train_step.py [--repeats 5] [--suite resnets|timm|all] [--device cpu|cuda]

Prints, per backbone, the seconds per step of each model, the ratio LFI-CAM / plain (with the paper's FIN and
with the light FIN, ``fin=lite``), and the parameter counts of backbone and both FINs. The three models of a
backbone take their steps in turns in the same process, so a change of machine load affects all three.
``--suite timm`` times the timm backbones the test suite covers (``timm/<name>``) at 224 px, batch 2.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lficam import create_model
from lficam.models import count_parameters

CASES = [  # backbone, image side, batch
    ("cifar_resnet20", 32, 64),
    ("cifar_resnet110", 32, 32),
    ("resnet18", 224, 8),
    ("resnet50", 224, 4),
]
TIMM_CASES = [
    (f"timm/{name}", 224, 2)
    for name in (
        "resnet50",
        "resnext50_32x4d",
        "seresnet50",
        "densenet121",
        "efficientnet_b0",
        "mobilenetv3_large_100",
        "regnety_016",
        "convnext_tiny",
    )
]
SUITES = {"resnets": CASES, "timm": TIMM_CASES, "all": CASES + TIMM_CASES}


def stepper(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    """One SGD training step of ``model`` on (x, y), returning its wall time in seconds."""
    model = model.to(x.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        model.loss(out, y).backward()
        optimizer.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def interleaved_medians(steps: list[Callable[[], float]], repeats: int) -> list[float]:
    """The median step time of each model, stepped in turns (a, b, c, a, b, c, ...) after one warm-up step
    each, so that a change of machine load falls on all of them alike."""
    for step in steps:
        step()  # warm-up: allocator and kernels
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for i, step in enumerate(steps):
            times[i].append(step())
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="backbones to run (default: all)")
    parser.add_argument("--suite", choices=sorted(SUITES), default="resnets")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"median of {args.repeats} steps after one warm-up step, the three models stepped in turns"
    )
    header = f"{'backbone':<28}{'px':>5}{'batch':>6}{'plain s/step':>14}{'lficam s/step':>15}{'ratio':>7}"
    header += f"{'lite s/step':>13}{'ratio':>7}{'backbone params':>17}{'FIN params':>12}{'FIN/backbone':>14}"
    header += f"{'lite FIN':>10}"
    print(header)
    print("-" * len(header))
    for backbone, size, batch in SUITES[args.suite]:
        if args.only and backbone not in args.only:
            continue
        x = torch.randn(batch, 3, size, size, device=args.device)
        y = torch.randint(0, 10, (batch,), device=args.device)
        models = [create_model(backbone, num_classes=10, attention="none")]
        models.append(create_model(backbone, num_classes=10, attention="lficam"))
        models.append(create_model(backbone, num_classes=10, attention="lficam", fin="lite"))
        # all three alive at once (the paper FIN on C = 2048 is 151 M parameters, 1.8 GB with SGD state)
        t_plain, t_lfi, t_lite = interleaved_medians([stepper(m, x, y) for m in models], args.repeats)
        _, lfi, lite = models
        n_backbone, n_fin = count_parameters(lfi.backbone), count_parameters(lfi.fin)
        print(
            f"{backbone:<28}{size:>5}{batch:>6}{t_plain:>14.3f}{t_lfi:>15.3f}{t_lfi / t_plain:>7.2f}"
            f"{t_lite:>13.3f}{t_lite / t_plain:>7.2f}"
            f"{n_backbone / 1e6:>16.2f}M{n_fin / 1e6:>11.2f}M{n_fin / n_backbone:>14.2f}"
            f"{count_parameters(lite.fin) / 1e6:>9.2f}M",
            flush=True,
        )
        del models, lfi, lite


if __name__ == "__main__":
    main()
