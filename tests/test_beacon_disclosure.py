"""The Beacon's small counts cannot be recovered by differencing (docs/federation.md, "Small counts and
differencing").

What the check proves: an attacker who asks, anonymously, every question up to two filtering terms (the unfiltered
one, each term, each pair — and reads every facet count of every answer, which adds the triples) and knows the
documented rule for reading each answer (a number r is r-2..r+2 and at least 5; "< 5" with ``exists: true`` is
1-4; a combination's "< 5" is 0-4; ...) learns a set of linear constraints on the unknown number of studies of
every possible profile (which modalities, body parts, diseases, which sex and age band or none). For every count
that is really 1-4 (each term, each pair), an integer program over those constraints finds its smallest and largest
possible value: the count is *derivable* when both are equal. The test asserts none is — for the seeded hub (over
HTTP) and for corpora built to be worst cases (many small disjoint siblings; age bands and sexes, whose cells add up
to the total) — and that the same check does find the auditor's derivation (Brain = 7 - 6 = 1) in answers given by
the previous rule, so it is not vacuous. It does not prove that no combination of more than two terms, or of the
dataset counts with the study counts, ever narrows a cell: it is the class of attacks the auditor used, asked
exhaustively.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from scipy.optimize import Bounds, LinearConstraint, milp

import federation_support
from strongroom.federation import beacon
from strongroom.federation.beacon import EXCLUSIVE, FACETS, MIN_COUNT, Study

B = "/ga4gh/beacon/v2"
Pair = tuple[str, str]
Ask = Callable[[Sequence[str]], dict[str, Any]]


def _cid(pair: Pair) -> str:
    return beacon.term_of(*pair).id


def _universe(studies: Sequence[Study]) -> list[Pair]:
    return sorted({(f, v) for s in studies for f in FACETS for v in beacon._values(s, f)})


def _profiles(universe: Sequence[Pair]) -> list[frozenset[Pair]]:
    """Every study profile the attacker must allow: any subset of each multi-valued facet's values, one value or
    none of a single-valued facet."""
    choices = []
    for facet in FACETS:
        values = [p for p in universe if p[0] == facet]
        if facet in EXCLUSIVE:
            choices.append([frozenset()] + [frozenset({p}) for p in values])
        else:
            choices.append([frozenset(c) for n in range(len(values) + 1) for c in itertools.combinations(values, n)])
    return [frozenset().union(*combo) for combo in itertools.product(*choices)]


def _number(r: int, rounded: bool) -> tuple[int, int]:
    return (max(MIN_COUNT, r - 2), r + 2) if rounded else (r, r)


def _read(doc: dict[str, Any], asked: Sequence[Pair], unknown_exclusive: bool, rounded: bool) -> tuple[int, int]:
    """The documented meaning of an answer's count (for the previous rule, ``rounded=False``: exact numbers, and a
    0 is a 0)."""
    summary, info = doc["responseSummary"], doc["info"]
    if "numTotalResults" in summary:
        n = summary["numTotalResults"]
        if n == 0:  # unknown filters: a sex or age band below 5 is not a term, so 0 means 0-4 there
            return (0, MIN_COUNT - 1) if unknown_exclusive else (0, 0)
        return _number(n, rounded)
    if summary["exists"]:
        return 1, MIN_COUNT - 1
    return (0, MIN_COUNT - 1) if info.get("count") == f"< {MIN_COUNT}" else (0, 0)


def _constraints(ask: Ask, universe: Sequence[Pair], rounded: bool) -> dict[frozenset[Pair], tuple[int, int]]:
    """Every answer an anonymous client gets for no term, each term and each pair, facets included, as intervals
    on the count of a set of terms (intersected when several answers speak of the same set)."""
    known: dict[frozenset[Pair], tuple[int, int]] = {}

    def add(terms: frozenset[Pair], lo: int, hi: int) -> None:
        old = known.get(terms, (0, 10**9))
        known[terms] = (max(old[0], lo), min(old[1], hi))

    questions = [()] + [(t,) for t in universe] + list(itertools.combinations(universe, 2))
    for q in questions:
        doc = ask([_cid(p) for p in q])
        unknown = set(doc["info"].get("unknownFilters", []))
        add(frozenset(q), *_read(doc, q, any(p[0] in EXCLUSIVE and _cid(p) in unknown for p in q), rounded))
        counts = doc["info"].get("counts", {})
        for cell in universe:
            value = counts.get(cell[0], {}).get(_cid(cell))
            terms = frozenset(q) | {cell}
            if isinstance(value, int):
                add(terms, *_number(value, rounded))
            elif value is not None:
                add(terms, 1, MIN_COUNT - 1)
            elif unknown:
                continue  # an answer to unknown terms says nothing of the other cells
            elif not rounded or (not q and cell[0] not in EXCLUSIVE):
                add(terms, 0, 0)  # left out: absent (the previous rule; a term of an unfiltered answer)
            else:
                add(terms, 0, MIN_COUNT - 1)  # left out: below 5, zero included
    return known


def _range(known: dict[frozenset[Pair], tuple[int, int]], profiles: Sequence[frozenset[Pair]],
           target: frozenset[Pair]) -> tuple[int, int]:
    """The smallest and largest count of ``target`` every answer allows (integer programs)."""
    rows = sorted(known, key=lambda t: sorted(t))
    a = np.array([[1.0 if terms <= p else 0.0 for p in profiles] for terms in rows])
    lo = np.array([known[t][0] for t in rows], dtype=float)
    hi = np.array([known[t][1] for t in rows], dtype=float)
    c = np.array([1.0 if target <= p else 0.0 for p in profiles])
    ends = []
    for sign in (1, -1):
        res = milp(sign * c, constraints=LinearConstraint(a, lo, hi), integrality=np.ones(len(profiles)),
                   bounds=Bounds(0, np.inf))
        assert res.status == 0, res.message  # the true corpus satisfies every constraint
        ends.append(round(sign * res.fun))
    return ends[0], ends[1]


def _derivable(ask: Ask, studies: Sequence[Study], rounded: bool = True) -> dict[str, tuple[int, int]]:
    """Each really small count (1-4) of a term or a pair that the answers pin to one value, with that value."""
    universe = _universe(studies)
    profiles = _profiles(universe)
    known = _constraints(ask, universe, rounded)
    pinned = {}
    for q in [(t,) for t in universe] + list(itertools.combinations(universe, 2)):
        true = sum(1 for s in studies if all(v in beacon._values(s, f) for f, v in q))
        if 0 < true < MIN_COUNT:
            low, high = _range(known, profiles, frozenset(q))
            assert low <= true <= high
            if low == high:
                pinned[" AND ".join(_cid(p) for p in q)] = (low, true)
    return pinned


def _pure(studies: Sequence[Study]) -> Ask:
    b = beacon.Beacon(id="t", name="t", base_url="https://hub.example.org", organization="t")
    return lambda filters: b.query(beacon.STUDY, studies, filters)


def _previous_rule(studies: Sequence[Study]) -> Ask:
    """Answers as the beacon gave them before: exact numbers, each 1-4 hidden on its own, exact zeros."""
    def ask(filters: Sequence[str]) -> dict[str, Any]:
        hits, unknown = beacon.matching(studies, filters)
        n = len(hits)
        summary = {"exists": n > 0} | ({"numTotalResults": n} if n == 0 or n >= MIN_COUNT else {})
        counts: dict[str, dict[str, int | str]] = {f: {} for f in FACETS}
        for s in hits:
            for f in FACETS:
                for v in beacon._values(s, f):
                    counts[f][_cid((f, v))] = counts[f].get(_cid((f, v)), 0) + 1  # type: ignore[operator]
        counts = {f: {k: (v if v >= MIN_COUNT else "< 5") for k, v in c.items()} for f, c in counts.items()}
        info = {"counts": counts, **({"count": "< 5"} if 0 < n < MIN_COUNT else {}),
                **({"unknownFilters": unknown} if unknown else {})}
        return {"responseSummary": summary, "info": info}
    return ask


def _study(i: int, modalities: str, parts: str = "", sex: str = "", age: str = "") -> Study:
    return Study(dataset=f"D{i % 2}", modalities=frozenset(modalities.split()), body_parts=frozenset(parts.split()),
                 sex=sex, age_band=age)


AUDITOR = [_study(i, "CT", "CHEST") for i in range(6)] + [_study(9, "MR PT", "BRAIN")]
SIBLINGS = ([_study(i, "CT", "CHEST", "F", "40-49") for i in range(5)] + [_study(5, "MR", "", "M", "50-59"),
            _study(6, "PT", "", "M", "60-69"), _study(7, "US", "", "F", "40-49"), _study(8, "XA")])
BANDS = [_study(i, "CT", "CHEST", "F", "40-49") for i in range(5)] + [
    _study(5, "CT", "CHEST", "M", "50-59"), _study(6, "CT", "CHEST", "M", "60-69")]


def test_the_check_finds_the_auditors_derivation_in_the_previous_rules_answers():
    pinned = _derivable(_previous_rule(AUDITOR), AUDITOR, rounded=False)
    assert pinned["SNOMED:12738006"] == (1, 1)  # Brain = 7 - 6
    assert pinned["DCM:MR"] == (1, 1) and pinned["SNOMED:12738006 AND DCM:MR"] == (1, 1)
    assert _derivable(_previous_rule(BANDS), BANDS, rounded=False)  # age bands and sexes add up to the total


@pytest.mark.parametrize("corpus", [AUDITOR, SIBLINGS, BANDS], ids=["auditor", "small-siblings", "age-bands"])
def test_no_small_count_is_derivable_from_every_answer_up_to_two_terms(corpus):
    assert _derivable(_pure(corpus), corpus) == {}


def test_no_small_count_of_the_seeded_hub_is_derivable_over_http(client, hub):
    federation_support.seed(hub, {"beaconct": "lung-ct", "brain": "brain-mr"}, {"secret": "knee"},
                            keywords={"beaconct": ["lung cancer", "ICD10:C34"]})
    studies = beacon_studies(hub)

    def ask(filters: Sequence[str]) -> dict[str, Any]:
        r = client.get(B + "/imaging_studies", params={"filters": ",".join(filters)} if filters else {})
        assert r.status_code == 200, r.text
        return r.json()

    assert _derivable(ask, studies) == {}
    # the auditor's three answers, as they read now
    everything, thorax = ask([]), ask(["SNOMED:51185008"])
    both = ask(["SNOMED:12738006", "SNOMED:51185008"])
    assert everything["responseSummary"]["numTotalResults"] == thorax["responseSummary"]["numTotalResults"] == 5
    assert both["responseSummary"] == {"exists": False} and both["info"]["count"] == "< 5"  # not "0"


def beacon_studies(hub) -> list[Study]:
    from strongroom.federation import service

    with hub.sessions() as s:
        return service.studies(s)


def test_a_shown_number_is_a_multiple_of_5_and_never_below_it():
    assert [beacon.shown(n) for n in (0, 1, 4, 5, 7, 8, 12, 13, 1234)] == [0, "< 5", "< 5", 5, 5, 10, 10, 15, 1235]
    doc = _pure(SIBLINGS)([])
    numbers = [doc["responseSummary"]["numTotalResults"]] + [
        v for facet in doc["info"]["counts"].values() for v in facet.values() if isinstance(v, int)]
    assert numbers and all(n % 5 == 0 and n >= MIN_COUNT for n in numbers)
    assert doc["info"]["counts"]["sex"] == {"NCIT:C16576": 5}  # 6 women; the 2 men are left out, not "< 5"
    assert "NCIT:C20197" not in str(beacon.terms(SIBLINGS))  # and not a term: asked, it is unknown like an absent one
