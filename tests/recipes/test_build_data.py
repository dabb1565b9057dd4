"""The committed benchmark data must be exactly what recipes/data/build_<stream>.py builds."""

from __future__ import annotations

import importlib.util
import json
import unicodedata
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "recipes" / "data"
STREAMS = ("quickstart", "atlas", "blind")


def manifest(stream: str) -> dict:
    return json.loads((DATA / stream / "manifest.json").read_text(encoding="utf-8"))


def load_script(stream: str) -> ModuleType:
    """Import the build script by path: recipes/ is not a package."""
    spec = importlib.util.spec_from_file_location(f"build_{stream}", DATA / f"build_{stream}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def files_under(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes for every file under root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def installed(source: str) -> str | None:
    if source == "unicodedata":
        return unicodedata.unidata_version
    try:
        return version(source)
    except PackageNotFoundError:
        return None


@pytest.mark.parametrize("stream", STREAMS)
def test_rebuild_is_byte_identical(stream: str, tmp_path: Path) -> None:
    # The data is a function of the source versions; another pycountry, pytz or Unicode
    # database legitimately gives other bytes, so only compare like with like.
    sources = manifest(stream)["sources"]
    have = {source: installed(source) for source in sources}
    if have != sources:
        pytest.skip(f"data built from {sources}, installed {have}")
    load_script(stream).main(["--out", str(tmp_path)])
    built = files_under(tmp_path)
    committed = files_under(DATA / stream)
    assert sorted(built) == sorted(committed)
    for name, data in committed.items():
        assert built[name] == data, name


@pytest.mark.parametrize(
    "stream, task", [(s, t) for s in STREAMS for t in sorted(manifest(s)["tasks"])]
)
def test_committed_splits_are_disjoint_and_complete(stream: str, task: str) -> None:
    info = manifest(stream)["tasks"][task]
    input_field = info["fields"][0]
    train = read_jsonl(DATA / stream / task / "train.jsonl")
    eval_ = read_jsonl(DATA / stream / task / "eval.jsonl")
    assert (len(train), len(eval_)) == (info["train"], info["eval"])
    for record in train + eval_:
        assert list(record) == info["fields"]
        assert all(isinstance(v, str) and v for v in record.values()), record
    train_inputs = {r[input_field] for r in train}
    eval_inputs = {r[input_field] for r in eval_}
    assert len(train_inputs) == len(train) and len(eval_inputs) == len(eval_)
    assert not train_inputs & eval_inputs
