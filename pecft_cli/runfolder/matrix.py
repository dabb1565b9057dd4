"""The evaluation matrix as CSV: a row per stage, a column per task."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from pecft_cli.errors import PecftError
from pecft_cli.runfolder.atomic import write_text


def write_matrix(
    path: Path, tasks: list[str], rows: dict[str, list[float | None]], key: str = "stage"
) -> None:
    """matrix.csv: header `stage,<task>...`, row `base`, then one row per trained task.

    merges.csv has the same shape with `merge` as the first column."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([key, *tasks])
    for stage, scores in rows.items():
        writer.writerow([stage, *("" if s is None else f"{s:.6f}" for s in scores)])
    write_text(path, buffer.getvalue())


def read_matrix(path: Path, key: str = "stage") -> tuple[list[str], dict[str, list[float | None]]]:
    """Task names and rows of a matrix.csv (or of a merges.csv, with key `merge`)."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            rows = {row[0]: [float(v) if v else None for v in row[1:]] for row in reader}
    except (StopIteration, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise PecftError(
            f"{path}: not a pecft matrix (a header `{key},<task>...` and rows of scores): {exc}."
        ) from None
    if header[:1] != [key] or any(len(row) != len(header) - 1 for row in rows.values()):
        raise PecftError(
            f"{path}: not a pecft matrix (a header `{key},<task>...` and rows of scores)."
        )
    return header[1:], rows
