"""Disclosure by subtraction in the published statistics: the secondary-suppression rule
(``figures.protect``) against hand-worked margins and a brute-force search, a class test over every margin
of the public JSON on the seeded world, and no person's e-mail address in any statistics output."""

from __future__ import annotations

import csv
import io
import itertools
import random

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

import metrics_support as ms
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction
from strongroom.identity.models import User
from strongroom.imaging.models import ImportedInstance
from strongroom.stats import service
from strongroom.stats.figures import SMALL, SUPPRESSED, WITHHELD, Cell, Count, Margin, protect_all

BASE = "http://127.0.0.1:8000"
W, S = WITHHELD, SUPPRESSED


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setattr(service, "CACHE_SECONDS", 0.0)


# -- the rule ----------------------------------------------------------------------------------------
def protect(total: int, parts: list[int], *, unpublished: bool = False) -> tuple[Count, list[Count]]:
    """One margin as published: its total and parts after small-count and secondary suppression."""
    margin = Margin(Cell(total), [Cell(p) for p in parts], unpublished)
    protect_all([margin])
    return margin.total.out, [c.out for c in margin.parts]


@pytest.mark.parametrize(("total", "parts", "unpublished", "expected"), [
    (12, [5, 7], False, (12, [5, 7])),  # nothing hidden: nothing more to hide
    (8, [0, 2, 6], False, (8, [0, S, W])),  # the audit's downloads: 6 is withheld, the 0 stays
    (10, [0, 1, 9], False, (10, [0, S, W])),
    (30, [2, 9, 7, 12], False, (30, [S, 9, W, 12])),  # the smallest shown part first
    (9, [2, 2, 5], False, (9, [S, S, W])),  # two "< 5" holding 4 together: not enough
    (7, [3, 0, 4], False, (7, [S, 0, S])),  # two "< 5" holding 7: neither can be worked out
    (6, [1, 5], False, (W, [S, W])),  # 1 + a withheld ≥ 5 = 6 pins both: the total goes
    (8, [4, 4], False, (W, [S, S])),  # two "< 5" holding 8 are 4 each
    (4, [1, 1, 1, 1], False, (W, [S, S, S, S])),  # four "< 5" under a "< 5" total are 1 each
    (3, [1, 2], False, (S, [S, S])),  # under a "< 5" total: still 1 or 2 each
    (12, [8, 1, 1, 1], True, (12, [W, S, S, S])),  # the audit's countries (a remainder in no row)
    (11, [9], True, (11, [W])),  # approved 11, external 9: 2 others
    (11, [6], True, (11, [6])),  # 5 others: a count of five may be shown
])
def test_protect_withholds_until_nothing_can_be_worked_out(total, parts, unpublished, expected):
    assert protect(total, parts, unpublished=unpublished) == expected


def test_linked_margins_are_protected_together():
    """A part withheld for one margin is alone in another: that one needs a second."""
    a, b, c = Cell(2), Cell(18), Cell(7)
    first, second = Margin(Cell(20), [a, b]), Margin(Cell(25), [b, c])
    protect_all([first, second])
    assert (a.out, b.out, c.out, first.total.out, second.total.out) == (S, W, W, 20, 25)


def _bounds(marker, cap: int) -> range:
    """The values a reader could give a cell from its marker."""
    if marker == S:
        return range(1, SMALL)
    return range(SMALL, cap + 1) if marker == W else range(marker, marker + 1)


def test_no_hidden_part_can_be_worked_out_by_brute_force():
    """Every value a reader could assign to the hidden cells, from the markers alone: each hidden part keeps
    two or more possible values, and a shown total leaves at least SMALL hidden (or nothing)."""
    rng = random.Random(11)
    for _ in range(400):
        parts = [rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 9, 12]) for _ in range(rng.randint(1, 4))]
        total = sum(parts)
        shown_total, shown_parts = protect(total, parts)
        for p, s in zip(parts, shown_parts, strict=True):  # "< 5" exactly for 1-4; withheld never for 0
            assert p == s or (isinstance(s, str) and (s == S) == (0 < p < SMALL) and p > 0)
        cap = total + 1
        totals = _bounds(shown_total, 4 * cap)
        seen: list[set[int]] = [set() for _ in parts]
        for values in itertools.product(*(_bounds(s, cap) for s in shown_parts)):
            if sum(values) in totals:
                for i, v in enumerate(values):
                    seen[i].add(v)
        for i, s in enumerate(shown_parts):
            if isinstance(s, str):
                assert len(seen[i]) >= 2, (total, parts, shown_total, shown_parts)
        if isinstance(shown_total, int) and any(isinstance(s, str) for s in shown_parts):
            assert shown_total - sum(s for s in shown_parts if isinstance(s, int)) >= SMALL
            assert sum(isinstance(s, str) for s in shown_parts) >= 2


