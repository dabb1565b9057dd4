"""eval/matrix.png: the evaluation matrix as a labelled heatmap, readable at a glance.

Rows are stages (base, then after each task), columns are tasks, cells are scores in percent;
the diagonal (each task just after learning it) is outlined, so forgetting reads as a fading
column below it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from pecft_cli.runfolder.atomic import write_bytes

# The figure grows with the matrix up to this size (inches at DPI), then its cells shrink: the
# image's memory, rendered at every stage, stays bounded however long the stream is.
MAX_WIDTH, MAX_HEIGHT, DPI = 16.0, 12.0, 120
# Cells smaller than this (inches) carry no printed score; tick labels thin out to keep this
# far apart (the task labels are slanted 30 degrees, so they need twice the room across).
TEXT_WIDTH, TEXT_HEIGHT, ROW_PITCH, COLUMN_PITCH = 0.55, 0.3, 0.18, 0.36


def save_heatmap(
    path: Path, tasks: list[str], matrix: dict[str, list[float | None]], title: str
) -> None:
    """Write the heatmap atomically; empty cells (not scored) stay blank."""
    stages = list(matrix)
    values = np.array(
        [[np.nan if v is None else 100 * v for v in matrix[s]] for s in stages], dtype=float
    )
    width = min(MAX_WIDTH, max(4.0, 1.1 * len(tasks) + 2.5))
    height = min(MAX_HEIGHT, max(3.0, 0.55 * len(stages) + 1.8))
    figure, axes = plt.subplots(figsize=(width, height), dpi=DPI)
    image = axes.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    cell_width, cell_height = (width - 2.5) / len(tasks), (height - 1.8) / len(stages)
    columns = thinned(len(tasks), cell_width, COLUMN_PITCH)
    axes.set_xticks(columns, labels=[tasks[j] for j in columns], rotation=30, ha="right")
    rows = thinned(len(stages), cell_height, ROW_PITCH)
    labels = [f"after {stages[i]}" if stages[i] != "base" else "base" for i in rows]
    axes.set_yticks(rows, labels=labels)
    axes.set_xlabel("task scored")
    axes.set_ylabel("stage")
    axes.set_title(title)
    if cell_width >= TEXT_WIDTH and cell_height >= TEXT_HEIGHT:
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                if not np.isnan(value):
                    shade = "black" if value > 60 else "white"
                    axes.text(
                        j, i, f"{value:.1f}", ha="center", va="center", color=shade, fontsize=9
                    )
    for j, task in enumerate(tasks):
        if task in stages:
            i = stages.index(task)
            axes.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="white"))
    figure.colorbar(image, ax=axes, label="score (%)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    write_bytes(path, buffer.getvalue())


def thinned(count: int, pitch: float, least: float) -> list[int]:
    """Every k-th of `count` positions `pitch` inches apart, k the least that keeps the
    labelled ones `least` inches apart."""
    return list(range(0, count, max(1, math.ceil(least / pitch))))
