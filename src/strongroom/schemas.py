"""Base classes and types for API bodies and parameters: unknown fields are refused, not silently
dropped, and what a client sends is taken as sent."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from annotated_types import Ge, Le
from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict


class Body(BaseModel):
    # Strict: JSON types are taken as sent. `false` is not the number 0, `0` is not false, "5" is not 5.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True)


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# Every integer a client sends is stored or compared in a 64-bit database column; a larger one must be
# refused as invalid input (422), not reach the driver and end in a 500. Use these for every int
# path, query and body field; tests/test_input_errors.py checks that no route takes a bare int.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Int64 = Annotated[int, Ge(INT64_MIN), Le(INT64_MAX)]


def _date_text(value: object) -> object:
    # Pydantic would read a number as seconds since 1970: `"end_date": 0` must be refused, not 1970-01-01.
    if not isinstance(value, str | dt.date):
        raise ValueError("a date is written YYYY-MM-DD")
    return value


IsoDate = Annotated[dt.date, Strict(False), BeforeValidator(_date_text)]  # text to date, but only text
