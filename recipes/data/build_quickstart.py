"""Build the "quickstart" task stream: small, real lookup tasks for continual LoRA runs.

Every record comes from an installable package (pycountry) or the standard library
(unicodedata), so the data is real and can be rebuilt byte for byte from the recorded
source versions. Run: python recipes/data/build_quickstart.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import unicodedata
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from importlib.metadata import version
from pathlib import Path

import pycountry

SEED = 20240601
DEFAULT_OUT = Path(__file__).resolve().parent / "quickstart"
BUILT_BY = "recipes/data/build_quickstart.py"

Record = dict[str, str]
Split = tuple[list[Record], list[Record]]

# Currency names with these markers are funds, units of account or reserved codes,
# not money a person would name.
CURRENCY_NAME_MARKERS = ("Fund", "Unit", "Code", "(")

UNICODE_RANGES = (
    (0x0021, 0x007E),
    (0x00A1, 0x024F),
    (0x0370, 0x03FF),
    (0x0400, 0x04FF),
    (0x2000, 0x206F),
    (0x20A0, 0x20CF),
    (0x2190, 0x21FF),
    (0x2200, 0x22FF),
    (0x0300, 0x036F),
    (0x0660, 0x0669),
    (0x2150, 0x218F),
)
COARSE_CATEGORY = {
    "L": "letter",
    "M": "mark",
    "N": "number",
    "P": "punctuation",
    "S": "symbol",
}
UNICODE_TRAIN_PER_CLASS = 60
UNICODE_EVAL_PER_CLASS = 12

# Blocks rich in characters that carry a numeric value: ASCII and Arabic-Indic digits,
# superscripts, number forms (fractions, Roman numerals), circled and dingbat numbers.
NUMERIC_RANGES = (
    (0x0030, 0x0039),
    (0x00B2, 0x00BE),
    (0x0660, 0x0669),
    (0x0966, 0x096F),
    (0x2070, 0x2089),
    (0x2150, 0x218B),
    (0x2460, 0x24FF),
    (0x2776, 0x2793),
    (0x3251, 0x325F),
    (0x32B1, 0x32BF),
)
NUMERIC_EVAL = 40

# Alphabets with case: Latin (with its extensions), Greek, Cyrillic, Armenian.
CASED_RANGES = (
    (0x0041, 0x005A),
    (0x00C0, 0x024F),
    (0x0370, 0x03FF),
    (0x0400, 0x052F),
    (0x0531, 0x0556),
    (0x1E00, 0x1EFF),
)
LOWERCASE_TRAIN = 240
LOWERCASE_EVAL = 50


def drop_ambiguous(records: list[Record], input_field: str) -> list[Record]:
    """Drop records whose input occurs more than once: one input must have one answer."""
    counts = Counter(r[input_field] for r in records)
    return [r for r in records if counts[r[input_field]] == 1]


def shuffled(records: list[Record], sort_key: str) -> list[Record]:
    """Sort by a unique stable key, then shuffle with a fixed seed, so the order is reproducible."""
    ordered = sorted(records, key=lambda r: r[sort_key])
    random.Random(SEED).shuffle(ordered)
    return ordered


def split_eval_first(records: list[Record], sort_key: str, n_eval: int) -> Split:
    """Deterministic split: the first n_eval shuffled records are eval, the rest train."""
    ordered = shuffled(records, sort_key)
    return ordered[n_eval:], ordered[:n_eval]


def currency_code() -> Split:
    """Currency name -> ISO 4217 code, minus X-codes (funds, metals, tests) and fund-like names."""
    records = [
        {"currency": c.name, "code": c.alpha_3}
        for c in pycountry.currencies
        if not c.alpha_3.startswith("X")
        and not any(marker in c.name for marker in CURRENCY_NAME_MARKERS)
    ]
    return split_eval_first(drop_ambiguous(records, "currency"), "code", 40)


def country_code() -> Split:
    """Country name (common name where pycountry has one) -> ISO 3166-1 alpha-3 code."""
    records = [
        {"country": getattr(c, "common_name", c.name), "code": c.alpha_3}
        for c in pycountry.countries
    ]
    return split_eval_first(drop_ambiguous(records, "country"), "code", 50)


def language_code() -> Split:
    """Language name -> ISO 639-1 code, for the languages that have one."""
    records = [
        {"language": lang.name, "code": lang.alpha_2}
        for lang in pycountry.languages
        if hasattr(lang, "alpha_2")
    ]
    return split_eval_first(drop_ambiguous(records, "language"), "code", 40)


def unicode_category() -> Split:
    """Character -> coarse general category, balanced per class so no class dominates."""
    by_class: dict[str, list[Record]] = {name: [] for name in COARSE_CATEGORY.values()}
    for start, end in sorted(UNICODE_RANGES):
        for cp in range(start, end + 1):
            ch = chr(cp)
            coarse = COARSE_CATEGORY.get(unicodedata.category(ch)[0])
            if coarse is None:
                continue
            by_class[coarse].append(
                {
                    "char": ch,
                    "codepoint": f"U+{cp:04X}",
                    "name": unicodedata.name(ch),
                    "category": coarse,
                }
            )
    train: list[Record] = []
    eval_: list[Record] = []
    for records in by_class.values():
        ordered = shuffled(records, "codepoint")
        eval_ += ordered[:UNICODE_EVAL_PER_CLASS]
        train += ordered[UNICODE_EVAL_PER_CLASS : UNICODE_EVAL_PER_CLASS + UNICODE_TRAIN_PER_CLASS]
    return shuffled(train, "codepoint"), shuffled(eval_, "codepoint")


def char_record(ch: str) -> Record:
    """The fields every Unicode task shares: the character, its code point and its name."""
    return {"char": ch, "codepoint": f"U+{ord(ch):04X}", "name": unicodedata.name(ch)}


def numeric_value() -> Split:
    """Character -> its numeric value, written as an integer or a fraction such as 3/4."""
    records = []
    for start, end in NUMERIC_RANGES:
        for cp in range(start, end + 1):
            value = unicodedata.numeric(chr(cp), None)
            if value is None:
                continue
            fraction = Fraction(value).limit_denominator(1000)
            records.append({**char_record(chr(cp)), "value": str(fraction)})
    return split_eval_first(records, "codepoint", NUMERIC_EVAL)


def lowercase() -> Split:
    """Capital letter -> its lowercase form, where that is one other character."""
    records = []
    for start, end in CASED_RANGES:
        for cp in range(start, end + 1):
            ch = chr(cp)
            if unicodedata.category(ch) == "Lu" and len(ch.lower()) == 1 and ch.lower() != ch:
                records.append({**char_record(ch), "lowercase": ch.lower()})
    train, eval_ = split_eval_first(records, "codepoint", LOWERCASE_EVAL)
    return train[:LOWERCASE_TRAIN], eval_


TASKS: dict[str, Callable[[], Split]] = {
    "currency_code": currency_code,
    "country_code": country_code,
    "language_code": language_code,
    "unicode_category": unicode_category,
    "numeric_value": numeric_value,
    "lowercase": lowercase,
}


def write_jsonl(path: Path, records: list[Record]) -> None:
    """One JSON object per line, UTF-8, keys in record order, trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.write_text(text, encoding="utf-8", newline="\n")


