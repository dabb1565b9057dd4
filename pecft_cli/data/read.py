"""Reading a task's rows: local files as a stream (`files`), so that a broken row is reported by
its line; `save_to_disk` folders and hub datasets through `datasets`. Where a split comes from is
checked first, without `datasets`, so a wrong path is refused before any model library loads.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pecft_cli.data.files import check_cells, file_rows, missing_file, path_kind, refuse_kind
from pecft_cli.errors import PecftError, did_you_mean, first_line, listing, short
from pecft_cli.recipe.schema import TaskSection


@dataclass
class Rows:
    """A split's rows, where they came from, and which of their fields are class columns
    (`ClassLabel` features, given by name; None when the source has no features)."""

    rows: list[dict[str, Any]]
    classes: frozenset[str] | None = None
    described: str = ""

    def named(self, described: str) -> Rows:
        self.described = described
        return self


def read_rows(task: TaskSection, split: str) -> Rows:
    """The rows of a task's train or eval data, sampled per class when the task asks."""
    read = read_split(task, split)
    counts = task.per_class
    count = None if counts is None else (counts.train if split == "train" else counts.eval)
    if counts is not None and count is not None:
        where = f"tasks '{task.name}' {split} ({read.described}), per_class"
        declared = task.labels is not None  # the classes named by the recipe itself
        read.rows = per_class(read, task.class_field(), count, counts.seed, where, declared)
    if task.labels is not None:
        where = f"tasks '{task.name}' {split} ({read.described}), labels"
        read.rows = relabel(read.rows, task.class_field(), task.labels, where)
    return read


def relabel(
    rows: list[dict[str, Any]], field: str, labels: dict[str, str], where: str
) -> list[dict[str, Any]]:
    """The rows with each value of `field` replaced by the words `labels` gives for it."""
    out = []
    for number, row in enumerate(rows, start=1):
        value = str(row.get(field))
        if value not in labels:
            raise PecftError(
                f"{where}: row {number} has {field} {short(value)}, which labels does not map"
                f"{did_you_mean(value, list(labels)) or '.'} Mapped: {listing(list(labels))}."
            )
        out.append({**row, field: labels[value]})
    return out


def read_split(task: TaskSection, split: str) -> Rows:
    """A split as its source holds it: a local file or folder, a saved dataset, or the hub.
    Rows keep only the fields the task uses (all of them when one is missing, for the message
    that names it)."""
    where = f"tasks '{task.name}' {split}"
    reference = task.train if split == "train" else task.eval
    kind, used = split_source(task, split), task.row_fields()
    if kind == "file":
        rows = [slim(row, used) for row in file_rows(Path(reference), where)]
        return Rows(rows).named(reference)
    if task.source is None:
        return Rows(*read_saved(Path(reference), None, where, used)).named(reference)
    described = f"{task.source} [{reference}]"
    if kind == "saved":
        return Rows(*read_saved(Path(task.source), reference, where, used)).named(described)
    return Rows(*read_hub(task.source, task.config, reference, where, used)).named(described)


def slim(row: dict[str, Any], used: list[str]) -> dict[str, Any]:
    """The row with only the fields in `used`, when it has them all."""
    if all(row.get(name) is not None for name in used):
        return {name: row[name] for name in used}
    return row


def split_source(task: TaskSection, split: str) -> str:
    """Where a split's rows come from, "file", "saved" (a `save_to_disk` folder) or "hub",
    checked without opening a data file or importing `datasets`."""
    where = f"tasks '{task.name}' {split}"
    reference = task.train if split == "train" else task.eval
    path = Path(task.source or reference)
    kind = path_kind(path)
    if kind == "folder":
        check_saved(path, reference if task.source else None, where)
        return "saved"
    if task.source is None:
        if kind == "file":
            return "file"
        raise missing_file(path, where) if kind == "missing" else refuse_kind(path, kind, where)
    if not path.is_absolute():
        return "hub"
    if kind in ("missing", "file"):
        what = "does not exist" if kind == "missing" else "is a file"
        raise PecftError(
            f"{where}: source {task.source} {what}. Give a `datasets.save_to_disk` folder or a "
            "hub dataset id as source, or drop source and name data files in train and eval."
        )
    raise refuse_kind(path, kind, where)


def check_saved(folder: Path, split: str | None, where: str) -> None:
    """Refuse a folder that `datasets.load_from_disk` would not read, or a split it lacks, by
    the files `save_to_disk` writes (as `load_from_disk` tells them apart)."""
    if (folder / "dataset_info.json").is_file() and (folder / "state.json").is_file():
        return
    listed = folder / "dataset_dict.json"
    if not listed.is_file():
        raise PecftError(
            f"{where}: {folder} is not a `datasets.save_to_disk` folder (it holds neither "
            "state.json nor dataset_dict.json)."
        )
    try:
        splits = json.loads(listed.read_text(encoding="utf-8"))["splits"]
        names = [str(name) for name in splits]
    except (OSError, ValueError, TypeError, KeyError):
        return  # `datasets` says what is wrong with it
    if split not in names:
        raise saved_splits(folder, names, where)


