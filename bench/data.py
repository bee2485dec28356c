"""Does data ever bottleneck training? Images per second of the data loaders beside a training step.

    python bench/data.py [--images 128] [--workers 0 2 4] [--repeats 2]

Prints three tables, each measured in one process so that machine load affects every column alike:
1. decoders: torchvision.io against Pillow on the same 224 px files (JPEG, PNG, WebP), decode only;
2. the image-folder loader at 224 px (RandomResizedCrop + flip, batches of 32) with 0, 2 and 4 workers,
   against a bare ``torchvision.datasets.ImageFolder`` with the same transforms, and ours with masks;
3. the Fashion-MNIST (32 px) and cluttered Fashion-MNIST (64 px) training loaders against the training
   step of a CIFAR ResNet-20 (plain and LFI-CAM) at those sizes, batches of 128;
4. streamed data sets (litdata) from a folder and from a local object store beside the image folder at 224 px
   (``bench/streamed.py``, also run alone).
Files are written to a temporary folder (synthetic 500×375 JPEGs, ImageNet's typical size); the Fashion
tables need Fashion-MNIST's files (``make fashion-mnist`` or ``--fashion-root``) and are skipped without.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from lficam import create_model
from lficam.core.errors import UserError
from lficam.data import FashionClutterDataModule, FashionMNISTDataModule, ImageFolderDataModule
from lficam.data.fashion_mnist import DEBIAN_FOLDER, locate


def best_rate(count: int, run: Callable[[], object], repeats: int) -> float:
    """Items per second of the best of ``repeats`` timed runs (after one untimed warm-up)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return count / best


