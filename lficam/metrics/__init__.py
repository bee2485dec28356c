"""Attention metrics: functional (one value per image) and torchmetrics classes (synced across ranks)."""

from lficam.metrics.localisation import PointingGame, pointing_game

__all__ = ["PointingGame", "pointing_game"]
