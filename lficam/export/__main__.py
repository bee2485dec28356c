"""``python -m lficam.export key=value ...``: the same command as ``lficam-export``."""

import sys

from lficam.cli.commands import export

sys.exit(export())
