"""eval/matrix.png: the evaluation matrix as a labelled heatmap, readable at a glance.

Rows are stages (base, then after each task), columns are tasks, cells are scores in percent;
the diagonal (each task just after learning it) is outlined, so forgetting reads as a fading
column below it.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from pecft_cli import runs  # noqa: E402


def save_heatmap(
    path: Path, tasks: list[str], matrix: dict[str, list[float | None]], title: str
) -> None:
    """Write the heatmap atomically; empty cells (not scored) stay blank."""
    stages = list(matrix)
    values = np.array(
        [[np.nan if v is None else 100 * v for v in matrix[s]] for s in stages], dtype=float
    )
    width = max(4.0, 1.1 * len(tasks) + 2.5)
    height = max(3.0, 0.55 * len(stages) + 1.8)
    figure, axes = plt.subplots(figsize=(width, height), dpi=120)
    image = axes.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    axes.set_xticks(range(len(tasks)), labels=tasks, rotation=30, ha="right")
    axes.set_yticks(range(len(stages)), labels=[f"after {s}" if s != "base" else s for s in stages])
    axes.set_xlabel("task scored")
    axes.set_ylabel("stage")
    axes.set_title(title)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if not np.isnan(value):
                shade = "black" if value > 60 else "white"
                axes.text(j, i, f"{value:.1f}", ha="center", va="center", color=shade, fontsize=9)
    for j, task in enumerate(tasks):
        if task in stages:
            i = stages.index(task)
            axes.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="white"))
    figure.colorbar(image, ax=axes, label="score (%)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    runs.write_bytes(path, buffer.getvalue())
