"""Benchmarks of the attention metrics: `python bench/metrics.py [--images 8] [--train-size 2000]`.

1. Deletion and insertion AUC (RISE): the batched implementation of ``lficam.metrics`` against a
   straightforward loop (one image, one step, one forward pass at a time), on the same model and images,
   with the default ~224 steps; images per second side by side, the ratio, and the largest AUC difference.
2. The overhead of the validation-time attention metrics on a training epoch: the default shapes config
   (ResNet-20 LFI-CAM, 32 px) with a smaller training set, fitted for a few epochs with the metrics off,
   with the defaults of conf/train.yaml, and with the costly faithfulness metrics on every epoch.
   Wall time (shared machines are noisy) and this process's CPU time are both reported.
3. ``eval.py``'s two protocols (conf/eval.yaml) side by side on one checkpoint of the default config
   (trained for a few batches: the cost does not depend on the weights): ``eval.protocol=quick`` (the
   default) and ``eval.protocol=full``, both on ``--eval-images`` test images (default: each protocol's own
   number) and a ``--eval-test-size`` test split; wall and CPU time per group of stages and the ratio.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lficam.metrics import deletion_auc, gaussian_blur, insertion_auc, pixel_ranks
from lficam.metrics.faithfulness import default_pixels_per_step
from lficam.models import create_model

OFF = {"attention_metrics": False, "stability_probe_size": 0, "input_stability": []}


def loop_auc(
    model: torch.nn.Module, images: torch.Tensor, maps: torch.Tensor, insertion: bool
) -> torch.Tensor:
    """The straightforward version: every image, every step, one forward pass of one image."""
    b, _, h, w = images.shape
    n = default_pixels_per_step(h, w)
    ranks = pixel_ranks(maps)
    aucs = []
    with torch.no_grad():
        for i in range(b):
            image = images[i : i + 1]
            start = gaussian_blur(image) if insertion else torch.zeros_like(image)
            c = model(image)[0].argmax(dim=1)
            scores, fractions = [], []
            for count in range(0, h * w + n, n):
                count = min(count, h * w)
                switched = (ranks[i] < count).view(1, 1, h, w)
                x = (
                    torch.where(switched, start, image)
                    if not insertion
                    else torch.where(switched, image, start)
                )
                scores.append(torch.softmax(model(x)[0], dim=1)[0, c].item())
                fractions.append(count / (h * w))
                if count == h * w:
                    break
            aucs.append(torch.trapezoid(torch.tensor(scores), torch.tensor(fractions)).item())
    return torch.tensor(aucs)


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bench_deletion(n_images: int, batch_size: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=10).eval()
    images = torch.randn(n_images, 3, 32, 32)
    with torch.no_grad():
        maps = model(images).attention
    maps = torch.nn.functional.interpolate(maps[:, None], size=(32, 32), mode="bilinear")[:, 0]
    steps = -(-32 * 32 // default_pixels_per_step(32, 32)) + 1
    print(
        f"\n## Deletion / insertion AUC: ResNet-20 LFI-CAM, {n_images} images 3×32×32, {steps} points per curve, "
        f"batch_size {batch_size}, {torch.get_num_threads()} CPU threads, best of {repeats} interleaved runs\n"
    )
    with torch.no_grad():  # warm-up: the first passes at each batch size pay one-off allocation costs
        model(images[:1])
        model(images.repeat(batch_size // n_images + 1, 1, 1, 1)[:batch_size])
    print("| metric | loop (img/s) | batched (img/s) | speed-up | max |AUC difference| |")
    print("|---|---|---|---|---|")
    for name, fn, insertion in (("deletion", deletion_auc, False), ("insertion", insertion_auc, True)):
        fast_walls, slow_walls = [], []
        for _ in range(repeats):  # interleaved, best of `repeats`: other users' load only ever slows a run
            fast, wall, _ = timed(lambda fn=fn: fn(model, images, maps, batch_size=batch_size))
            fast_walls.append(wall)
            slow, wall, _ = timed(lambda insertion=insertion: loop_auc(model, images, maps, insertion))
            slow_walls.append(wall)
        fast_wall, slow_wall = min(fast_walls), min(slow_walls)
        diff = (fast - slow).abs().max().item()
        print(
            f"| {name} | {n_images / slow_wall:.2f} | {n_images / fast_wall:.2f} | "
            f"{slow_wall / fast_wall:.1f}× | {diff:.1e} |"
        )


def bench_overhead(train_size: int, epochs: int, repeats: int) -> None:
    import lightning.pytorch as pl
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from lficam.training.task import build_module

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    cache = tempfile.mkdtemp(prefix="lficam-bench-")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"data.train_size={train_size}",
                f"data.cache_dir={cache}",
                f"trainer.max_epochs={epochs}",
            ],
        )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # rendered once, shared by every configuration
    configs = [
        ("metrics off", OFF),
        ("defaults (conf/train.yaml)", {}),
        ("+ faithfulness every epoch (32 images)", {"faithfulness_every_n_epochs": 1}),
    ]
    best: dict[str, list[float]] = {}
    for _ in range(repeats):  # interleaved configurations, best of `repeats` runs each
        for name, options in configs:
            torch.manual_seed(0)
            run_cfg = copy.deepcopy(cfg)
            run_cfg.module.update(options)
            module = build_module(run_cfg)
            trainer = pl.Trainer(
                max_epochs=epochs,
                accelerator="cpu",
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
            )
            _, wall, cpu = timed(
                lambda trainer=trainer, module=module: trainer.fit(module, datamodule=datamodule)
            )
            logged = sum(k.startswith("val/attn/") for k in trainer.callback_metrics)
            previous = best.get(name, [float("inf"), float("inf"), logged])
            best[name] = [min(previous[0], wall / epochs), min(previous[1], cpu / epochs), logged]
    rows = [(name, *best[name]) for name, _ in configs]
    base_wall, base_cpu = rows[0][1], rows[0][2]
    print(
        f"\n## Validation-metric overhead: shapes 32 px, train_size {train_size}, val_size "
        f"{cfg.data.val_size}, batch {cfg.data.batch_size}, ResNet-20 LFI-CAM, {epochs} epochs, "
        f"per epoch (train + validation), best of {repeats} interleaved runs\n"
    )
    print(
        "| configuration | wall s/epoch | CPU s/epoch | overhead (wall) | overhead (CPU) | val/attn metrics logged |"
    )
    print("|---|---|---|---|---|---|")
    for name, wall, cpu, n_logged in rows:
        print(
            f"| {name} | {wall:.1f} | {cpu:.1f} | {100 * (wall / base_wall - 1):+.1f} % | "
            f"{100 * (cpu / base_cpu - 1):+.1f} % | {n_logged} |"
        )


def _stage_group(stage: str) -> str:
    if stage in ("test split", "total"):
        return stage
    kind = stage.split(": ", 1)[1]
    return {"maps": "CAM maps", "deletion, insertion": "deletion, insertion", "ROAD": "ROAD"}.get(
        kind, "other"
    )


def bench_protocols(images: int | None, test_size: int) -> None:
    from hydra import compose, initialize_config_dir

    from lficam.evaluation.classification import evaluate_checkpoint
    from lficam.training.task import train

    root = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="lficam-bench-eval-"))
    paths = [f"paths.root_dir={root}", f"paths.data_dir={work / 'data'}", f"paths.log_dir={work / 'logs'}"]
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        run = compose(
            "train",
            overrides=[
                *paths,
                f"data.test_size={test_size}",
                "trainer.max_epochs=1",
                "+trainer.limit_train_batches=2",
                "+trainer.limit_val_batches=1",
                "+trainer.enable_progress_bar=false",
                "+trainer.enable_model_summary=false",
                "test=false",
                "logger=none",
                "callbacks=none",
                f"paths.output_dir={work / 'run'}",
            ],
        )
        train(run)
        checkpoint = next((work / "run").rglob("*.ckpt"))
        reports = {}
        for protocol in ("quick", "full"):
            overrides = [
                *paths,
                f"ckpt_path='{checkpoint}'",  # Lightning's default file name has '=' in it
                f"eval.protocol={protocol}",
                f"paths.output_dir={work / protocol}",
            ]
            if images:
                overrides.append(f"eval.num_images={images}")
            cfg = compose("eval", overrides=overrides)
            reports[protocol] = evaluate_checkpoint(cfg)
    groups = ["test split", "CAM maps", "deletion, insertion", "ROAD", "other", "total"]
    sums = {p: {g: [0.0, 0.0] for g in groups} for p in reports}
    for p, report in reports.items():
        for stage, wall in report["wall_time_s"].items():
            sums[p][_stage_group(stage)][0] += wall
            sums[p][_stage_group(stage)][1] += report["cpu_time_s"][stage]
    quick, full = reports["quick"]["protocol"], reports["full"]["protocol"]
    print(
        f"\n## eval.py protocols: default config (ResNet-20 LFI-CAM, 32 px shapes), {test_size} test images for "
        f"accuracy, own map + {len(reports['quick']['maps']) - 1} CAMs, {torch.get_num_threads()} CPU threads\n"
    )
    print(
        f"quick: {quick['num_images']} images, {quick['curve_steps']} deletion/insertion steps "
        f"({quick['pixels_per_step']} px each), ROAD at {len(quick['road_percentages'])} levels; "
        f"full: {full['num_images']} images, {full['curve_steps']} steps ({full['pixels_per_step']} px each), "
        f"ROAD at {len(full['road_percentages'])} levels\n"
    )
    print("| stages | quick wall s | quick CPU s | full wall s | full CPU s | full / quick (CPU) |")
    print("|---|---|---|---|---|---|")
    for g in groups:
        (qw, qc), (fw, fc) = sums["quick"][g], sums["full"][g]
        ratio = f"{fc / qc:.1f}×" if qc > 0 else "—"
        print(f"| {g} | {qw:.1f} | {qc:.1f} | {fw:.1f} | {fc:.1f} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument(
        "--eval-images", type=int, default=None, help="test images per protocol (default: its own)"
    )
    parser.add_argument(
        "--eval-test-size", type=int, default=1000, help="test split size (the default config's)"
    )
    parser.add_argument("--only", choices=["deletion", "overhead", "protocols"], default=None)
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    if args.only in (None, "deletion"):
        bench_deletion(args.images, args.batch_size, args.repeats)
    if args.only in (None, "overhead") and not args.skip_overhead:
        bench_overhead(args.train_size, args.epochs, args.repeats)
    if args.only in (None, "protocols"):
        bench_protocols(args.eval_images, args.eval_test_size)


if __name__ == "__main__":
    main()
