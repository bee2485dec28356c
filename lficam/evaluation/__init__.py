"""Evaluation: the one place that turns a model, images and a protocol into maps, scores and curves."""
