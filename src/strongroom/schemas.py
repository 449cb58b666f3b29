"""Base classes and types for API bodies and parameters: unknown fields are refused, not silently
dropped, and what a client sends is taken as sent."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from annotated_types import Ge, Le
from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict, field_validator, model_validator

from .errors import Invalid
from .parsing import WHOLE_NUMBER, whole_number_in


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

    @model_validator(mode="after")
    def _no_nul_in_extra_fields(self) -> Body:  # a model that allows unknown fields (Beacon's) checks them too
        if has_nul(self.model_extra):
            raise ValueError("text may not contain NUL characters")
        return self


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


def whole_number(text: str | bytes, field: str, *, minimum: int = INT32_MIN, maximum: int = INT32_MAX) -> int:
    """A whole number a form field, a header or a path segment carries as text, within the range of the column it
    is stored in or compared with (INTEGER unless the caller says BIGINT), or Invalid naming the field. Never
    ``str.isdigit()`` then ``int()``: isdigit() takes "²", which int() refuses, and says nothing of the size."""
    value = (text.decode("latin-1") if isinstance(text, bytes) else text).strip()
    if not WHOLE_NUMBER.fullmatch(value):
        raise Invalid(f"{field}: should be a whole number")
    number = whole_number_in(value, minimum, maximum)  # the one rule (``parsing``): bounded digits, in range
    if number is None:
        raise Invalid(f"{field}: should be a whole number from {minimum} to {maximum}")
    return number


def bounded_text(value: object, field: str, max_length: int) -> str:
    """A text field of a form read by hand (``form.get``), refused (naming it) when longer than the column that
    stores it; a field declared with ``Form(max_length=…)`` gets the same check from FastAPI."""
    text = "" if value is None else str(value)
    if len(text) > max_length:
        raise Invalid(f"{field}: should have at most {max_length} characters")
    return text


def _date_text(value: object) -> object:
    # Pydantic would read a number as seconds since 1970: `"end_date": 0` must be refused, not 1970-01-01.
    if not isinstance(value, str | dt.date):
        raise ValueError("a date is written YYYY-MM-DD")
    return value


IsoDate = Annotated[dt.date, Strict(False), BeforeValidator(_date_text)]  # text to date, but only text
