"""The Hydra configs, shipped inside the package as ``lficam.conf``.

``lficam/conf`` is a symbolic link to this folder, so one set of files serves ``python train.py`` (which
reads ``conf/`` beside it), a checkout on ``PYTHONPATH`` and an installed lficam (``pkg://lficam.conf``:
setuptools copies the files into the wheel). This file makes the folder a package, which Hydra's ``pkg://``
config source requires.
"""
