"""Scoring a model on a task: scorers, decoding, metrics, harness rows, the heatmap.

Nothing here imports training, serving or strategies."""
