"""Build the "blind" task stream: five lookups behind one template; the input alone names the task.

Every task reads the same prompt, "Input: <entity>" / "Output: ", with the same field names:
a country, a language, a time zone, a currency or a character, and its code. Nothing in the
wording says which lookup is asked; only what the input is does, and no input belongs to two
tasks. The codes look alike (three capitals for countries and currencies, three small letters
for languages, two capitals for the country of a time zone, two letters for a character's
Unicode category), so a later task overwrites what an earlier one taught. Every record comes
from pycountry, pytz and Python's Unicode database and can be rebuilt byte for byte from the
recorded source versions.
Run: python recipes/data/build_blind.py [--out DIR]
"""

from __future__ import annotations

import sys
import unicodedata
from collections import Counter
from collections.abc import Callable
from functools import partial
from importlib.metadata import version
from pathlib import Path

import pycountry
import pytz

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_quickstart import (  # noqa: E402
    CURRENCY_NAME_MARKERS,
    UNICODE_RANGES,
    Record,
    Split,
    drop_ambiguous,
    run_builder,
    split_eval_first,
    write_stream,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "blind"
BUILT_BY = "recipes/data/build_blind.py"
EVAL = 100  # a score moves in steps of one point
TRAIN = 150


Pairs = list[tuple[str, str]]  # (input, output)


def split(pairs: Pairs, shared: set[str], sort_key: str) -> Split:
    """Unique inputs that no other task has, EVAL records for eval and at most TRAIN for
    training; every record has the same two fields, so one template reads every task."""
    records: list[Record] = [{"input": i, "output": o} for i, o in pairs if i not in shared]
    train, eval_ = split_eval_first(drop_ambiguous(records, "input"), sort_key, EVAL)
    return train[:TRAIN], eval_


def country_alpha3() -> Pairs:
    """Country name (common name where pycountry has one) -> ISO 3166-1 alpha-3 code."""
    return [(getattr(c, "common_name", c.name), c.alpha_3) for c in pycountry.countries]


def language_alpha3() -> Pairs:
    """Language name -> ISO 639-3 code, for the languages that also have a two-letter code
    (the widely spoken ones a model may know)."""
    return [(lang.name, lang.alpha_3) for lang in pycountry.languages if hasattr(lang, "alpha_2")]


def timezone_country() -> Pairs:
    """IANA time zone -> ISO 3166-1 alpha-2 code of its country."""
    return [
        (zone, alpha_2)
        for alpha_2, zones in sorted(pytz.country_timezones.items())
        for zone in zones
    ]


def char_category() -> Pairs:
    """A character -> its two-letter Unicode general category ("Lu", "Nd", "Sm", ...), for
    the visible characters of a few common blocks (no marks, spaces or controls)."""
    hidden = ("M", "Z", "C")
    return [
        (chr(code), unicodedata.category(chr(code)))
        for low, high in UNICODE_RANGES
        for code in range(low, high + 1)
        if not unicodedata.category(chr(code)).startswith(hidden)
    ]


def currency_code() -> Pairs:
    """Currency name -> ISO 4217 code, minus X-codes (funds, metals, tests) and fund-like names."""
    return [
        (c.name, c.alpha_3)
        for c in pycountry.currencies
        if not c.alpha_3.startswith("X")
        and not any(marker in c.name for marker in CURRENCY_NAME_MARKERS)
    ]


# Each task's pairs, and the field its records are shuffled by (a stable key).
TASKS: dict[str, tuple[Callable[[], Pairs], str]] = {
    "country_alpha3": (country_alpha3, "output"),
    "language_alpha3": (language_alpha3, "output"),
    "timezone_country": (timezone_country, "input"),
    "char_category": (char_category, "input"),
    "currency_code": (currency_code, "output"),
}


def build(out: Path) -> dict:
    """The blind stream under out, without any input that two tasks have ("Nauru" is a
    country and a language): such an input cannot say which task is asked."""
    pairs = {name: make() for name, (make, _) in TASKS.items()}
    counts = Counter(i for task in pairs.values() for i in {entity for entity, _ in task})
    shared = {entity for entity, count in counts.items() if count > 1}
    splits: dict[str, Callable[[], Split]] = {
        name: partial(split, pairs[name], shared, key) for name, (_, key) in TASKS.items()
    }
    sources = {
        "pycountry": version("pycountry"),
        "pytz": version("pytz"),
        "unicodedata": unicodedata.unidata_version,
    }
    return write_stream(out, BUILT_BY, sources, splits)


def main(argv: list[str] | None = None) -> None:
    run_builder(argv, __doc__, DEFAULT_OUT, build)


if __name__ == "__main__":
    main()
