"""HTTP content negotiation (RFC 9110 §12.5.1) over a fixed list of offers: pure, no web imports.

An offer is a media type with parameters (``text/x-bibliography; style=vancouver``). Each offer takes
the quality of the most specific Accept range that matches it (a range whose parameters all match,
then the bare type, then ``type/*``, then ``*/*``; parameters the offer does not have, such as a
citation's ``locale`` or ``charset``, are ignored); the best quality wins and ties go to the earlier
offer, so the server's order says what a browser's ``*/*`` gets. Ranges that cannot be parsed or
carry an invalid ``q`` are ignored; an Accept with no usable range accepts anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

Q_PARAM = "q"


@dataclass(frozen=True)
class Offer:
    media_type: str
    params: tuple[tuple[str, str], ...] = field(default=())

    @property
    def param_map(self) -> dict[str, str]:
        return dict(self.params)


@dataclass(frozen=True)
class _Range:
    type: str
    subtype: str
    params: dict[str, str]
    q: float


def _split(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def parse_accept(header: str | None) -> list[_Range]:
    ranges: list[_Range] = []
    for raw in _split(header or "", ","):
        pieces = [p.strip() for p in _split(raw, ";")]
        kind = pieces[0].lower()
        if kind.count("/") != 1:
            continue
        main, sub = kind.split("/")
        if not main or not sub or (main == "*" and sub != "*"):
            continue
        params: dict[str, str] = {}
        q, ok = 1.0, True
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if not name:
                continue
            if name == Q_PARAM:
                try:
                    q = float(value)
                except ValueError:
                    ok = False
                if not 0.0 <= q <= 1.0:
                    ok = False
                break  # what follows q are accept extensions, not media type parameters
            params[name] = value.lower() if name != "charset" else value
        if ok:
            ranges.append(_Range(main, sub, params, q))
    return ranges


def _specificity(r: _Range, offer: Offer) -> int:
    """How specifically ``r`` names ``offer`` (higher wins), or -1 when it does not match it."""
    main, sub = offer.media_type.split("/")
    if r.type == "*":
        return 0
    if r.type != main:
        return -1
    if r.subtype == "*":
        return 1
    if r.subtype != sub:
        return -1
    have = offer.param_map
    wanted = {k: v for k, v in r.params.items() if k in have}
    if not wanted:
        return 2
    return 3 if all(have[k] == v for k, v in wanted.items()) else -1


def quality(ranges: Sequence[_Range], offer: Offer) -> float:
    best, best_q = -1, 0.0
    for r in ranges:
        s = _specificity(r, offer)
        if s > best:
            best, best_q = s, r.q
    return best_q if best >= 0 else 0.0


def choose(header: str | None, offers: Sequence[Offer]) -> Offer | None:
    """The offer the client prefers, or ``None`` when it accepts none of them (→ 406)."""
    ranges = parse_accept(header)
    if not ranges:
        return offers[0] if offers else None
    best: Offer | None = None
    best_q = 0.0
    for offer in offers:
        q = quality(ranges, offer)
        if q > best_q:
            best, best_q = offer, q
    return best
