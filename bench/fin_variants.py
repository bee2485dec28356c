"""Does the light FIN keep LFI-CAM's map quality? paper vs lite, with ABN and the plain backbone for reference.

Trains each variant with the project's training task (``lficam.training.task.train`` on a composed config, same seed
and data) on the synthetic shapes, tests the checkpoint chosen on validation, and prints one table:
the attention head's parameters (the FIN, ABN's attention branch) and the total, test accuracy, test
pointing game of the model's own map, and the training step time relative to ``attention=none``
(forward + loss + backward + SGD step on one fixed batch, the variants interleaved, median of the rounds).

    python bench/fin_variants.py                        # cifar_resnet20, 32 px, 3000 images, 4 epochs
    python bench/fin_variants.py --epochs 8 --train-size 8000

Runs on the CPU with ``--threads`` threads (1 by default: on a shared machine more threads mostly spin).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lficam.core.known_warnings import quiet_known_warnings
from lficam.models import count_parameters, create_model
from lficam.training.model_config import model_config_of
from lficam.training.task import train

ROOT = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, list[str]] = {
    "none": ["attention=none"],
    "abn": ["attention=abn"],
    "lficam fin=paper": ["attention=lficam", "attention.options.fin=paper"],
    "lficam fin=lite": ["attention=lficam", "attention.options.fin=lite"],
}


def compose_config(args: argparse.Namespace, variant: list[str], output_dir: Path) -> DictConfig:
    """The training config of one variant: the shipped defaults, shrunk, without Hydra's run folders."""
    overrides = [
        *variant,
        f"model={args.backbone}",
        f"seed={args.seed}",
        f"data.image_size={args.image_size}",
        f"data.train_size={args.train_size}",
        f"data.val_size={args.val_size}",
        f"data.test_size={args.test_size}",
        f"data.batch_size={args.batch_size}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.accelerator=cpu",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
        "logger=none",
        "~callbacks.progress_bar",
        "~callbacks.model_summary",
        "~callbacks.learning_rate_monitor",  # needs a logger
        "~callbacks.attention_overlays",
        f"paths.root_dir={ROOT}",
        f"paths.output_dir={output_dir}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def step_times(configs: dict[str, DictConfig], args: argparse.Namespace) -> dict[str, float]:
    """Median seconds of one training step per variant, measured in interleaved rounds."""
    torch.manual_seed(args.seed)
    num_classes = int(next(iter(configs.values())).data.num_classes)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    y = torch.randint(0, num_classes, (args.batch_size,))
    models, optimizers = {}, {}
    for name, cfg in configs.items():
        models[name] = create_model(**model_config_of(cfg)).train()
        optimizers[name] = torch.optim.SGD(models[name].parameters(), lr=1e-3, momentum=0.9)
    samples: dict[str, list[float]] = {name: [] for name in configs}
    for round_ in range(args.timing_rounds + 1):
        for name, model in models.items():
            start = time.perf_counter()
            loss = model.loss(model(x), y)
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            if round_ > 0:  # the first round warms up allocators and kernels
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def head_parameters(cfg: DictConfig) -> tuple[int, int]:
    """(parameters of the attention head without the FC classifier, parameters of the whole model)."""
    model = create_model(**model_config_of(cfg))
    total = count_parameters(model)
    return total - count_parameters(model.backbone) - count_parameters(model.fc), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="cifar_resnet20")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    quiet_known_warnings()
    warnings.filterwarnings("ignore", message=".*No best checkpoint.*")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="fin_variants_") as tmp:
        configs = {
            name: compose_config(args, VARIANTS[name], Path(tmp) / str(i))
            for i, name in enumerate(args.variants)
        }
        times = step_times(configs, args)
        rows = []
        for name, cfg in configs.items():
            head, total = head_parameters(cfg)
            start = time.perf_counter()
            metrics = train(cfg)
            minutes = (time.perf_counter() - start) / 60
            rows.append((name, head, total, metrics, minutes))
            print(f"trained {name} in {minutes:.1f} min", flush=True)

    base = times.get("none", min(times.values()))
    print()
    print(
        f"{args.backbone}, shapes {args.image_size} px, train {args.train_size} / val {args.val_size} / "
        f"test {args.test_size}, {args.epochs} epochs, batch {args.batch_size}, seed {args.seed}, "
        f"{args.threads} CPU thread(s); test metrics of the checkpoint best on val/acc"
    )
    header = (
        "| variant | head params | total params | head/total | test acc | test pointing game "
        "| step ms | step time ratio | train min |"
    )
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, head, total, metrics, minutes in rows:
        print(
            f"| {name} | {head:,} | {total:,} | {head / total:.1%} | {metrics.get('test/acc', float('nan')):.3f} "
            f"| {metrics.get('test/attn/pointing_game', float('nan')):.3f} | {1000 * times[name]:.0f} "
            f"| {times[name] / base:.2f} | {minutes:.1f} |"
        )


if __name__ == "__main__":
    main()
