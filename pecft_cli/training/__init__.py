"""`pecft train`: the task loop, one stage's steps, checkpoints and what a run writes."""
