"""Reading local data files: what a path is before anything opens it, and every format read as a
stream of rows, each within a bound, errors named by file and line."""

import json
import os
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pecft_cli.data import files
from pecft_cli.data.read import read_local
from pecft_cli.errors import PecftError


@pytest.fixture
def deadline() -> Iterator[None]:
    """Fail, rather than hang, if a test blocks (as opening a FIFO for reading would)."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError("blocked for 20 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_every_kind_of_path_is_named_without_opening_it(tmp_path: Path, deadline: None) -> None:
    (tmp_path / "rows.jsonl").write_text("{}\n")
    os.mkfifo(tmp_path / "pipe.jsonl")
    (tmp_path / "loop.jsonl").symlink_to(tmp_path / "loop2.jsonl")
    (tmp_path / "loop2.jsonl").symlink_to(tmp_path / "loop.jsonl")
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "gone.jsonl")
    short = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))  # a socket path has 108 bytes at most
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(short / "sock.jsonl"))
    try:
        kinds = {
            "rows.jsonl": "file",
            ".": "folder",
            "nothing.jsonl": "missing",
            "pipe.jsonl": "a named pipe (FIFO)",
            "loop.jsonl": "a loop of symbolic links",
            "dangling.jsonl": "a symbolic link to a path that does not exist",
            str(short / "sock.jsonl"): "a socket",
            "/dev/zero": "a character device",
        }
        for name, kind in kinds.items():
            assert files.path_kind(tmp_path / name) == kind, name
        for name in ("pipe.jsonl", "loop.jsonl", "/dev/zero", str(short / "sock.jsonl")):
            with pytest.raises(PecftError) as caught:
                read_local(tmp_path / name, "t")
            assert f"is {kinds[name]}, not a data file or folder" in str(caught.value)
    finally:
        listener.close()
        (short / "sock.jsonl").unlink()
        short.rmdir()


ROWS = [
    {"q": 'a "quoted" [bracket] {brace}', "a": ["x", {"y": 1.5}], "n": -12e3},
    {"q": "naïve \\ back\\slash\n", "a": [], "n": 0},
    {"q": "日本語 " * 50, "a": {"deep": [[["z"]]]}, "n": 123456789012345},
] * 20


def test_a_json_list_streams_in_small_pieces_to_what_json_reads_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "CHUNK", 7)
    path = tmp_path / "rows.json"
    for text in (json.dumps(ROWS), json.dumps(ROWS, indent=3), "[]", " [ ] \n"):
        path.write_text(text, encoding="utf-8")
        assert read_local(path, "t") == json.loads(text)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[{"q": "x"},\n {"q": ', "rows.json, line 2: not valid JSON"),
        ('[{"q": "x"}]\n\n[]', "rows.json, line 3: not valid JSON (extra data after the list)"),
        ('[{"q": "x"} {"q": "y"}]', "line 1: not valid JSON (Expecting ',' delimiter)"),
        ('[{"q": "x"}, 3]', "must hold a list of objects"),
        ('{"q": "x"}', "must hold a list of objects"),
        ('[{"q": "x"},\n\n' + '{"q": "' + "y" * 5000 + '"}]', "line 3: the row is longer than"),
    ],
)
def test_a_broken_json_list_is_named_by_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, expected: str
) -> None:
    monkeypatch.setattr(files, "CHUNK", 16)
    monkeypatch.setattr(files, "MAX_ROW_BYTES", 1000)
    (tmp_path / "rows.json").write_text(content)
    with pytest.raises(PecftError) as caught:
        read_local(tmp_path / "rows.json", "t")
    assert expected in str(caught.value)
    assert len(str(caught.value)) < 500


def test_a_row_over_the_bound_is_refused_by_its_line_in_every_text_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "MAX_ROW_BYTES", 1000)
    long = "x" * 5000
    cases = {
        "rows.jsonl": '{"q": "a"}\n{"q": "' + long + '"}\n',
        "rows.csv": "q,a\nx,y\n" + long + ",y\n",
        "quoted.csv": 'q,a\nx,y\n"' + "x\n" * 2500 + '",y\n',  # one record over many lines
    }
    for name, content in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(PecftError) as caught:
            read_local(tmp_path / name, "t")
        message = str(caught.value)
        assert f"{name}, line " in message and "longer than 1,000 bytes" in message, name


def test_bad_bytes_and_a_repeated_csv_column_are_named(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_bytes(b'{"q": "a"}\n{"q": "b"}\n{"q": "caf\xe9"}\n')
    (tmp_path / "bad.json").write_bytes(b'[{"q": "a"},\n{"q": "caf\xe9"}]')
    (tmp_path / "twice.csv").write_text("q,a,q\n1,2,3\n")
    expected = {
        "bad.jsonl": "bad.jsonl, line 3: not UTF-8 text (byte 11 of the line",
        "bad.json": "bad.json: not UTF-8 text (near byte 24",
        "twice.csv": "line 1: the header names the column 'q' more than once",
    }
    for name, text in expected.items():
        with pytest.raises(PecftError) as caught:
            read_local(tmp_path / name, "t")
        assert text in str(caught.value), name