def saved_splits(folder: Path, splits: list[str], where: str) -> PecftError:
    return PecftError(
        f"{where}: {folder} holds the splits {listing(splits)}; set `source: {folder}` and name "
        "one of them as the task's train or eval."
    )


def per_class(
    read: Rows, field: str, count: int, seed: int, where: str, declared: bool = False
) -> list[dict[str, Any]]:
    """At most `count` rows of each value of `field`, drawn with a seeded generator, in the
    source's order. A source with features must have `field` as a class column, unless the
    task's `labels` declare its classes."""
    if read.classes is not None and field not in read.classes and not declared:
        named = ", ".join(sorted(read.classes)) or "none"
        raise PecftError(
            f"{where}: the target field '{field}' is not a class column of this dataset (a "
            f"ClassLabel feature); per_class samples by class. Class columns here: {named}. "
            "Drop per_class, name a class column in the target, or declare its classes with "
            "`labels`."
        )
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(read.rows):
        groups.setdefault(str(row.get(field)), []).append(index)
    draw = random.Random(seed)
    kept = []
    for label in sorted(groups):
        members = groups[label]
        kept += draw.sample(members, count) if len(members) > count else members
    return [read.rows[index] for index in sorted(kept)]


def dataset_rows(
    data: Any, where: str, used: list[str] | None = None
) -> tuple[list[dict[str, Any]], frozenset[str]]:
    """A `datasets.Dataset` as rows (of the `used` columns only, when it has them all), a
    `ClassLabel` column's integers written as the class names (so a target on it yields
    "sports", not "1"), and the names of those columns. A text cell too long for one row is
    refused while it is still in the memory-mapped Arrow table, before it becomes a string."""
    from datasets import ClassLabel

    labels = {name: f for name, f in data.features.items() if isinstance(f, ClassLabel)}
    if used is not None and set(used) <= set(data.column_names):
        data = data.select_columns(used)
    check_cells({name: data.data.column(name) for name in data.column_names}, where)
    rows = data.to_list()
    for row in rows:
        for name, feature in labels.items():
            value = row.get(name)
            if isinstance(value, int) and 0 <= value < feature.num_classes:
                row[name] = feature.int2str(value)
    return rows, frozenset(labels)


def read_local(path: Path, where: str) -> list[dict[str, Any]]:
    """Rows of a local jsonl, json, csv or parquet file, or of a saved dataset folder."""
    return list(local_rows(path, where))


def local_rows(path: Path, where: str) -> Iterator[dict[str, Any]]:
    """The rows of a local file as a stream, or of a saved dataset folder; a path that is
    neither a regular file nor a folder is refused without being opened."""
    kind = path_kind(path)
    if kind == "folder":
        yield from read_saved(path, None, where)[0]
    elif kind == "missing":
        raise missing_file(path, where)
    elif kind != "file":
        raise refuse_kind(path, kind, where)
    else:
        yield from file_rows(path, where)


def read_saved(
    folder: Path, split: str | None, where: str, used: list[str] | None = None
) -> tuple[list[dict[str, Any]], frozenset[str]]:
    """Rows of a `datasets.save_to_disk` folder (a Dataset, or one split of a DatasetDict),
    and its class columns."""
    from datasets import Dataset, load_from_disk

    try:
        data = load_from_disk(str(folder))
    except (FileNotFoundError, ValueError) as exc:
        raise PecftError(
            f"{where}: {folder} is not a `datasets.save_to_disk` folder ({exc})."
        ) from None
    if isinstance(data, Dataset):
        return dataset_rows(data, where, used)
    splits = list(data.keys())
    if split is None or split not in splits:
        raise saved_splits(folder, splits, where)
    return dataset_rows(data[split], where, used)


def read_hub(
    name: str, config: str | None, split: str, where: str, used: list[str] | None = None
) -> tuple[list[dict[str, Any]], frozenset[str]]:
    """Rows of a hub dataset split (from the local cache when offline), and its class columns."""
    from datasets import load_dataset

    try:
        data = load_dataset(name, config, split=split)
    except Exception as exc:  # datasets raises many types for a missing or offline dataset
        raise PecftError(
            f"{where}: could not load hub dataset '{name}' (config {short(config)}, split "
            f"'{split}'): {first_line(exc)}. Check the id, config and split; offline, load it "
            "once where the hub is reachable so that it is in the datasets cache, or save it "
            "with `datasets.save_to_disk` and point source at that folder."
        ) from None
    return dataset_rows(data, where, used)
