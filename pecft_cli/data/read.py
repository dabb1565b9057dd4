"""Reading a task's rows: local files with the standard library, so that a broken row is
reported by its line; `save_to_disk` folders and hub datasets through `datasets`.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """A split as its source holds it: a local file or folder, a saved dataset, or the hub."""
    where = f"tasks '{task.name}' {split}"
    reference = task.train if split == "train" else task.eval
    if task.source is None:
        if Path(reference).is_dir():
            return Rows(*read_saved(Path(reference), None, where)).named(reference)
        return Rows(read_local(Path(reference), where)).named(reference)
    source = Path(task.source)
    described = f"{task.source} [{reference}]"
    if source.is_dir():
        return Rows(*read_saved(source, reference, where)).named(described)
    if source.is_absolute():
        raise PecftError(
            f"{where}: source {task.source} does not exist. Give a `datasets.save_to_disk` folder "
            "or a hub dataset id as source, or drop source and name data files in train and eval."
        )
    return Rows(*read_hub(task.source, task.config, reference, where)).named(described)


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


def dataset_rows(data: Any) -> tuple[list[dict[str, Any]], frozenset[str]]:
    """A `datasets.Dataset` as rows, a `ClassLabel` column's integers written as the class
    names (so a target on it yields "sports", not "1"), and the names of those columns."""
    from datasets import ClassLabel

    labels = {name: f for name, f in data.features.items() if isinstance(f, ClassLabel)}
    rows = data.to_list()
    for row in rows:
        for name, feature in labels.items():
            value = row.get(name)
            if isinstance(value, int) and 0 <= value < feature.num_classes:
                row[name] = feature.int2str(value)
    return rows, frozenset(labels)


def read_local(path: Path, where: str) -> list[dict[str, Any]]:
    """Rows of a local jsonl, json, csv or parquet file, or of a saved dataset folder."""
    if path.is_dir():
        return read_saved(path, None, where)[0]
    if not path.is_file():
        raise PecftError(
            f"{where}: data file {path} does not exist. Give a .jsonl, .json, .csv or .parquet "
            "file, or a `datasets.save_to_disk` folder (relative paths are taken from the "
            "recipe's folder)."
        )
    suffix = path.suffix.lower()
    readers = {".jsonl": read_jsonl, ".json": read_json, ".csv": read_csv, ".parquet": read_parquet}
    if suffix not in readers:
        raise PecftError(
            f"{where}: {path} has an unknown extension '{suffix}'; use .jsonl, .json, .csv or "
            ".parquet."
        )
    try:
        return readers[suffix](path)
    except UnicodeDecodeError as exc:
        raise PecftError(
            f"{where}: {path} is not UTF-8 text (byte {exc.start}: {exc.reason}). "
            "Re-save it as UTF-8."
        ) from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PecftError(f"{path}, line {number}: not valid JSON ({exc.msg}).") from None
            except (RecursionError, ValueError) as exc:
                raise PecftError(f"{path}, line {number}: {unreadable_json(exc)}") from None
            if not isinstance(row, dict):
                raise PecftError(
                    f"{path}, line {number}: each line must be a JSON object with named fields; "
                    f"found {type(row).__name__}."
                )
            rows.append(row)
    return rows


def read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PecftError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}).") from None
    except (RecursionError, ValueError) as exc:
        raise PecftError(f"{path}: {unreadable_json(exc)}") from None
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise PecftError(
            f"{path}: a .json data file must hold a list of objects with named fields."
        )
    return data


def unreadable_json(exc: BaseException) -> str:
    """Valid JSON that Python will not read: nested too deeply, or a number too long."""
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply to read; a row holds text fields and lists of strings."
    return f"JSON that cannot be read ({first_line(exc)})."


def read_csv(path: Path) -> list[dict[str, Any]]:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    rows = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames or []
            for row in reader:
                if None in row or any(value is None for value in row.values()):
                    raise PecftError(
                        f"{path}, line {reader.line_num}: the row has a different number of "
                        f"fields from the header ({len(header)}: {listing(header)})."
                    )
                rows.append(row)
        except csv.Error as exc:
            raise PecftError(f"{path}, line {reader.line_num}: not valid CSV ({exc}).") from None
    return rows


CSV_FIELD_LIMIT = 2**30  # a long document is a legitimate field; Python's default is 128 KiB


def read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise PecftError(f"{path}: not a readable parquet file ({first_line(exc)}).") from None


def read_saved(
    folder: Path, split: str | None, where: str
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
        return dataset_rows(data)
    splits = list(data.keys())
    if split is None or split not in splits:
        raise PecftError(
            f"{where}: {folder} holds the splits {', '.join(splits)}; set `source: {folder}` "
            "and name one of them as the task's train or eval."
        )
    return dataset_rows(data[split])


def read_hub(
    name: str, config: str | None, split: str, where: str
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
    return dataset_rows(data)
