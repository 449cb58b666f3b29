"""A generated LIS + PACS extract with Swedish-shaped identifiers, for demos, tests and benchmarks.

Every person has a valid personnummer (real date, Luhn digit) or, for some, a samordningsnummer;
names are common Swedish names. Nothing here is a real person.
"""

from __future__ import annotations

import numpy as np
import polars as pl

FIRST = ["Anna", "Eva", "Maria", "Karin", "Sara", "Åsa", "Lars", "Karl", "Erik", "Per", "Johan", "Örjan", "Björn"]
LAST = ["Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "Öberg", "Ström", "Åberg", "Lindqvist"]
DIAGNOSES = [("C50.9", "breast"), ("C34.1", "lung"), ("I21.4", "heart"), ("J18.9", "lung"), ("M17.1", "knee"),
             ("S72.0", "hip"), ("C61", "prostate"), ("K35.8", "abdomen"), ("G35", "brain"), ("C71.9", "brain")]
MODALITIES = ["CT", "MR", "CR", "US", "PT", "MG"]


def _personnummer_many(birth_days: np.ndarray, serials: np.ndarray, coordination: np.ndarray) -> pl.Series:
    """YYYYMMDD-SSSC for each person: the birth date (day + 60 for a samordningsnummer), a serial and the Luhn
    digit over YYMMDDSSS (numpy digits, strings built by Polars)."""
    births = pl.Series(np.datetime64("1930-01-01") + birth_days * np.timedelta64(1, "D"))
    year = births.dt.year().to_numpy().astype(np.int64)
    month = births.dt.month().to_numpy().astype(np.int64)
    day = births.dt.day().to_numpy().astype(np.int64) + np.where(coordination, 60, 0)
    serials = serials.astype(np.int64)
    digits = [(year % 100) // 10, year % 10, month // 10, month % 10, day // 10, day % 10,
              serials // 100, (serials // 10) % 10, serials % 10]
    total = np.zeros(len(serials), dtype=np.int64)
    for i, d in enumerate(digits):
        d = d * (2 if i % 2 == 0 else 1)
        total += np.where(d > 9, d - 9, d)
    luhn = (10 - total % 10) % 10

    def padded(values: np.ndarray, width: int) -> pl.Expr:
        return pl.lit(pl.Series(values)).cast(pl.String).str.zfill(width)

    return pl.select(pl.concat_str([padded(year, 4), padded(month, 2), padded(day, 2), pl.lit("-"),
                                    padded(serials, 3), padded(luhn, 1)])).to_series()


BIRTH_DAYS = 31_000  # births 1930-01-01 .. 2014-11: everyone is born before the first request (2016)


def extract(rows: int, *, people: int | None = None, seed: int = 7, rare_groups: bool = False) -> pl.DataFrame:
    """`rows` examinations of `people` persons (default rows // 4). With `rare_groups`, a handful of
    (diagnosis, site, year) combinations occur fewer than 11 times, as in any real extract.
    Columnar throughout: values repeat (people, days, postal codes), so each distinct text is made once and
    gathered."""
    rng = np.random.default_rng(seed)
    people = people or max(rows // 4, 1)
    birth_days = rng.integers(0, BIRTH_DAYS, people)
    pins = _personnummer_many(birth_days, rng.integers(0, 1000, people), rng.random(people) < 0.03)
    names = (pl.Series(FIRST).gather(rng.integers(0, 1000, people) % len(FIRST)) + " "
             + pl.Series(LAST).gather(rng.integers(0, 1000, people) % len(LAST)))
    who = rng.integers(0, people, rows)
    diagnosis = rng.integers(0, len(DIAGNOSES), rows)
    texts = ["Frågeställning: tumör?", "Kontroll efter op.", "Smärta, trauma.", ""]

    def pick(values: list[str] | pl.Series, index: np.ndarray) -> pl.Series:  # strings by index, no numpy strings
        return pl.Series(values, dtype=pl.String).gather(index)

    def dates(first: str, days: int) -> pl.Series:  # every day's text once
        return pl.Series(np.datetime64(first) + np.arange(days) * np.timedelta64(1, "D")).cast(pl.String)

    birth_of = birth_days[who]
    sex = rng.integers(0, 2, rows)
    modality = rng.integers(0, len(MODALITIES), rows)
    requested = rng.integers(0, 365 * 8, rows)  # 2016-2023
    postal, tail = rng.integers(100, 990, rows), rng.integers(0, 100, rows)
    referral = rng.integers(0, len(texts), rows)
    code = pl.int_range(0, 890 * 100)  # every postal code "ddd dd" once
    codes = pl.select(pl.format("{} {}", code // 100 + 100, (code % 100).cast(pl.String).str.zfill(2))).to_series()
    # age at the request, in whole years: days from 1930-01-01 to 2016-01-01 plus the request's day
    start = (np.datetime64("2016-01-01") - np.datetime64("1930-01-01")).astype(np.int64)
    age = (start + requested - birth_of) // 365
    frame = pl.DataFrame({
        "pin": pick(pins, who), "patient_name": pick(names, who),
        "birth_date": pick(dates("1930-01-01", BIRTH_DAYS), birth_of),
        "sex": pick(["F", "M"], sex),
        "diagnosis": pick([d for d, _ in DIAGNOSES], diagnosis),
        "anatomical_site": pick([s for _, s in DIAGNOSES], diagnosis),
        "modality": pick(MODALITIES, modality),
        "request_date": pick(dates("2016-01-01", 365 * 8), requested),
        "postal_code": codes.gather((postal - 100) * 100 + tail),
        "referral_text": pick(texts, referral),
        "age": pl.Series(age).cast(pl.String),
    })
    if rare_groups:
        frame = frame.with_columns(
            pl.when(pl.int_range(pl.len()) < 4).then(pl.lit("Q21.1")).otherwise(pl.col("diagnosis")).alias("diagnosis"),
            pl.when(pl.int_range(pl.len()) < 4).then(pl.lit("heart")).otherwise(pl.col("anatomical_site"))
            .alias("anatomical_site"))
    return frame
