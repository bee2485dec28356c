"""Train a model: ``python train.py [model=resnet50] [attention=lficam|abn|none] [key=value ...]``.

See README.md and ``conf/train.yaml`` for the choices; ``python train.py --help`` lists the config groups.
The installed command ``lficam-train`` is the same app (:mod:`lficam.cli`).
"""

import sys

import hydra
from omegaconf import DictConfig

from lficam import cli


@hydra.main(version_base=cli.VERSION_BASE, config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return cli.run_task(cfg)


if __name__ == "__main__":
    sys.exit(cli.run(main))
