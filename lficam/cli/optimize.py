"""``lficam-optimize data=<source> output=<folder or s3://bucket/prefix>`` (or ``python -m lficam.cli.optimize``):
write a data module's splits as litdata chunks for ``data=streaming`` (:mod:`lficam.data.stream_write`).

A Hydra app like the other commands, run by :func:`lficam.cli.runtime.run`: a user's mistake (a missing
source folder, an output that cannot be written, an object store that refuses) is one sentence, exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import hydra
from omegaconf import DictConfig

from lficam.cli.runtime import CONFIG_PACKAGE, VERSION_BASE, guarded, run


def optimize_task(cfg: DictConfig) -> Any:
    """Hydra task body: build the source data module from ``cfg.data`` and write its chunks to ``cfg.output``."""

    def write() -> None:
        from hydra.utils import instantiate

        from lficam.data.stream_write import write_streamed  # deferred: start-up time

        metadata = write_streamed(instantiate(cfg.data), str(cfg.output), chunk_bytes=str(cfg.chunk_bytes))
        sizes = ", ".join(f"{n} {split}" for split, n in metadata.sizes.items())
        print(
            f"Wrote {sizes} images ({metadata.image_size} px, {len(metadata.class_names)} classes) to {cfg.output}."
        )

    return guarded(write, errors_to_log=False)


@hydra.main(version_base=VERSION_BASE, config_path=f"pkg://{CONFIG_PACKAGE}", config_name="optimize")
def _optimize_app(cfg: DictConfig) -> Any:
    return optimize_task(cfg)


def optimize(argv: Sequence[str] | None = None) -> int:
    """``lficam-optimize``."""
    return run(_optimize_app, argv)


if __name__ == "__main__":
    sys.exit(optimize())
