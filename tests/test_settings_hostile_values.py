"""Project settings with hostile values: nothing a PI (or delegate) may save stalls or breaks the hub.

* A pixel rule's Manufacturer/Model/Modality pattern is a safe subset of regular expressions (text, ``.``, ``.*``,
  a leading ``^``, a trailing ``$``), searched without backtracking: ``^(a+)+$`` (which stalled the web process
  for every project on one crafted STOW-RS instance) is refused at save with a clear message, a stored one
  (written by an older hub) is searched as plain text, and the legitimate rules still blank or quarantine as
  before through the real STOW-RS route.
* Every setting of the registry (core and each capability's, so a new one is covered automatically) answers a
  hostile value of its own JSON shape (ids that are not UUIDs, huge strings, huge lists, deep nesting, NaN and
  infinite numbers, negative sizes) with a 4xx, never a 5xx.
"""

from __future__ import annotations

import io
import json
import random
import re
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

import httpx
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import RLELossless
from sqlalchemy import select

from conftest import bearer, token_for, web_client
from imaging_support import archived_bytes, instances, make_project
from strongroom import capabilities
from strongroom.db import transaction
from strongroom.imaging import service as imaging_service
from strongroom.imaging import synthetic
from strongroom.imaging.deid import PixelRule
from strongroom.imaging.deid import profile as deid_profile
from strongroom.imaging.settings import to_engine
from strongroom.projects.models import Membership, Project
from strongroom.projects.settings import SETTINGS
from support.live import free_port, serving

capabilities.registry().commit()  # every capability's settings join the registry, as Hub.from_settings does
SETTING_KEYS = sorted(SETTINGS)
AUDITOR = "^(a+)+$"
DICOM_PARTS = 'multipart/related; type="application/dicom"; boundary=b0und4ry'
_REPEATS = {sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, getattr(sre_parse, "POSSESSIVE_REPEAT", None)}


def _repeats(pattern: str) -> bool:
    """Whether a regular expression holds any quantifier, group or alternation (what can backtrack)."""
    risky = _REPEATS | {sre_parse.BRANCH, sre_parse.SUBPATTERN, sre_parse.GROUPREF}
    return any(op in risky for op, _ in sre_parse.parse(pattern))


def _put(client: TestClient, token: str, key: str, content: str, slug: str = "lung") -> httpx.Response:
    return client.put(f"/api/v1/projects/{slug}/settings/{key}", content=content,
                      headers={**bearer(token), "Content-Type": "application/json"})


def _value(value: Any) -> str:
    return json.dumps({"value": value})  # NaN and Infinity as JavaScript writes them (json allows them)


# -- 1. pixel-rule patterns --------------------------------------------------------------------------------
def test_the_pattern_language_means_what_the_regular_expression_meant() -> None:
    """Every pattern of the subset matches exactly where Python's ``re`` (case-insensitive search) does, over
    random patterns and values; its compiled pieces never hold a quantifier, group or alternative."""
    rnd = random.Random(20261205)
    tokens = ["a", "b", "G", "E", ".", ".*", r"\.", r"\*", r"\(", " ", "-"]
    for _ in range(4000):
        body = "".join(rnd.choice(tokens) for _ in range(rnd.randint(0, 7)))
        source = ("^" if rnd.random() < 0.3 else "") + body + ("$" if rnd.random() < 0.3 else "")
        pattern = deid_profile.TextPattern.parse(source)
        assert not any(_repeats(piece.pattern) for piece in pattern.pieces), source
        for _ in range(6):
            value = "".join(rnd.choice("abAB.*(- gE") for _ in range(rnd.randint(0, 10)))
            assert pattern.search(value) == (re.search(source, value, re.I) is not None), (source, value)
    for legit in ("", "^GE ", "Revolution", "SIEMENS", "^US$", "GE.*CT", r"Hologic, Inc\.", "^C.$"):
        deid_profile.TextPattern.parse(legit)


@pytest.mark.parametrize("source", [AUDITOR, "(a|aa)+$", "GE|SIEMENS", "[A-Z]+", "a*", "x?", "a{2,}", r"\d+",
                                    r"(?i)ge", r"\b", "^^", "$$", "a\\"])
def test_regular_expression_syntax_outside_the_subset_is_refused(source: str) -> None:
    with pytest.raises(deid_profile.PatternError, match="is not allowed"):
        deid_profile.TextPattern.parse(source)