def write_stream(
    out: Path, built_by: str, sources: dict[str, str], tasks: dict[str, Callable[[], Split]]
) -> dict:
    """Write every task's train/eval files and the manifest under out; return the manifest."""
    manifest: dict = {"built_by": built_by, "sources": sources, "tasks": {}}
    for task, make in tasks.items():
        train, eval_ = make()
        write_jsonl(out / task / "train.jsonl", train)
        write_jsonl(out / task / "eval.jsonl", eval_)
        manifest["tasks"][task] = {
            "train": len(train),
            "eval": len(eval_),
            "fields": list(train[0]),
        }
    text = json.dumps(manifest, ensure_ascii=False, indent=2) + "\n"
    (out / "manifest.json").write_text(text, encoding="utf-8", newline="\n")
    return manifest


def build(out: Path) -> dict:
    """The quickstart stream under out."""
    sources = {"pycountry": version("pycountry"), "unicodedata": unicodedata.unidata_version}
    return write_stream(out, BUILT_BY, sources, TASKS)


def run_builder(
    argv: list[str] | None, doc: str, default_out: Path, make: Callable[[Path], dict]
) -> None:
    """Command-line entry point of a stream's build script."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out, help="output folder")
    args = parser.parse_args(argv)
    for task, info in make(args.out)["tasks"].items():
        print(f"{task}: train={info['train']} eval={info['eval']}")


def main(argv: list[str] | None = None) -> None:
    run_builder(argv, __doc__, DEFAULT_OUT, build)


if __name__ == "__main__":
    main()
