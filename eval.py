"""Evaluate a trained model: ``python eval.py ckpt_path=<run>/checkpoints/last.ckpt [eval.cams=[gradcam,...]]``,
or the paper's cross-run stability: ``python eval.py stability.runs=<sweep folder or [a.ckpt,b.ckpt]>``.
"""

import hydra
from omegaconf import DictConfig

from lficam.evaluate import run_eval


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_eval(cfg)


if __name__ == "__main__":
    main()
