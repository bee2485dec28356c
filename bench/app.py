"""How long the explorer (lficam-app) makes a user wait: loading a run, then the first map of a chosen image.

    python bench/app.py [--run <run folder>] [--methods own,gradcam,scorecam] [--images 5]

Without ``--run`` it first trains the default model (a CIFAR ResNet-20 with the paper's FIN on 32 px shapes)
for a few batches into a temporary folder: the time to a map depends on the architecture, not on how well
it is trained. Per method: the wall time from choosing an image to its map (what the page waits for; the
model is already loaded), the same for the image's scores (the pointing game, mask IoU and the deletion and
insertion curves of that one image), and the map again from the explorer's cache. The median over
``--images`` test images, each seen for the first time; wall-clock seconds, as the user feels them.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lficam.app.explorer import Explorer, resolve_target  # noqa: E402


def tiny_run(folder: Path) -> Path:
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "logger=csv",
        "trainer.max_epochs=1",
        "++trainer.limit_train_batches=5",
        "++trainer.limit_val_batches=2",
        "++trainer.limit_test_batches=2",
        "callbacks.attention_overlays=null",
        f"paths.data_dir={folder / 'data'}",
        f"hydra.run.dir={folder / 'run'}",
    ]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return folder / "run"


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--methods", default="own,cam,gradcam,gradcampp,scorecam,layercam")
    parser.add_argument("--images", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        run = args.run or tiny_run(Path(scratch))
        checkpoint = resolve_target(run).checkpoints[0]
        start = time.perf_counter()
        explorer = Explorer(checkpoint, data_dir=str(Path(scratch) / "data") if args.run is None else None)
        _ = explorer.test_set
        loaded = time.perf_counter() - start
        print(f"checkpoint {checkpoint}: model and test split loaded in {loaded:.2f} s")
        print(f"{'method':<10} {'first map s':>12} {'scores s':>10} {'cached map s':>13}")
        for method in args.methods.split(","):
            first, scores, cached = [], [], []
            for index in range(args.images):
                sample = explorer.test_image(index)
                first.append(seconds(lambda: explorer.map(sample, method)))  # noqa: B023
                scores.append(seconds(lambda: explorer.scores(sample, method)))  # noqa: B023
                cached.append(seconds(lambda: explorer.map(sample, method)))  # noqa: B023
            print(
                f"{method:<10} {statistics.median(first):>12.3f} {statistics.median(scores):>10.3f} "
                f"{statistics.median(cached):>13.5f}"
            )


if __name__ == "__main__":
    main()
