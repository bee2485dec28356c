"""Checkpoints: reading them safely and a run's records."""
