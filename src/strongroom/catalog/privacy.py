"""No person's e-mail address reaches a public page: which addresses belong to a user of the hub,
and a scrubber that withholds them from texts shown to the public."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..identity.models import User

EMAIL_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
WITHHELD = "[address withheld]"


def user_emails(session: Session, candidates: Iterable[str]) -> set[str]:
    """Which of these addresses belong to a person (any user of the hub), lower-cased."""
    wanted = {c.lower() for c in candidates}
    if not wanted:
        return set()
    rows = session.scalars(select(func.lower(User.email)).where(func.lower(User.email).in_(wanted)))
    return {r for r in rows if r}


def scrubber(session: Session, texts: Iterable[str]) -> Callable[[str], str]:
    """Replace any person's e-mail address with a placeholder. Saving already refuses them; this
    also covers a user who later takes an address that an entry's text mentions."""
    private = user_emails(session, {m for t in texts for m in EMAIL_RE.findall(t or "")})
    if not private:
        return lambda s: s

    def scrub(text: str) -> str:
        return EMAIL_RE.sub(lambda m: WITHHELD if m.group(0).lower() in private else m.group(0), text)

    return scrub
