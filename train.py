"""Train a model: ``python train.py [model=resnet50] [attention=lficam|abn|none] [key=value ...]``.

See README.md and ``conf/train.yaml`` for the choices; ``python train.py --help`` lists the config groups.
"""

import hydra
from omegaconf import DictConfig

from lficam.train import run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_task(cfg)


if __name__ == "__main__":
    main()
