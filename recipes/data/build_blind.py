"""Build the "blind" task stream: five lookups behind one template; the input alone names the task.

Every task reads the same prompt, "Input: <entity>" / "Output: ", with the same field names: a
country, a language, a writing system, a province or a currency, and its code. Nothing in the
wording says which lookup is asked; only what the input is does. The codes look alike (three
capitals for countries and currencies, three small letters for languages, four letters for
scripts, two capitals for the country a province lies in), so a later task overwrites what an
earlier one taught. Every record comes from pycountry and can be rebuilt byte for byte from the
recorded source version. Run: python recipes/data/build_blind.py [--out DIR]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pycountry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_quickstart import (  # noqa: E402
    CURRENCY_NAME_MARKERS,
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
SUBDIVISION_TYPES = ("Province", "Region", "State")


def split(pairs: list[tuple[str, str]], sort_key: str = "output") -> Split:
    """Unique inputs only, EVAL records for eval and at most TRAIN for training; every record
    has the same two fields, so one template reads every task."""
    records: list[Record] = [{"input": entity, "output": code} for entity, code in pairs]
    train, eval_ = split_eval_first(drop_ambiguous(records, "input"), sort_key, EVAL)
    return train[:TRAIN], eval_


def country_alpha3() -> Split:
    """Country name (common name where pycountry has one) -> ISO 3166-1 alpha-3 code."""
    return split([(getattr(c, "common_name", c.name), c.alpha_3) for c in pycountry.countries])


def language_alpha3() -> Split:
    """Language name -> ISO 639-3 code, for the languages that also have a two-letter code
    (the widely spoken ones a model may know)."""
    pairs = [(lang.name, lang.alpha_3) for lang in pycountry.languages if hasattr(lang, "alpha_2")]
    return split(pairs)


def script_code() -> Split:
    """Writing system name -> ISO 15924 four-letter code."""
    return split([(s.name, s.alpha_4) for s in pycountry.scripts])


def subdivision_country() -> Split:
    """Name of a province, region or state -> the alpha-2 code of its country."""
    pairs = [
        (s.name, s.country_code)
        for s in sorted(pycountry.subdivisions, key=lambda s: s.code)
        if s.parent_code is None and s.type in SUBDIVISION_TYPES
    ]
    return split(pairs, sort_key="input")


def currency_code() -> Split:
    """Currency name -> ISO 4217 code, minus X-codes (funds, metals, tests) and fund-like names."""
    pairs = [
        (c.name, c.alpha_3)
        for c in pycountry.currencies
        if not c.alpha_3.startswith("X")
        and not any(marker in c.name for marker in CURRENCY_NAME_MARKERS)
    ]
    return split(pairs)


TASKS: dict[str, Callable[[], Split]] = {
    "country_alpha3": country_alpha3,
    "language_alpha3": language_alpha3,
    "script_code": script_code,
    "subdivision_country": subdivision_country,
    "currency_code": currency_code,
}


def build(out: Path) -> dict:
    """The blind stream under out."""
    return write_stream(out, BUILT_BY, {"pycountry": version("pycountry")}, TASKS)


def main(argv: list[str] | None = None) -> None:
    run_builder(argv, __doc__, DEFAULT_OUT, build)


if __name__ == "__main__":
    main()
