"""The reproduction study: the paper's claims (method.md §1.5–1.6) rerun on data this machine has, by one command.

    python reproduce.py                 # make reproduce: conf/study/full.yaml, writes docs/results.md
    python reproduce.py study=quick     # make reproduce-quick: the same pipeline at a toy scale

Pipeline (each part resumable, each writes into the study folder ``study.runs_dir``):
1. :mod:`~lficam.study.plan`: the runs: per data set, 4 models × the seeds (accuracy, attention quality) and
   LFI-CAM and ABN under the stability settings of ``conf/setting/`` (the first setting's seed-0 run is shared);
2. :mod:`~lficam.study.launch`: trains each run once (``python train.py …`` per run, or in-process);
3. :mod:`~lficam.study.attention`: scores every map of every run on the same test images;
4. :mod:`~lficam.study.stability` and :mod:`~lficam.study.steptime`: cross-run stability, step-time ratios;
5. :mod:`~lficam.study.results`, :mod:`~lficam.study.figures`, :mod:`~lficam.study.report`: numbers (JSON),
   pictures and the text of results.md, all generated from the numbers.
"""

from lficam.study.pipeline import run_study

__all__ = ["run_study"]
