"""A generated LIS + PACS extract with Swedish-shaped identifiers, for demos, tests and benchmarks.

Every person has a valid personnummer (real date, Luhn digit) or, for some, a samordningsnummer;
names are common Swedish names. Nothing here is a real person.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

FIRST = ["Anna", "Eva", "Maria", "Karin", "Sara", "Åsa", "Lars", "Karl", "Erik", "Per", "Johan", "Örjan", "Björn"]
LAST = ["Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "Öberg", "Ström", "Åberg", "Lindqvist"]
DIAGNOSES = [("C50.9", "breast"), ("C34.1", "lung"), ("I21.4", "heart"), ("J18.9", "lung"), ("M17.1", "knee"),
             ("S72.0", "hip"), ("C61", "prostate"), ("K35.8", "abdomen"), ("G35", "brain"), ("C71.9", "brain")]
MODALITIES = ["CT", "MR", "CR", "US", "PT", "MG"]


def _luhn_digit(nine: str) -> int:
    total = 0
    for i, ch in enumerate(nine):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return (10 - total % 10) % 10


def personnummer(birth: dt.date, serial: int, *, coordination: bool = False) -> str:
    day = birth.day + (60 if coordination else 0)
    nine = f"{birth:%y%m}{day:02d}{serial:03d}"
    return f"{birth:%Y%m}{day:02d}-{serial:03d}{_luhn_digit(nine)}"


def extract(rows: int, *, people: int | None = None, seed: int = 7, rare_groups: bool = False) -> pl.DataFrame:
    """`rows` examinations of `people` persons (default rows // 4). With `rare_groups`, a handful of
    (diagnosis, site, year) combinations occur fewer than 11 times, as in any real extract."""
    rng = np.random.default_rng(seed)
    people = people or max(rows // 4, 1)
    birth_days = rng.integers(0, 33000, people)
    births = [dt.date(1930, 1, 1) + dt.timedelta(days=int(d)) for d in birth_days]
    pins = [personnummer(b, int(s), coordination=bool(c)) for b, s, c in
            zip(births, rng.integers(0, 1000, people), rng.random(people) < 0.03, strict=True)]
    names = [f"{FIRST[i % len(FIRST)]} {LAST[j % len(LAST)]}" for i, j in
             zip(rng.integers(0, 1000, people), rng.integers(0, 1000, people), strict=True)]
    who = rng.integers(0, people, rows)
    diagnosis = rng.integers(0, len(DIAGNOSES), rows)
    day = np.timedelta64(1, "D")
    texts = ["Frågeställning: tumör?", "Kontroll efter op.", "Smärta, trauma.", ""]

    def pick(values: list[str], index: np.ndarray) -> pl.Series:  # strings by index, without numpy strings
        return pl.Series(values, dtype=pl.String).gather(index)

    frame = pl.DataFrame({
        "pin": pick(pins, who), "patient_name": pick(names, who),
        "birth_date": np.datetime64("1930-01-01") + birth_days[who] * day,
        "sex": pick(["F", "M"], rng.integers(0, 2, rows)),
        "diagnosis": pick([d for d, _ in DIAGNOSES], diagnosis),
        "anatomical_site": pick([s for _, s in DIAGNOSES], diagnosis),
        "modality": pick(MODALITIES, rng.integers(0, len(MODALITIES), rows)),
        "request_date": np.datetime64("2016-01-01") + rng.integers(0, 365 * 8, rows) * day,  # 2016-2023
        "postal_code": rng.integers(100, 990, rows), "postal_tail": rng.integers(0, 100, rows),
        "referral_text": pick(texts, rng.integers(0, len(texts), rows)),
    }).with_columns(
        pl.format("{} {}", pl.col("postal_code"), pl.col("postal_tail").cast(pl.String).str.zfill(2))
        .alias("postal_code"),
        # age at the request, in whole years
        ((pl.col("request_date") - pl.col("birth_date")).dt.total_days() // 365).cast(pl.String).alias("age"),
    ).drop("postal_tail").with_columns(pl.col("birth_date", "request_date").cast(pl.String))
    if rare_groups:
        frame = frame.with_columns(
            pl.when(pl.int_range(pl.len()) < 4).then(pl.lit("Q21.1")).otherwise(pl.col("diagnosis")).alias("diagnosis"),
            pl.when(pl.int_range(pl.len()) < 4).then(pl.lit("heart")).otherwise(pl.col("anatomical_site"))
            .alias("anatomical_site"))
    return frame