def test_the_auditors_pattern_is_refused_at_the_api_and_the_form(app, hub, people) -> None:
    alice = people("alice")
    make_project(hub, "lung", "alice")
    client = TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False)
    tok = token_for(hub, alice)
    for attribute in ("manufacturer", "model", "modality"):
        profile = {"pixel_rules": [{"name": "banner", "rectangles": [[0, 0, 4, 4]], attribute: AUDITOR}]}
        r = _put(client, tok, "deid_profile", _value(profile))
        assert r.status_code == 422, r.text
        text = r.text
        assert "pixel rule 'banner'" in text and attribute in text and "'(' is not allowed" in text, text
    form = web_client(app, hub, alice)
    page = form.get("/projects/lung/imaging")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    r = form.post("/projects/lung/imaging/profile", data={
        "csrf_token": csrf.group(1), "retain_longitudinal": "remove",
        "pixel_rules": json.dumps([{"name": "banner", "rectangles": [[0, 0, 4, 4]], "manufacturer": AUDITOR}])})
    assert r.status_code == 422 and "is not allowed" in r.text
    # the subset is accepted: the patterns older profiles used keep working
    good = {"pixel_rules": [{"name": "GE US", "rectangles": [[0, 0, 4, 4]], "manufacturer": "^GE ",
                             "model": "Revolution.*", "modality": "^US$"}]}
    r = _put(client, tok, "deid_profile", _value(good))
    assert r.status_code == 200, r.text


def test_a_stored_hostile_pattern_is_searched_as_text_and_cannot_stall_a_stow(app, hub, people) -> None:
    """A profile an older hub saved (written straight to the settings table): the engine's matcher for the
    auditor's pattern is plain text (no quantifier reaches ``re``), so the crafted instance is searched in one
    pass and stored; an over-long value counts as matching (fail closed) rather than being searched."""
    alice = people("alice")
    stored = {"pixel_rules": [{"name": "x", "rectangles": [[0, 0, 4, 4]], "manufacturer": AUDITOR,
                               "model": "(.*a){20}", "modality": "(a|aa)+"}]}
    make_project(hub, "lung", "alice", profile=stored)
    with transaction(hub.sessions) as s:
        project_id = s.scalar(select(Project.id).where(Project.slug == "lung"))
        engine = to_engine(imaging_service.profile_setting(s, project_id))
    (rule,) = engine.pixel_rules
    literal = deid_profile.TextPattern.literal
    assert list(rule.patterns) == [literal(AUDITOR), literal("(.*a){20}"), literal("(a|aa)+")]
    assert not any(_repeats(piece.pattern) for p in rule.patterns for piece in p.pieces)
    assert not rule.matches("a" * 64 + "!", "a" * 64, "a" * 16, 16, 16)
    assert rule.matches("x ^(A+)+$", "(.*A){20}", "(a|aa)+", 16, 16)  # the text itself, case-insensitive
    anchored = PixelRule("US", ((0, 0, 1, 1),), modality="^US$")
    assert anchored.matches("", "", "X" * (deid_profile.VALUE_MAX + 1), 0, 0)
    assert not anchored.matches("", "", "CT", 0, 0)
    blob = synthetic.make_ct(0, 0, 1, 1, rows=16, columns=16, manufacturer="a" * 64 + "!")
    with serving(app, free_port()) as url:
        r = httpx.post(f"{url}/dicomweb/projects/lung/studies", content=_parts(blob), timeout=120,
                       headers={**bearer(token_for(hub, alice)), "Content-Type": DICOM_PARTS,
                                "Accept": "application/dicom+json"})
    assert r.status_code == 200, r.text
    assert [i.state for i in instances(hub)] == ["published"]


def _parts(*blobs: bytes) -> bytes:
    return b"".join(b"--b0und4ry\r\nContent-Type: application/dicom\r\n\r\n" + b + b"\r\n" for b in blobs) \
        + b"--b0und4ry--\r\n"


def _rle(blob: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(blob))
    ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("attribute,pattern", [("manufacturer", "^GE "), ("model", "Revolution"),
                                               ("modality", "^CT$")])
def test_legitimate_rules_still_blank_or_quarantine_through_stow(app, hub, people, attribute, pattern) -> None:
    """A rule naming the scanner by manufacturer, model or modality blanks its rectangle in a native CT and
    quarantines an RLE one (a rule miss: it cannot be blanked without re-encoding), as before."""
    alice = people("alice")
    rule = {"name": "header", "rectangles": [[0, 0, 8, 4]], attribute: pattern}
    make_project(hub, "lung", "alice", profile={"retain_longitudinal": "modified", "pixel_rules": [rule]})
    pixels = bytes(range(1, 256)) * 5  # non-zero everywhere: a blanked rectangle shows
    native = synthetic.make_ct(0, 0, 1, 1, rows=32, columns=32, pixel_bytes=(pixels * 2)[:32 * 32 * 2])
    compressed = _rle(synthetic.make_ct(0, 0, 1, 2, rows=32, columns=32,
                                        pixel_bytes=(pixels * 2)[:32 * 32 * 2]))
    with serving(app, free_port()) as url:
        r = httpx.post(f"{url}/dicomweb/projects/lung/studies", content=_parts(native, compressed), timeout=120,
                       headers={**bearer(token_for(hub, alice)), "Content-Type": DICOM_PARTS,
                                "Accept": "application/dicom+json"})
    assert r.status_code in (200, 202), r.text
    rows = instances(hub)
    assert sorted(i.state for i in rows) == ["published", "quarantined"]
    (published,) = [i for i in rows if i.state == "published"]
    assert published.file_id is not None
    out = pydicom.dcmread(io.BytesIO(archived_bytes(hub, published.file_id)))
    assert (out.pixel_array[0:4, 0:8] == 0).all() and out.pixel_array[4:, 8:].any()
    assert "113101" in {item.CodeValue for item in out.DeidentificationMethodCodeSequence}


