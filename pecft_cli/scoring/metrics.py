"""Continual-learning metrics from an evaluation matrix. Pure functions: matrix in, numbers out.

R[i][j] is the score on task j after training tasks 0..i; b[j] is the score on task j before any
training (the base row). With T tasks (0-based indices below):

- acc        = mean_j R[T-1][j]                                    (average accuracy at the end)
- bwt        = mean_{j<T-1} (R[T-1][j] - R[j][j])                  (backward transfer, GEM)
- fwt        = mean_{j>0} (R[j-1][j] - b[j])                       (forward transfer, GEM)
- forgetting = mean_{j<T-1} (max_{l<T-1} R[l][j] - R[T-1][j])      (Chaudhry et al. 2018)
- learning_accuracy = mean_j R[j][j]                               (score just after learning)

bwt, fwt and forgetting need T >= 2 (fwt also the base row); otherwise they are None.

A sparse matrix (`evaluation.cells: sparse`) leaves cells unscored (None): acc, bwt, fwt and
learning_accuracy read only cells it always scores; forgetting's maximum runs over the rows that
scored the task, and the metrics then say so under `cells`.
"""

from __future__ import annotations

from statistics import fmean


def continual_metrics(
    tasks: list[str], matrix: list[list[float | None]], base: list[float | None] | None = None
) -> dict[str, object]:
    """The metrics of a square T x T matrix (row i: after task i), with per-task values."""
    size = len(tasks)
    if size == 0 or len(matrix) != size or any(len(row) != size for row in matrix):
        raise ValueError(f"need a {size} x {size} matrix, one row per trained task")
    if base is not None and len(base) != size:
        raise ValueError(f"the base row has {len(base)} scores for {size} tasks")
    needed = [*matrix[-1], *(matrix[j][j] for j in range(size))]
    needed += [matrix[j - 1][j] for j in range(1, size)] if base is not None else []
    if None in needed or (base is not None and None in base):
        raise ValueError("the last row, the diagonal and the cell before each task are needed")
    last = matrix[-1]
    earlier = range(size - 1)

    def highest(j: int) -> float:
        return max(v for stage in earlier if (v := matrix[stage][j]) is not None)

    forgetting = [highest(j) - last[j] for j in earlier]
    per_task = {}
    for j, name in enumerate(tasks):
        per_task[name] = {
            "zero_shot": base[j] if base is not None else None,
            "learned": matrix[j][j],
            "final": last[j],
            "forgetting": forgetting[j] if j < size - 1 else None,
        }
    metrics: dict[str, object] = {
        "acc": fmean(last),
        "bwt": fmean(last[j] - matrix[j][j] for j in earlier) if size > 1 else None,
        "fwt": (
            fmean(matrix[j - 1][j] - base[j] for j in range(1, size))
            if size > 1 and base is not None
            else None
        ),
        "forgetting": fmean(forgetting) if size > 1 else None,
        "learning_accuracy": fmean(matrix[j][j] for j in range(size)),
        "tasks": per_task,
    }
    scored = sum(v is not None for row in matrix for v in row)
    if scored < size * size:
        metrics["cells"] = {
            "scored": scored,
            "of": size * size,
            "forgetting": "maximum over the rows that scored each task",
        }
    return metrics


def stage_metrics(
    tasks: list[str], stages: list[str], matrix: dict[str, list[float | None]]
) -> dict[str, object]:
    """The metrics of a run's matrix: continual metrics when every task was its own stage; for
    a run trained on all tasks at once (joint), the final average only, the others None."""
    if stages == tasks:
        return continual_metrics(tasks, [matrix[name] for name in tasks], matrix.get("base"))
    last = matrix[stages[-1]]
    return {
        "acc": fmean(last),
        "bwt": None,
        "fwt": None,
        "forgetting": None,
        "learning_accuracy": None,
        "tasks": {
            name: {"zero_shot": (matrix.get("base") or [None] * len(tasks))[j], "final": last[j]}
            for j, name in enumerate(tasks)
        },
    }


def matrix_metrics(
    tasks: list[str], stages: list[str], matrix: dict[str, list[float | None]]
) -> dict[str, object] | None:
    """The run's metrics once every trained stage has the cells they need (all of them, or a
    sparse run's); None before."""
    if any(matrix.get(stage) is None for stage in stages):
        return None
    base = matrix.get("base")
    complete = {stage: matrix[stage] for stage in stages}
    if base is not None and None not in base:
        complete["base"] = base
    try:
        return stage_metrics(tasks, stages, complete)
    except ValueError:
        return None
