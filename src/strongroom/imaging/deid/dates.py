"""Date shifting (Modified Dates option): whole days, per patient."""

from __future__ import annotations

import datetime as _dt
import functools


@functools.lru_cache(maxsize=65536)
def _shift_date(value: str, days: int) -> str | None:
    value = value.strip()
    if len(value) == 10 and value[4] == "." and value[7] == ".":  # ACR-NEMA YYYY.MM.DD
        value = value.replace(".", "")
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        d = _dt.date(int(value[:4]), int(value[4:6]), int(value[6:8])) + _dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


def shift_values(raw: bytes, vr: bytes, days: int) -> bytes | None:
    text = raw.decode("ascii", "replace").rstrip("\0 ")
    if not text:
        return b""
    out = []
    for value in text.split("\\"):
        value = value.strip()
        if not value:
            out.append("")
            continue
        if vr == b"DA":
            if "-" in value:  # range (queries)
                sides = [(_shift_date(s, days) if s else "") for s in value.split("-", 1)]
                if None in sides:
                    return None
                out.append("-".join(s or "" for s in sides))
                continue
            new = _shift_date(value, days)
        else:  # DT: YYYYMMDD[HH[MM[SS[.F]]]][&ZZXX]
            new_date = _shift_date(value[:8], days) if len(value) >= 8 else None
            new = None if new_date is None else new_date + value[8:]
        if new is None:
            return None
        out.append(new)
    return "\\".join(out).encode("ascii")