# -- 2. every setting, hostile values of its own shape -------------------------------------------------------
_HUGE = "x" * 100_000
_LEAVES: list[tuple[str, Any, Any]] = [  # (label, a string leaf, a number leaf)
    ("dashes", "-" * 36, -1),
    ("zeros", "0" * 36, 0),
    ("huge", _HUGE, 10 ** 40),
    ("nan", "\x00\x1f", float("nan")),
    ("infinity", AUDITOR, float("inf")),
    ("-infinity", "../../etc/passwd", float("-inf")),
    ("negative", "", -(10 ** 18)),
    ("float", "ünï\u202e🙂", 1e308),
]


def _shapes(schema: dict, defs: dict, string: Any, number: Any, depth: int = 0) -> list[Any]:
    """Values of the schema's JSON shape with every free leaf hostile (each union branch once); constants and
    enums keep a valid value so a discriminated union reaches its branch's fields."""
    if depth > 12:
        return [string]
    if "$ref" in schema:
        return _shapes(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, string, number, depth + 1)
    if "const" in schema:
        return [schema["const"]]
    if "enum" in schema:
        return [schema["enum"][0]]
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return [v for branch in schema[union] if branch.get("type") != "null"
                    for v in _shapes(branch, defs, string, number, depth + 1)] or [None]
    kind = schema.get("type")
    if kind == "array":
        prefix = schema.get("prefixItems")
        if prefix:
            return [[_shapes(s, defs, string, number, depth + 1)[0] for s in prefix]]
        items = _shapes(schema.get("items", {}), defs, string, number, depth + 1)
        many = [[items[0]] * 5000] if string is not _HUGE else []  # a huge list (of huge strings: 413)
        return [[item] for item in items] + many  # one entry each
    if kind == "object":
        props = schema.get("properties", {})
        if not props:
            return [{"k": string}]
        choices = {k: _shapes(s, defs, string, number, depth + 1) for k, s in props.items()}
        width = max(len(c) for c in choices.values())
        return [{k: c[i % len(c)] for k, c in choices.items()} for i in range(width)]
    if kind in ("integer", "number"):
        return [number]
    if kind == "boolean":
        return [number]  # a number where a boolean goes
    return [string]


def _hostile_bodies(key: str) -> list[tuple[str, str]]:
    schema = SETTINGS[key].adapter.json_schema()
    defs = schema.get("$defs", {})
    bodies = [(f"{label}:{n}", _value(v)) for label, string, number in _LEAVES
              for n, v in enumerate(_shapes(schema, defs, string, number))]
    deep = "[" * 5000 + "]" * 5000
    bodies += [("deep", '{"value": ' + deep + "}"), ("deep-object", '{"value": ' + '{"a": ' * 3000 + "1"
                                                                     + "}" * 3000 + "}"),
               ("nan", _value(float("nan"))), ("infinity", '{"value": Infinity}'), ("-1", _value(-1)),
               ("ids", _value(["-" * 36, "0" * 36])), ("strings", _value([_HUGE] * 8)),
               ("object", _value({"-" * 36: "0" * 36})), ("null", _value(None))]
    return bodies


@pytest.mark.parametrize("key", SETTING_KEYS)
def test_every_setting_answers_hostile_values_with_a_4xx(app, hub, people, key: str) -> None:
    alice, bob = people("alice"), people("bob")
    make_project(hub, "lung", "alice")
    with transaction(hub.sessions) as s:  # bob a member, so user ids of members exist too
        lung = s.scalar(select(Project.id).where(Project.slug == "lung"))
        s.add(Membership(project_id=lung, user_id=bob.user.id, role="member", delegated_rights=[]))
    client = TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False)
    tok = token_for(hub, alice)
    answers = {label: _put(client, tok, key, body) for label, body in _hostile_bodies(key)}
    assert {label: r.status_code for label, r in answers.items() if r.status_code >= 500} == {}, key
    # whatever was accepted, the settings still list and the project's pages still render
    assert client.get("/api/v1/projects/lung/settings", headers=bearer(tok)).status_code == 200
    assert client.get("/api/v1/projects/lung", headers=bearer(tok)).status_code == 200


@pytest.mark.parametrize("bad", ["-" * 36, "0" * 36, "g" * 32, "0" * 31])
def test_airlock_reviewers_refuse_ids_that_are_not_uuids(app, hub, people, bad: str) -> None:
    alice = people("alice")
    make_project(hub, "lung", "alice")
    client = TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False)
    r = _put(client, token_for(hub, alice), "airlock_reviewers", _value([bad]))
    assert r.status_code == 422, r.text
    # a real id (upper case, or without dashes) is saved in its one canonical form
    r = _put(client, token_for(hub, alice), "airlock_reviewers", _value([alice.user.id.hex.upper()]))
    assert r.status_code == 200, r.text
    assert r.json()["value"] == [str(alice.user.id)]
