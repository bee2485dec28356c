"""The version of lficam (what exports and checkpoints record)."""

__version__ = "0.1.0"
