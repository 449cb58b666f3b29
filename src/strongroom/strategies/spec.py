"""A pseudonymization strategy: one rule per column, plus rules over groups of rows.

Written by a data steward as TOML (or edited on a page), versioned per project. Validation here is the
only validation: the service, the API, the page and the CLI all load strategies through `Strategy`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from ..imaging.deid.pseudonyms import RESERVED_KINDS

EXAMPLE = Path(__file__).parent / "examples" / "project-x.toml"  # the source documents' own strategy
Name = Annotated[str, Field(min_length=1, max_length=120)]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str | None = Field(None, max_length=60, description="Where the column comes from (LIS, PACS…).")
    note: str | None = Field(None, max_length=500)


class Delete(_Rule):
    """Leave the column out of the output."""
    action: Literal["delete"]


class Keep(_Rule):
    """Copy the column unchanged (it is still scanned for identifiers)."""
    action: Literal["keep"]


class Pseudonymize(_Rule):
    """Replace each value by a keyed HMAC token. `kind = "person"` gives the same pseudonym the
    DICOM de-identification gives a PatientID of the same value in the same project."""
    action: Literal["pseudonymize"]
    kind: str = Field("person", pattern=r"^[a-z][a-z0-9_-]{0,30}$")

    @model_validator(mode="after")
    def _not_reserved(self) -> Pseudonymize:
        if self.kind in RESERVED_KINDS:  # e.g. "dateshift": the token would carry each person's date shift
            raise ValueError(f"kind {self.kind!r} is reserved: it names a key the de-identification derives "
                             "(use \"person\" for people, or another name)")
        return self


class Stratify(_Rule):
    """Numbers into bands. `width = 5` gives 0-5, 6-10, 11-15, … (the first band includes zero);
    `edges = [17, 39, 64]` gives 0-17, 18-39, 40-64, 65+. `top` codes everything from it upwards as
    one band ("90+")."""
    action: Literal["stratify"]
    width: int | None = Field(None, ge=1, le=1000)
    edges: list[int] | None = Field(None, min_length=1, max_length=200)
    top: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_of(self) -> Stratify:
        if (self.width is None) == (self.edges is None):
            raise ValueError("give either width or edges")
        if self.edges is not None and self.edges != sorted(set(self.edges)):
            raise ValueError("edges must be increasing")
        return self

    def upper_bounds(self) -> list[int]:
        """Inclusive upper bound of every band below the top band."""
        if self.edges is not None:
            bounds = list(self.edges)
        else:
            assert self.width is not None
            stop = self.top - 1 if self.top is not None else 150
            bounds = list(range(self.width, max(stop, self.width) + 1, self.width))
        if self.top is not None:
            bounds = [b for b in bounds if b < self.top - 1] + [self.top - 1]
        return bounds


class Generalize(_Rule):
    """Coarser values: a date to its year, quarter or month; a code to its first characters
    (postal codes); an ICD-10 code to its chapter, block (WHO 2019: "I20-I25 Ischaemic heart diseases") or
    three-character category. A code that does not start like one (a letter, two digits) becomes blank."""
    action: Literal["generalize"]
    to: Literal["year", "quarter", "month", "prefix", "icd10_chapter", "icd10_block", "icd10_category"]
    length: int | None = Field(None, ge=1, le=20, description="Characters kept by `prefix`.")

    @model_validator(mode="after")
    def _length(self) -> Generalize:
        if (self.to == "prefix") != (self.length is not None):
            raise ValueError("length goes with to = 'prefix', and only with it")
        return self


class ShiftDate(_Rule):
    """Move every date of a person by that person's own keyed shift: the same shift the DICOM
    de-identification applies to the same person's images, so intervals between events survive."""
    action: Literal["shift_date"]
    max_shift_days: int = Field(3650, ge=1, le=36500)


class Suppress(_Rule):
    """Blank the column; with `min_count`, blank only values seen fewer than `min_count` times."""
    action: Literal["suppress"]
    min_count: int | None = Field(None, ge=2)


class TopCode(_Rule):
    """Clamp numbers into [bottom, top] (outliers identify people)."""
    action: Literal["top_code"]
    top: float | None = None
    bottom: float | None = None

    @model_validator(mode="after")
    def _some(self) -> TopCode:
        if self.top is None and self.bottom is None:
            raise ValueError("give top, bottom or both")
        return self


class FreeText(_Rule):
    """Free text: `remove` blanks it; `scrub` replaces every identifier the scanners find."""
    action: Literal["free_text"]
    mode: Literal["remove", "scrub"] = "remove"


Rule = Annotated[Delete | Keep | Pseudonymize | Stratify | Generalize | ShiftDate | Suppress | TopCode | FreeText,
                 Field(discriminator="action")]
OnViolation = Literal["suppress", "fail"]


