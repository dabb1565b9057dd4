"""Build the "atlas" task stream: eight lookups about places, languages and scripts.

The second benchmark stream. Every task reads the same two-line prompt, an entity and the
question asked of it ("Country: France" / "ISO 3166 alpha-2 code: "), and three of them answer
with the same kind of code, so the tasks interfere the way a stream of one domain does. Every
record comes from an installable package (pycountry, pytz) and can be rebuilt byte for byte from
the recorded source versions. Run: python recipes/data/build_atlas.py [--out DIR]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pycountry
import pytz

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_quickstart import (  # noqa: E402
    Record,
    Split,
    drop_ambiguous,
    run_builder,
    shuffled,
    split_eval_first,
    write_stream,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "atlas"
BUILT_BY = "recipes/data/build_atlas.py"
EVAL = 32
TRAIN = 160

# The first part of a country's first IANA time zone, as the region a person would name.
REGIONS = {
    "Africa": "africa",
    "America": "america",
    "Asia": "asia",
    "Atlantic": "atlantic",
    "Europe": "europe",
    "Indian": "indian ocean",
    "Pacific": "pacific",
}
LANGUAGE_STATUS = {"L": "living", "E": "extinct", "H": "historical", "C": "constructed"}
STATUS_EVAL_PER_CLASS = 8
STATUS_TRAIN_PER_CLASS = 30
SUBDIVISION_TYPES = ("Province", "Region", "State")


def split(records: list[Record], input_field: str, sort_key: str) -> Split:
    """Unique inputs only, EVAL records for eval and at most TRAIN for training."""
    train, eval_ = split_eval_first(drop_ambiguous(records, input_field), sort_key, EVAL)
    return train[:TRAIN], eval_


def only(records: list[Record], *fields: str) -> list[Record]:
    """The records with just these fields: helper keys used for sorting are not data."""
    return [{field: r[field] for field in fields} for r in records]


def country_name(alpha_2: str) -> str:
    """A country's common name where pycountry has one, else its name."""
    country = pycountry.countries.get(alpha_2=alpha_2)
    return getattr(country, "common_name", country.name)


def first_zone(alpha_2: str) -> str:
    """The country's first time zone in the IANA table (its main one for most countries)."""
    return pytz.country_timezones[alpha_2][0]


def country_alpha2() -> Split:
    """Country name -> ISO 3166-1 alpha-2 code."""
    records = [{"country": country_name(c.alpha_2), "code": c.alpha_2} for c in pycountry.countries]
    return split(records, "country", "code")


def language_alpha3() -> Split:
    """Language name -> ISO 639-3 code, for the languages that also have a two-letter code."""
    records = [
        {"language": lang.name, "code": lang.alpha_3}
        for lang in pycountry.languages
        if hasattr(lang, "alpha_2")
    ]
    return split(records, "language", "code")


def country_region() -> Split:
    """Country name -> the region of its first time zone (one of seven)."""
    records = []
    for alpha_2 in sorted(pytz.country_timezones):
        region = REGIONS.get(first_zone(alpha_2).split("/")[0])
        if region is not None and pycountry.countries.get(alpha_2=alpha_2) is not None:
            records.append({"country": country_name(alpha_2), "code": alpha_2, "region": region})
    train, eval_ = split(records, "country", "code")
    return only(train, "country", "region"), only(eval_, "country", "region")


def script_code() -> Split:
    """Writing system name -> ISO 15924 four-letter code."""
    records = [{"script": s.name, "code": s.alpha_4} for s in pycountry.scripts]
    return split(records, "script", "code")


def timezone_country() -> Split:
    """IANA time zone -> ISO 3166-1 alpha-2 code of its country."""
    records = [
        {"zone": zone, "code": alpha_2}
        for alpha_2, zones in sorted(pytz.country_timezones.items())
        for zone in zones
    ]
    return split(records, "zone", "zone")


def language_status() -> Split:
    """Language name -> living, extinct, historical or constructed, balanced per class."""
    by_class: dict[str, list[Record]] = {status: [] for status in LANGUAGE_STATUS.values()}
    for lang in pycountry.languages:
        status = LANGUAGE_STATUS.get(lang.type)
        if status is not None:
            by_class[status].append({"language": lang.name, "status": status, "id": lang.alpha_3})
    train: list[Record] = []
    eval_: list[Record] = []
    for records in by_class.values():
        ordered = shuffled(drop_ambiguous(records, "language"), "id")
        eval_ += ordered[:STATUS_EVAL_PER_CLASS]
        train += ordered[STATUS_EVAL_PER_CLASS : STATUS_EVAL_PER_CLASS + STATUS_TRAIN_PER_CLASS]
    fields = ("language", "status")
    return only(shuffled(train, "id"), *fields), only(shuffled(eval_, "id"), *fields)


def country_zone_city() -> Split:
    """Country name -> the city that names its first time zone (often the capital)."""
    records = []
    for alpha_2 in sorted(pytz.country_timezones):
        if pycountry.countries.get(alpha_2=alpha_2) is None:
            continue
        city = first_zone(alpha_2).split("/")[-1].replace("_", " ")
        records.append({"country": country_name(alpha_2), "city": city})
    return split(records, "country", "country")


def subdivision_country() -> Split:
    """Name of a province, region or state -> the alpha-2 code of its country."""
    records = [
        {"subdivision": s.name, "code": s.country_code}
        for s in sorted(pycountry.subdivisions, key=lambda s: s.code)
        if s.parent_code is None and s.type in SUBDIVISION_TYPES
    ]
    return split(records, "subdivision", "subdivision")


TASKS: dict[str, Callable[[], Split]] = {
    "country_alpha2": country_alpha2,
    "language_alpha3": language_alpha3,
    "country_region": country_region,
    "script_code": script_code,
    "timezone_country": timezone_country,
    "language_status": language_status,
    "country_zone_city": country_zone_city,
    "subdivision_country": subdivision_country,
}


def build(out: Path) -> dict:
    """The atlas stream under out."""
    sources = {"pycountry": version("pycountry"), "pytz": version("pytz")}
    return write_stream(out, BUILT_BY, sources, TASKS)


def main(argv: list[str] | None = None) -> None:
    run_builder(argv, __doc__, DEFAULT_OUT, build)


if __name__ == "__main__":
    main()
