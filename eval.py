"""Evaluate a trained model: ``python eval.py ckpt_path=<run>/checkpoints/last.ckpt [eval.cams=[gradcam,...]]``,
or the paper's cross-run stability: ``python eval.py stability.runs=<sweep folder or [a.ckpt,b.ckpt]>``.
The installed command ``lficam-eval`` is the same app (:mod:`lficam.cli`).
"""

import sys

import hydra
from omegaconf import DictConfig

from lficam import cli


@hydra.main(version_base=cli.VERSION_BASE, config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    cli.eval_task(cfg)


if __name__ == "__main__":
    sys.exit(cli.run(main))
