"""Free-text cleaning: identifying values of the instance and generic PHI patterns masked."""

from __future__ import annotations

import re
from collections.abc import Iterable

from strongroom.identifiers import DATE as _DATES

_GENERIC_PHI = re.compile(
    r"[\w.+-]+@[\w-]+\.[\w.-]+"  # e-mail
    r"|\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b|\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"  # dates
    r"|\d{5,}"  # long digit runs: IDs, compact dates, phone numbers
)


class TextCleaner:
    """Masks identifying values of the instance and generic PHI patterns in free text."""

    def __init__(self, identifiers: Iterable[str]) -> None:
        tokens: set[str] = set()
        for value in identifiers:
            value = value.strip()
            if len(value) >= 3:
                tokens.add(value)
            for tok in re.split(r"[\^\\=\s,;/]+", value):
                if len(tok) >= 3:
                    tokens.add(tok)
        alternatives = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
        self._rx = re.compile(rf"(?<![0-9A-Za-z])(?:{alternatives})(?![0-9A-Za-z])", re.I) if tokens else None

    def clean(self, text: str) -> str:
        if self._rx is not None:
            text = self._rx.sub("***", text)
        # dates in every rendering the verification searches (4 Jan 2021, 4 januari 2021, 2021 01 04...),
        # then the generic patterns
        return _GENERIC_PHI.sub("***", _DATES.sub("***", text))
