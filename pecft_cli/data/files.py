"""Local data files, read as a stream of rows, each within a bound; and what a path is.

A path is looked at with `stat` before anything opens it: a device, a FIFO or a socket is refused
by name (a FIFO would block the command until something writes to it, `/dev/zero` never ends),
and a loop of symbolic links is named as one. Rows are read one at a time, from bytes, so a file
larger than memory streams, a bad byte is reported by its line, and a row longer than
`MAX_ROW_BYTES` is refused by its line before it is held whole. Only the standard library reads
JSON and CSV; parquet goes through pyarrow, a batch of rows at a time.
"""

from __future__ import annotations

import codecs
import csv
import errno
import json
import os
import re
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pecft_cli.errors import PecftError, first_line, listing, short_text

MAX_ROW_BYTES = 64 * 2**20  # one row of a data file; a training example is far shorter
OTHER_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
)


def path_kind(path: Path) -> str:
    """'file', 'folder' or 'missing', else what the path is, in words; nothing is opened."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a loop of symbolic links"
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            return f"a path that cannot be read ({exc.strerror})"
        return "a symbolic link to a path that does not exist" if path.is_symlink() else "missing"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    return next((name for test, name in OTHER_KINDS if test(mode)), "not a regular file")


def refuse_kind(path: Path, kind: str, where: str) -> PecftError:
    """The error for a data path that is neither a regular file nor a folder."""
    return PecftError(
        f"{where}: {short_text(str(path), 200)} is {kind}, not a data file or folder, so pecft "
        "did not open it. Give a .jsonl, .json, .csv or .parquet file, or a "
        "`datasets.save_to_disk` folder."
    )


def too_long(path: Path, line: int) -> PecftError:
    return PecftError(
        f"{path}, line {line}: the row is longer than {MAX_ROW_BYTES:,} bytes, more than pecft "
        "reads as one row; remove the row or shorten its fields."
    )


def utf8(data: bytes, path: Path, line: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PecftError(
            f"{path}, line {line}: not UTF-8 text (byte {exc.start + 1} of the line: "
            f"{exc.reason}). Re-save it as UTF-8."
        ) from None


def lines(handle: IO[bytes], path: Path) -> Iterator[tuple[int, bytes]]:
    """The file's lines with their numbers; a line over the bound is refused unread."""
    number = 0
    while line := handle.readline(MAX_ROW_BYTES + 1):
        number += 1
        if len(line) > MAX_ROW_BYTES:
            raise too_long(path, number)
        yield number, line


def unreadable_json(exc: BaseException) -> str:
    """Valid JSON that Python will not read: nested too deeply, or a number too long."""
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply to read; a row holds text fields and lists of strings."
    return f"JSON that cannot be read ({first_line(exc)})."


def jsonl_rows(handle: IO[bytes], path: Path) -> Iterator[dict[str, Any]]:
    for number, data in lines(handle, path):
        text = utf8(data, path, number)
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PecftError(f"{path}, line {number}: not valid JSON ({exc.msg}).") from None
        except (RecursionError, ValueError) as exc:
            raise PecftError(f"{path}, line {number}: {unreadable_json(exc)}") from None
        if not isinstance(row, dict):
            raise PecftError(
                f"{path}, line {number}: each line must be a JSON object with named fields; "
                f"found {type(row).__name__}."
            )
        yield row


class CsvLines:
    """A CSV file's lines as text for `csv.reader`, refusing a record over the bound."""

    def __init__(self, handle: IO[bytes], path: Path) -> None:
        self.handle, self.path = handle, path
        self.record = 0  # bytes of the record being read so far

    def __iter__(self) -> Iterator[str]:
        for number, data in lines(self.handle, self.path):
            self.record += len(data)
            if self.record > MAX_ROW_BYTES:
                raise too_long(self.path, number)
            yield utf8(data, self.path, number)


def csv_rows(handle: IO[bytes], path: Path) -> Iterator[dict[str, Any]]:
    """Rows as `csv.DictReader` gives them, each checked against the header's columns."""
    csv.field_size_limit(MAX_ROW_BYTES)
    source = CsvLines(handle, path)
    reader = csv.reader(source)
    try:
        header = next(reader, [])
        twice = [name for name, count in Counter(header).items() if count > 1]
        if twice:
            raise PecftError(
                f"{path}, line 1: the header names the column '{short_text(twice[0], 60)}' "
                "more than once, and a row would keep only its last value; give every column "
                "its own name."
            )
        for values in reader:
            source.record = 0
            if not values:
                continue
            if len(values) != len(header):
                raise PecftError(
                    f"{path}, line {reader.line_num}: the row has a different number of "
                    f"fields from the header ({len(header)}: {listing(header)})."
                )
            yield dict(zip(header, values, strict=True))
    except csv.Error as exc:
        raise PecftError(f"{path}, line {reader.line_num}: not valid CSV ({exc}).") from None


SPACE = re.compile(r"[ \t\n\r]*")
CHUNK = 2**16


