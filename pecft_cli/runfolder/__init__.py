"""The run folder on disk: its layout, claiming it, safe writes, its state and matrix,
and reading a saved run back."""
