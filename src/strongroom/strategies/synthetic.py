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
    births = [dt.date(1930, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 33000, people)]
    pins = [personnummer(b, int(s), coordination=bool(c)) for b, s, c in
            zip(births, rng.integers(0, 1000, people), rng.random(people) < 0.03, strict=True)]
    names = [f"{FIRST[i % len(FIRST)]} {LAST[j % len(LAST)]}" for i, j in
             zip(rng.integers(0, 1000, people), rng.integers(0, 1000, people), strict=True)]
    who = rng.integers(0, people, rows)
    diagnosis = rng.integers(0, len(DIAGNOSES), rows)
    requested = rng.integers(0, 365 * 8, rows)  # 2016-2023
    frame = pl.DataFrame({
        "pin": np.array(pins)[who], "patient_name": np.array(names)[who],
        "birth_date": np.array([b.isoformat() for b in births])[who],
        "sex": rng.choice(["F", "M"], rows),
        "diagnosis": np.array([d for d, _ in DIAGNOSES])[diagnosis],
        "anatomical_site": np.array([s for _, s in DIAGNOSES])[diagnosis],
        "modality": rng.choice(MODALITIES, rows),
        "request_date": [(dt.date(2016, 1, 1) + dt.timedelta(days=int(d))).isoformat() for d in requested],
        "postal_code": [f"{int(p):03d} {int(q):02d}" for p, q in zip(rng.integers(100, 990, rows),
                                                                        rng.integers(0, 100, rows), strict=True)],
        "referral_text": rng.choice(["Frågeställning: tumör?", "Kontroll efter op.", "Smärta, trauma.", ""], rows),
    })
    # age at the request, in whole years
    frame = frame.with_columns(
        ((pl.col("request_date").str.to_date() - pl.col("birth_date").str.to_date()).dt.total_days() // 365)
        .cast(pl.Int64).cast(pl.String).alias("age"))
    if rare_groups:
        frame = frame.with_columns(
            pl.when(pl.int_range(pl.len()) < 4).then(pl.lit("Q21.1")).otherwise(pl.col("diagnosis")).alias("diagnosis"),
            pl.when(pl.int_range(pl.len()) < 4).then(pl.lit("heart")).otherwise(pl.col("anatomical_site"))
            .alias("anatomical_site"))
    return frame