def natural_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour fields plus grain: compresses like a photograph, unlike white noise."""
    coarse = Image.fromarray((rng.random((height // 16 + 1, width // 16 + 1, 3)) * 255).astype(np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC)).astype(np.int16)
    grain = rng.integers(-12, 13, (height, width, 3))
    return Image.fromarray((smooth + grain).clip(0, 255).astype(np.uint8))


def decoders(repeats: int) -> None:
    n = 100
    rng = np.random.default_rng(0)
    image = natural_image(rng, 224, 224)
    print("\n1. Decoding one 224×224 image (images/s)")
    header = f"{'format':<8}{'bytes':>8}{'torchvision':>13}{'Pillow':>9}{'tv/Pillow':>11}"
    print(header + "\n" + "-" * len(header))
    for fmt, options in (("JPEG", {"quality": 90}), ("PNG", {}), ("WEBP", {"quality": 90})):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        data = buffer.getvalue()
        tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)

        def with_torchvision(tensor: torch.Tensor = tensor) -> None:
            for _ in range(n):
                decode_image(tensor, mode=ImageReadMode.RGB)

        def with_pillow(data: bytes = data) -> None:
            for _ in range(n):
                with Image.open(io.BytesIO(data)) as file:
                    np.asarray(file.convert("RGB"))

        tv, pil = best_rate(n, with_torchvision, repeats), best_rate(n, with_pillow, repeats)
        print(f"{fmt:<8}{len(data):>8}{tv:>13.0f}{pil:>9.0f}{tv / pil:>11.2f}")
    print("(PNG is decoded with Pillow all the same: torchvision's PNG decoder crashes on corrupt files.)")


def write_folder(root: Path, count: int) -> None:
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for i in range(count if split == "train" else 2):
            name = ("a", "b")[i % 2]
            (root / split / name).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split / name).mkdir(parents=True, exist_ok=True)
            natural_image(rng, 500, 375).save(root / split / name / f"{i:05d}.jpg", quality=90)
            mask = np.zeros((375, 500), dtype=np.uint8)
            mask[100:300, 120:380] = 1
            Image.fromarray(mask).save(root / "masks" / split / name / f"{i:05d}.png")


def drain(loader: Iterable) -> None:
    for _ in loader:
        pass


def image_folders(count: int, workers: list[int], repeats: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="lficam-bench-"))
    try:
        write_folder(folder, count)
        plain = folder / "plain"  # the same images without masks/ for the loader without ground truth
        plain.mkdir()
        (plain / "train").symlink_to(folder / "train")
        (plain / "val").symlink_to(folder / "val")
        print(
            f"\n2. Image-folder training loaders at 224 px, {count} JPEGs of 500×375, batches of 32 (images/s)"
        )
        header = f"{'workers':>8}{'lficam':>9}{'+ masks':>9}{'torchvision ImageFolder':>25}{'lficam/tv':>11}"
        print(header + "\n" + "-" * len(header))
        for n in workers:
            ours = ImageFolderDataModule(plain, image_size=224, batch_size=32, num_workers=n, seed=0)
            ours.setup("fit")
            masked = ImageFolderDataModule(folder, image_size=224, batch_size=32, num_workers=n, seed=0)
            masked.setup("fit")
            transform = v2.Compose(
                [
                    v2.ToImage(),
                    v2.RandomResizedCrop(224, antialias=True),
                    v2.RandomHorizontalFlip(),
                    v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                ]
            )
            reference = DataLoader(
                datasets.ImageFolder(str(folder / "train"), transform=transform),
                batch_size=32,
                shuffle=True,
                drop_last=True,
                num_workers=n,
            )
            used = (count // 32) * 32
            rates = [
                best_rate(used, lambda loader=loader: drain(loader), repeats)
                for loader in (ours.train_dataloader(), masked.train_dataloader(), reference)
            ]
            print(f"{n:>8}{rates[0]:>9.0f}{rates[1]:>9.0f}{rates[2]:>25.0f}{rates[0] / rates[2]:>11.2f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def training_step_rate(size: int, attention: str, batch: int, repeats: int) -> float:
    model = create_model("cifar_resnet20", num_classes=10, attention=attention)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(model(x), y).backward()
        optimizer.step()

    return best_rate(batch, step, repeats)


def fashion(root: str | None, repeats: int, cache: Path) -> None:
    try:
        locate(root)
    except UserError as error:
        print(f"\n3. Fashion-MNIST loaders: skipped ({error})")
        return
    print(
        "\n3. Fashion-MNIST training loaders (batches of 128, no workers) beside a training step (images/s)"
    )
    header = (
        f"{'data':<34}{'px':>4}{'setup s':>9}{'loader':>9}{'ResNet-20':>11}{'LFI-CAM':>9}{'loader/step':>13}"
    )
    print(header + "\n" + "-" * len(header))
    modules = [
        (
            "fashion_mnist (prepared, cached)",
            lambda: FashionMNISTDataModule(root, cache_dir=str(cache), batch_size=128),
        ),
        (
            "fashion_clutter (8 000 canvases)",
            lambda: FashionClutterDataModule(root, train_size=8000, cache_dir=str(cache), batch_size=128),
        ),
    ]
    for name, build in modules:
        build().setup("fit")  # the first preparation (decompress, silhouettes, render) fills the cache
        start = time.perf_counter()
        data = build()
        data.setup("fit")
        setup = time.perf_counter() - start
        loader = data.train_dataloader()
        batches = min(32, len(loader))

        def some_batches(loader=loader, batches=batches) -> None:
            for i, _ in enumerate(loader):
                if i + 1 == batches:
                    break

        rate = best_rate(batches * 128, some_batches, repeats)
        plain = training_step_rate(data.image_size, "none", 128, repeats)
        lfi = training_step_rate(data.image_size, "lficam", 128, repeats)
        print(
            f"{name:<34}{data.image_size:>4}{setup:>9.1f}{rate:>9.0f}{plain:>11.0f}{lfi:>9.0f}{rate / plain:>13.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=128, help="JPEGs in the image-folder benchmark")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fashion-root", default=str(DEBIAN_FOLDER))
    parser.add_argument(
        "--cache", default=None, help="where the Fashion modules cache (default: a temporary folder)"
    )
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats} runs")
    decoders(args.repeats)
    image_folders(args.images, args.workers, args.repeats)
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="lficam-bench-cache-"))
    try:
        fashion(args.fashion_root, args.repeats, cache)
    finally:
        if not args.cache:
            shutil.rmtree(cache, ignore_errors=True)
    from streamed import streamed_table  # bench/streamed.py, beside this file

    streamed_table(args.images, [n for n in args.workers if n <= 2], args.repeats)


if __name__ == "__main__":
    main()
