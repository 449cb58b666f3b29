"""Free-text cleaning: identifying values of the instance and generic PHI patterns masked."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from strongroom.identifiers import DATE as _DATES
from strongroom.identifiers import cjk_name_forms

_GENERIC_PHI = re.compile(
    r"[\w.+-]+@[\w-]+\.[\w.-]+"  # e-mail
    r"|\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b|\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"  # dates
    r"|\d{5,}"  # long digit runs: IDs, compact dates, phone numbers
)
# full-width digits (２０２１年１月４日), read as the ASCII ones the date renderings are written with
_WIDE_DIGITS = str.maketrans("０１２３４５６７８９", "0123456789")


def _mask_dates(text: str) -> str:
    """Every span of ``identifiers.DATE`` masked, in every rendering the verification searches (4 Jan 2021,
    4 januari 2021, 2021 01 04, 2021年1月4日, 4 Jan...); full-width digits read as ASCII ones."""
    plain = text if text.isascii() else text.translate(_WIDE_DIGITS)  # position for position
    out, done = [], 0
    for m in _DATES.finditer(plain):
        out += [text[done:m.start()], "***"]
        done = m.end()
    return "".join(out) + text[done:] if out else text


class TextCleaner:
    """Masks identifying values of the instance and generic PHI patterns in free text."""

    def __init__(self, identifiers: Iterable[str]) -> None:
        tokens: set[str] = set()
        for value in identifiers:
            value = unicodedata.normalize("NFC", value.strip())
            if len(value) >= 3:
                tokens.add(value)
            for tok in re.split(r"[\^\\=\s,;/]+", value):
                if len(tok) >= 3:
                    tokens.add(tok)
            if not value.isascii():  # 李^娜: a CJK name as text writes it (李娜, 李 娜, 李·娜), 2 characters up
                tokens.update(cjk_name_forms(value))
        alternatives = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
        self._rx = re.compile(rf"(?<![0-9A-Za-z])(?:{alternatives})(?![0-9A-Za-z])", re.I) if tokens else None

    def clean(self, text: str) -> str:
        if not text.isascii():  # composed, as the identifiers are: Åström written with combining marks too
            text = unicodedata.normalize("NFC", text)
        if self._rx is not None:
            text = self._rx.sub("***", text)
        # dates in every rendering the verification searches, then the generic patterns
        return _GENERIC_PHI.sub("***", _mask_dates(text))
