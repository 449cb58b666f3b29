"""Base classes and types for API bodies and parameters: unknown fields are refused, not silently
dropped, and what a client sends is taken as sent."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from annotated_types import Ge, Le
from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict, field_validator


def has_nul(value: object) -> bool:
    """PostgreSQL text cannot hold U+0000; such input is refused instead of failing in the driver."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return any(has_nul(v) for v in value)
    return False


class Body(BaseModel):
    # Strict: JSON types are taken as sent. `false` is not the number 0, `0` is not false, "5" is not 5.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        if has_nul(value):
            raise ValueError("text may not contain NUL characters")
        return value


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# Every integer a client sends is stored in or compared with a database column; one out of the
# column's range must be refused as invalid input (422), not reach the driver and end in a 500. Use
# Int64 for every int path, query and body field, Int32 where the column is a 32-bit INTEGER (version,
# part and image numbers); tests/test_input_errors.py checks that no route takes a bare int.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
Int64 = Annotated[int, Ge(INT64_MIN), Le(INT64_MAX)]
Int32 = Annotated[int, Ge(INT32_MIN), Le(INT32_MAX)]


def _date_text(value: object) -> object:
    # Pydantic would read a number as seconds since 1970: `"end_date": 0` must be refused, not 1970-01-01.
    if not isinstance(value, str | dt.date):
        raise ValueError("a date is written YYYY-MM-DD")
    return value


IsoDate = Annotated[dt.date, Strict(False), BeforeValidator(_date_text)]  # text to date, but only text
