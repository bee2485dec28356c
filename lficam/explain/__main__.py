"""``python -m lficam.explain key=value ...``: the same command as ``lficam-explain``."""

import sys

from lficam.cli.commands import explain

sys.exit(explain())
