"""The reproduction study: ``python reproduce.py [study=full|quick|paper] [study.key=value ...]``.

``make reproduce`` runs ``conf/study/full.yaml`` and writes docs/results.md, docs/results.json and docs/figures/;
``make reproduce-quick`` the same pipeline at a toy scale. See lficam/study/ and docs/results.md.
"""

import hydra
from omegaconf import DictConfig

from lficam.study.pipeline import main as run


@hydra.main(version_base="1.3", config_path="conf", config_name="reproduce")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
