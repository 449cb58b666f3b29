"""A secret someone sends — a TOTP code, a CSRF token, a signed cookie's MAC, an OAI resumption token, the
metrics token — compared with a non-ASCII character in it is refused, never a 500.

``secrets.compare_digest`` raises TypeError for two str when one holds a non-ASCII character; a header or a
cookie is read as Latin-1 and a form or query as UTF-8, so anyone could send one. Every such comparison goes
through ``identity.secrets.equal_secrets`` (UTF-8 bytes, constant time)."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from conftest import PASSWORD, browser_session
from helpers import csrf_for, form_post
from strongroom.deps import FLASH_COOKIE, SESSION_COOKIE
from strongroom.identity.secrets import equal_secrets
from strongroom.workspaces import origin

# what a browser or a script may put where a secret goes: superscript digits (digits to str.isdigit()),
# Arabic-Indic digits, a Latin-1 letter, an emoji
HOSTILE = ["²²²²²²", "١٢٣٤٥٦", "12345é", "1234😀"]


def test_equal_secrets_compares_any_text() -> None:
    assert equal_secrets("abc", "abc") and not equal_secrets("abc", "abd")
    for text in HOSTILE:
        assert not equal_secrets(text, "123456")
        assert equal_secrets(text, text)
    assert not equal_secrets("\ud800", "x")  # a lone surrogate (JSON may carry one) is text too


@pytest.mark.parametrize("code", HOSTILE)
def test_a_totp_code_with_non_ascii_digits_is_refused_at_login(app, people, code: str) -> None:
    people("alice")
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    assert form_post(c, "/login", {"username": "alice", "password": PASSWORD}).headers["location"].startswith(
        "/login/mfa")
    r = form_post(c, "/login/mfa", {"code": code})
    assert r.status_code == 401, r.text


def test_a_totp_code_with_non_ascii_digits_is_refused_at_enrolment(app, people) -> None:
    people("bob", mfa=False)
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    assert form_post(c, "/login", {"username": "bob", "password": PASSWORD}).headers["location"] == "/mfa/enrol"
    assert c.get("/mfa/enrol").status_code == 200  # the enrolment begins with its page
    for code in HOSTILE:
        r = form_post(c, "/mfa/enrol", {"code": code})
        assert r.status_code == 422 and "not valid" in r.text


@pytest.mark.parametrize("sent", [b"\xc3\xa9" * 8, b"x\xff"])
def test_a_csrf_token_with_latin1_bytes_is_refused(app, hub, people, sent: bytes) -> None:
    """The form's token (a field, UTF-8) and the page-API header (Latin-1)."""
    carol = people("carol")
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    csrf_for(c)
    r = c.post("/login", data={"username": "carol", "password": PASSWORD, "csrf_token": sent.decode("latin-1")},
               follow_redirects=False)
    assert r.status_code == 403
    c.cookies.set(SESSION_COOKIE, browser_session(hub, carol))
    r = c.post("/logout", data={"csrf_token": sent.decode("latin-1")}, follow_redirects=False)
    assert r.status_code == 403
    r = c.post("/api/v1/projects/none/uploads", json={"path": "a", "size": 1},
               headers=[(b"x-csrf-token", sent)])
    assert r.status_code == 403, r.text


def test_a_flash_cookie_with_latin1_bytes_is_ignored(app, client) -> None:
    r = client.get("/login", headers=[(b"cookie", FLASH_COOKIE.encode() + b"=eyJ0Ijoi.\xc3\xa9\xff")])
    assert r.status_code == 200


def test_a_session_cookie_with_latin1_bytes_is_nobody(app, client) -> None:
    r = client.get("/account", headers=[(b"cookie", SESSION_COOKIE.encode() + b"=\xc3\xa9")],
                   follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


@pytest.mark.parametrize("token", ["a.é", "é.é", "x." + "²" * 40])
def test_an_oai_resumption_token_with_non_ascii_text_is_a_protocol_error(client, token: str) -> None:
    for r in (client.get("/oai", params={"verb": "ListRecords", "resumptionToken": token}),
              client.post("/oai", data={"verb": "ListRecords", "resumptionToken": token})):
        assert r.status_code == 200 and "badResumptionToken" in r.text


def test_the_metrics_token_compared_with_latin1_bytes_is_refused(app, client, settings) -> None:
    settings.ops.metrics_token = SecretStr("metrics-" + "t" * 40)
    r = client.get("/metrics", headers=[(b"authorization", b"Bearer metrics-\xc3\xa9")])
    assert r.status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer metrics-" + "t" * 40}).status_code == 200


def test_a_workspace_cookie_with_non_ascii_text_names_no_session() -> None:
    wid = str(uuid.uuid4())
    secret = b"s" * 32
    for value in (f"{wid}.abc.é", f"{wid}.é.²²", f"{wid}.abc.\udcff"):
        assert origin.cookie_session(secret, wid, [value]) is None
