"""Time one training step of LFI-CAM in float32 and under bf16 autocast, side by side, on this machine.

    python bench/cpu_precision.py [--backbone cifar_resnet20] [--size 32] [--batch 128] [--rounds 5]

bf16 autocast pays on a CPU only where the CPU has bf16 instructions (AVX-512 BF16 or AMX); without them
oneDNN emulates bf16 and a step can be many times slower than float32. The study's recipe
(conf/experiment/study_cpu.yaml) picks its precision from this table. Rounds alternate the two precisions so
that a change of machine load affects both; the table gives the median of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from lficam import create_model


def cpu_flags() -> str:
    """The bf16-relevant instruction sets this CPU reports (Linux), or "unknown"."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    wanted = [f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2"))]
    return " ".join(sorted(wanted)) or "none of avx2 / avx512 / amx"


def step_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = torch.nn.functional.cross_entropy(model(x).logits, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="cifar_resnet20")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(args.backbone, num_classes=10, attention="lficam").train()
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    for bf16 in (False, True):  # warm-up: oneDNN picks its kernels on the first call
        step_time(model, x, y, bf16)
    times: dict[str, list[float]] = {"float32": [], "bf16 autocast": []}
    for _ in range(args.rounds):
        times["float32"].append(step_time(model, x, y, False))
        times["bf16 autocast"].append(step_time(model, x, y, True))
    print(f"CPU flags: {cpu_flags()}; torch threads {torch.get_num_threads()}")
    print(f"LFI-CAM {args.backbone}, {args.size} px, batch {args.batch}, median of {args.rounds} steps")
    print(f"{'precision':<15} {'s/step':>8} {'images/s':>9} {'× float32':>10}")
    base = statistics.median(times["float32"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<15} {median:8.3f} {args.batch / median:9.0f} {median / base:10.2f}")


if __name__ == "__main__":
    main()