class JsonArray:
    """The objects of a .json file holding one list, decoded one at a time: the text read ahead
    is at most one object and a chunk, so the file streams and an object over the bound is
    refused before it is held whole."""

    def __init__(self, handle: IO[bytes], path: Path) -> None:
        self.handle, self.path = handle, path
        self.decode = codecs.getincrementaldecoder("utf-8")().decode
        self.json = json.JSONDecoder()
        self.text, self.at, self.line, self.offset, self.ended = "", 0, 1, 0, False

    def more(self) -> None:
        """Drop what was read, then read as much again as is held (a chunk at least)."""
        self.line += self.text.count("\n", 0, self.at)
        self.text, self.at = self.text[self.at :], 0
        data = self.handle.read(max(CHUNK, len(self.text)))
        try:
            self.text += self.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise PecftError(
                f"{self.path}: not UTF-8 text (near byte {self.offset + exc.start + 1}: "
                f"{exc.reason}). Re-save it as UTF-8."
            ) from None
        self.offset += len(data)
        self.ended = not data

    def peek(self) -> str:
        """The next character that is not white space, or '' at the end of the file."""
        while True:
            self.at = SPACE.match(self.text, self.at).end()  # type: ignore[union-attr]
            if self.at < len(self.text) or self.ended:
                return self.text[self.at : self.at + 1]
            self.more()

    def line_at(self, at: int) -> int:
        return self.line + self.text.count("\n", 0, at)

    def fail(self, what: str, at: int | None = None) -> PecftError:
        return PecftError(
            f"{self.path}, line {self.line_at(self.at if at is None else at)}: {what}"
        )

    def rows(self) -> Iterator[dict[str, Any]]:
        if self.peek() != "[":
            raise PecftError(
                f"{self.path}: a .json data file must hold a list of objects with named fields."
            )
        self.at += 1
        if self.peek() == "]":
            self.at += 1
        else:
            yield from self.objects()
        if self.peek():
            raise self.fail("not valid JSON (extra data after the list).")

    def objects(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.next_object()
            after = self.peek()
            self.at += 1
            if after == "]":
                return
            if after != ",":
                raise self.fail("not valid JSON (Expecting ',' delimiter).")
            self.peek()

    def next_object(self) -> dict[str, Any]:
        while True:
            try:
                value, end = self.json.raw_decode(self.text, self.at)
                break
            except json.JSONDecodeError as exc:
                cut = exc.msg.startswith("Unterminated string") or exc.pos >= len(self.text) - 6
                if self.ended or not cut:
                    raise self.fail(f"not valid JSON ({exc.msg}).", exc.pos) from None
                if len(self.text) - self.at > MAX_ROW_BYTES:
                    raise too_long(self.path, self.line_at(self.at)) from None
                self.more()
            except (RecursionError, ValueError) as exc:
                raise self.fail(unreadable_json(exc)) from None
        if not isinstance(value, dict):
            raise PecftError(
                f"{self.path}: a .json data file must hold a list of objects with named fields."
            )
        self.at = end
        return value


def json_rows(handle: IO[bytes], path: Path) -> Iterator[dict[str, Any]]:
    return JsonArray(handle, path).rows()


def parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    """A parquet file's rows, a batch at a time."""
    import pyarrow.parquet as pq

    done = 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise PecftError(f"{path}: not a readable parquet file ({first_line(exc)}).") from None
    for batch in batches:
        check_cells(dict(zip(batch.schema.names, batch.columns, strict=True)), str(path), done)
        done += batch.num_rows
        yield from batch.to_pylist()


READERS = {".jsonl": jsonl_rows, ".json": json_rows, ".csv": csv_rows}


def file_rows(path: Path, where: str) -> Iterator[dict[str, Any]]:
    """The rows of a local data file that `path_kind` found to be a regular file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from parquet_rows(path)
        return
    if suffix not in READERS:
        raise PecftError(
            f"{where}: {path} has an unknown extension '{short_text(suffix, 40)}'; use .jsonl, "
            ".json, .csv or .parquet."
        )
    with path.open("rb") as handle:
        yield from READERS[suffix](handle, path)


def missing_file(path: Path, where: str) -> PecftError:
    return PecftError(
        f"{where}: data file {path} does not exist. Give a .jsonl, .json, .csv or .parquet "
        "file, or a `datasets.save_to_disk` folder (relative paths are taken from the "
        "recipe's folder)."
    )


def check_cells(columns: dict[str, Any], where: str, before: int = 0) -> None:
    """Refuse a text or bytes cell longer than MAX_ROW_BYTES, naming its row and field; the
    lengths are read from Arrow's offsets, so no cell is copied to check it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = (
        pa.types.is_string,
        pa.types.is_large_string,
        pa.types.is_binary,
        pa.types.is_large_binary,
    )
    for name, column in columns.items():
        if not any(kind(column.type) for kind in text):
            continue
        lengths = pc.binary_length(column)
        over = pc.greater(lengths, MAX_ROW_BYTES)
        if pc.any(over).as_py():
            row = pc.index(over, True).as_py()
            size = lengths[row].as_py()
            raise PecftError(
                f"{where}, row {before + row + 1}: the field '{name}' holds {size:,} bytes, more "
                f"than pecft reads as one row ({MAX_ROW_BYTES:,}); remove the row or shorten the "
                "field."
            )
