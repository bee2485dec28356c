"""Time one training step (forward + backward + SGD) of the plain backbone and of LFI-CAM, side by side.

    python bench/train_step.py [--repeats 5]

Prints, per backbone, the seconds per step of each model, the ratio LFI-CAM / plain (with the paper's FIN and
with the light FIN, ``fin=lite``), and the parameter counts of backbone and both FINs. Both models run in the same process, interleaved, so machine load affects both.
"""

from __future__ import annotations

import argparse
import time

import torch

from lficam import create_model
from lficam.models import count_parameters

CASES = [  # backbone, image side, batch
    ("cifar_resnet20", 32, 64),
    ("cifar_resnet110", 32, 32),
    ("resnet18", 224, 8),
    ("resnet50", 224, 4),
]


def step_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        model.loss(out, y).backward()
        optimizer.step()

    step()  # warm-up: allocator and kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="backbones to run (default: all)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} steps")
    header = f"{'backbone':<16}{'px':>5}{'batch':>6}{'plain s/step':>14}{'lficam s/step':>15}{'ratio':>7}"
    header += f"{'lite s/step':>13}{'ratio':>7}{'backbone params':>17}{'FIN params':>12}{'FIN/backbone':>14}"
    header += f"{'lite FIN':>10}"
    print(header)
    print("-" * len(header))
    for backbone, size, batch in CASES:
        if args.only and backbone not in args.only:
            continue
        x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
        plain = create_model(backbone, num_classes=10, attention="none")
        lfi = create_model(backbone, num_classes=10, attention="lficam")
        lite = create_model(backbone, num_classes=10, attention="lficam", fin="lite")
        t_plain = step_time(plain, x, y, args.repeats)
        t_lfi = step_time(lfi, x, y, args.repeats)
        t_lite = step_time(lite, x, y, args.repeats)
        n_backbone, n_fin = count_parameters(lfi.backbone), count_parameters(lfi.fin)
        print(
            f"{backbone:<16}{size:>5}{batch:>6}{t_plain:>14.3f}{t_lfi:>15.3f}{t_lfi / t_plain:>7.2f}"
            f"{t_lite:>13.3f}{t_lite / t_plain:>7.2f}"
            f"{n_backbone / 1e6:>16.2f}M{n_fin / 1e6:>11.2f}M{n_fin / n_backbone:>14.2f}"
            f"{count_parameters(lite.fin) / 1e6:>9.2f}M"
        )


if __name__ == "__main__":
    main()
