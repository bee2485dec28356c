"""The reproduction study: ``python reproduce.py [study=full|quick|paper] [study.key=value ...]``.

``make reproduce`` runs ``conf/study/full.yaml`` and writes docs/results.md, docs/results.json and docs/figures/;
``make reproduce-quick`` the same pipeline at a toy scale. See lficam/study/ and docs/results.md. Like the other
commands (:mod:`lficam.cli`): a mistake in the input is one sentence and exit code 2, Ctrl-C exit code 130.
"""

import sys

import hydra
from omegaconf import DictConfig

from lficam import cli


@hydra.main(version_base=cli.VERSION_BASE, config_path="conf", config_name="reproduce")
def main(cfg: DictConfig) -> None:
    cli.study_task(cfg)


if __name__ == "__main__":
    sys.exit(cli.run(main))