# -- the class test: every margin of the public output -------------------------------------------------
def _margins(m: dict) -> list[tuple[str, object, list, bool]]:
    """(name, total, parts, has a remainder no row shows) for every total published beside its parts."""
    per = m["per_dataset"]
    apps = m["applications"]
    out = [(f"applications.{f} by dataset", apps[f], [d["applications"][f] for d in per], False)
           for f in ("made", "approved", "rejected")]
    out += [(f"{f} by dataset", m[f], [d[f] for d in per], False) for f in ("downloads", "external_sharing_events")]
    out += [("applications by month", apps["made"], [x["applications"] for x in m["months"]], False),
            ("approved by month", apps["approved"], [x["approved"] for x in m["months"]], False),
            ("downloads by month", m["downloads"], [x["downloads"] for x in m["months"]], False),
            ("approved by country", apps["approved"], [c["approved"] for c in m["countries"]], True)]
    for d in per:
        a = d["applications"]
        out += [(f"{d['slug']} approved by country", a["approved"], [c["approved"] for c in d["countries"]], True),
                (f"{d['slug']} made = approved + rejected + pending", a["made"], [a["approved"], a["rejected"]], True),
                (f"{d['slug']} approved = external + other", a["approved"], [d["external_sharing_events"]], True)]
    out += [("made = approved + rejected + pending", apps["made"], [apps["approved"], apps["rejected"]], True),
            ("approved = external + other", apps["approved"], [m["external_sharing_events"]], True)]
    for c in m["countries"]:
        out.append((f"{c['country']} by dataset", c["approved"],
                    [x["approved"] for d in per for x in d["countries"] if x["country"] == c["country"]], False))
    return out


def _revealed(name, total, parts, remainder) -> str | None:
    """What total − shown parts gives away, if anything."""
    hidden = [p for p in parts if isinstance(p, str)]
    if isinstance(total, str):
        return None
    derived = total - sum(p for p in parts if isinstance(p, int))
    if not hidden:
        return f"{name}: the remainder is exactly {derived}" if 0 < derived < SMALL else None
    if derived < SMALL:
        return f"{name}: total {total} minus {parts} leaves {derived} for the hidden ones"
    if len(hidden) + remainder < 2:
        return f"{name}: one hidden cell in {parts} is exactly {derived}"
    return None


def test_no_hidden_count_can_be_worked_out_from_any_margin(app, hub):
    ms.seed(hub)
    client = TestClient(app, base_url=BASE)
    m = client.get("/api/v1/metrics").json()
    margins = _margins(m)
    assert len(margins) > 20 and any(S in parts for _, _, parts, _ in margins)
    leaks = [found for margin in margins if (found := _revealed(*margin))]
    assert not leaks, leaks
    # a withheld count is never shown as "< 5", nor are its bytes
    assert m["download_bytes"] is None or m["downloads"] not in (S, W)
    for d in m["per_dataset"]:
        assert (d["download_bytes"] is None) == isinstance(d["downloads"], str)
    # the page and the CSV carry the same markers
    rows = list(csv.DictReader(io.StringIO(client.get("/api/v1/metrics.csv").text)))
    assert {r["value"] for r in rows} >= {S, W}
    page = client.get("/stats").text
    assert 'class="small-count withheld-count"' in page and "<dt>Withheld</dt>" in page


def test_withheld_countries_are_listed_after_the_shown_ones_by_code(app, hub):
    ms.seed(hub)
    m = TestClient(app, base_url=BASE).get("/api/v1/metrics").json()
    for rows in [m["countries"], *(d["countries"] for d in m["per_dataset"])]:
        shown = [r for r in rows if isinstance(r["approved"], int)]
        hidden = [r for r in rows if isinstance(r["approved"], str)]
        assert rows == shown + hidden and [r["country"] for r in hidden] == sorted(r["country"] for r in hidden)


# -- texts: no person's e-mail address -----------------------------------------------------------------
def test_no_private_email_in_any_statistics_output(app, hub):
    """An address in a title or a DICOM body part that a user takes later: withheld as on landing pages."""
    sc = ms.seed(hub)
    address = "helpdesk@imaging.example.net"
    with transaction(hub.sessions) as s:
        s.execute(update(CatalogEntry).where(CatalogEntry.dataset_id == sc.datasets["chest"])
                  .values(title=f"Chest CT (questions: {address})"))
        first = s.scalars(select(ImportedInstance.id).where(ImportedInstance.sop_instance_uid.like(
            f"{sc.datasets['brain']}.%"))).first()
        s.execute(update(ImportedInstance).where(ImportedInstance.id == first).values(body_part=address))
        s.execute(update(User).where(User.id == sc.users["de1"]).values(email=address))
    client = TestClient(app, base_url=BASE)
    for path in ("/stats", "/api/v1/metrics", "/api/v1/metrics.csv"):
        r = client.get(path)
        assert r.status_code == 200 and address not in r.text.lower(), path
        assert "[address withheld]" in r.text, path
