"""Explaining a trained model on the user's own images (``python -m lficam.explain``): the own map and post-hoc
CAMs side by side (:mod:`lficam.explain.command`)."""