class GroupRule(BaseModel):
    """Every group of rows sharing these (output) columns must have at least `min_rows` rows, e.g.
    each (diagnosis, anatomical site, year) more than 10 times."""
    model_config = ConfigDict(extra="forbid")
    columns: list[Name] = Field(min_length=1, max_length=20)
    min_rows: int = Field(ge=2, le=1_000_000)
    on_violation: OnViolation = "suppress"


class KAnonymity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quasi_identifiers: list[Name] = Field(min_length=1, max_length=30)
    k: int = Field(ge=2, le=1_000_000)
    on_violation: OnViolation = "suppress"


class LDiversity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quasi_identifiers: list[Name] = Field(min_length=1, max_length=30)
    sensitive: Name
    l: int = Field(ge=2, le=10_000)  # noqa: E741 - the standard's own name
    on_violation: OnViolation = "suppress"


# The identifier kinds every scan looks for, whatever a strategy says: a strategy adds names, never removes these.
ALWAYS_SCANNED = ("personnummer", "email", "phone")


class IdentifierScan(BaseModel):
    """What the final scan of every cell looks for besides personnummer (and samordningsnummer), e-mail
    addresses and telephone numbers, which it always looks for: names from a list the steward supplies (e.g.
    the patients' names from the extract), matched case-insensitively as whole words.

    `personnummer`, `email` and `phone` are read only so that versions saved when a strategy could turn a
    kind off still load: once validated they are always true (the scan is not the strategy's to switch off),
    and a new text that turns one off is refused (`load_strategy(..., new=True)`)."""
    model_config = ConfigDict(extra="forbid")
    personnummer: bool = True
    email: bool = True
    phone: bool = True
    names: list[Annotated[str, Field(min_length=2, max_length=100)]] = Field(default_factory=list,
                                                                            max_length=1_000_000)
    names_from: list[Name] = Field(default_factory=list, max_length=20,
                                   description="Input columns whose values (e.g. the patients' names) join the list.")

    @model_validator(mode="after")
    def _always_on(self, info: ValidationInfo) -> IdentifierScan:
        off = [kind for kind in ALWAYS_SCANNED if not getattr(self, kind)]
        if off and (info.context or {}).get("new"):
            raise ValueError(f"{', '.join(off)} = false: a strategy cannot turn the scan for personnummer, e-mail "
                             "addresses or telephone numbers off (it may add names); delete the line")
        for kind in off:  # an older saved version: it loads, and the kind is scanned anyway
            setattr(self, kind, True)
        return self


class Strategy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    version: int = Field(1, ge=1)
    person: Name | None = Field(None, description="The column that identifies the person (pseudonyms, date shifts).")
    unlisted: Literal["fail", "delete"] = Field(
        "fail", description="A column without a rule stops the run (default) or is deleted.")
    columns: dict[Name, Rule] = Field(min_length=1)
    group_rules: list[GroupRule] = Field(default_factory=list, max_length=50)
    k_anonymity: KAnonymity | None = None
    l_diversity: LDiversity | None = None
    identifier_scan: IdentifierScan = Field(default_factory=IdentifierScan)
    max_suppressed: float = Field(0.05, ge=0, le=1, description=(
        "The largest share of rows the group rules, k and l may suppress before the run fails."))
    risk_threshold: float = Field(0.2, gt=0, le=1,
                                  description="A record is at risk above this re-identification probability.")

    @model_validator(mode="after")
    def _coherent(self) -> Strategy:
        kept = self.output_columns()
        needs_person = [c for c, r in self.columns.items() if isinstance(r, ShiftDate)]
        if needs_person and (self.person is None or self.person not in self.columns):
            raise ValueError(f"shift_date on {needs_person[0]!r} needs `person`, a column of the strategy")
        checks: list[tuple[str, list[str]]] = [(f"group rule {i + 1}", g.columns)
                                               for i, g in enumerate(self.group_rules)]
        if self.k_anonymity:
            checks.append(("k_anonymity", self.k_anonymity.quasi_identifiers))
        if self.l_diversity:
            checks.append(("l_diversity", [*self.l_diversity.quasi_identifiers, self.l_diversity.sensitive]))
        unknown = [c for c in self.identifier_scan.names_from if c not in self.columns]
        if unknown:
            raise ValueError(f"identifier_scan.names_from names {unknown[0]!r}, which is not a column of the strategy")
        for where, columns in checks:
            missing = [c for c in columns if c not in kept]
            if missing:
                raise ValueError(f"{where} names {missing[0]!r}, which is not an output column of the strategy")
        return self

    def output_columns(self) -> list[str]:
        return [c for c, r in self.columns.items() if not isinstance(r, Delete)]


def load_strategy(text: str, *, new: bool = False) -> Strategy:
    """Parse and validate a strategy written as TOML. Raises ValueError with a readable reason. `new`: a text
    being written or saved (refused if it turns an always-scanned identifier kind off), not a saved version
    being loaded (which loads, and is scanned for every kind anyway)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML: {exc}") from None
    return Strategy.model_validate(data, context={"new": new})
