"""``[security] token_use_audit``: an accepted API-token use is audited once per token per window ("window", the
default) or on every request ("every"); revocation, expiry and a disabled account are checked on every request in
both modes, and refused uses are audited each time. Data-access events (downloads, reads) are not affected."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from conftest import bearer, token_for
from strongroom import decision_cache
from strongroom.app import create_app
from strongroom.archive import authz
from strongroom.audit.models import AuditEvent
from strongroom.db import open_session, transaction, utcnow
from strongroom.identity import service as identity
from strongroom.identity.models import ApiToken, User
from strongroom.projects import service as projects
from strongroom.projects.models import Membership


def _used(hub, prefix: str) -> list[AuditEvent]:
    with hub.sessions() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == "token.used",
                                                       AuditEvent.target == f"token:{prefix}")
                              .order_by(AuditEvent.seq)))


def _token(hub, plaintext: str) -> ApiToken:
    with hub.sessions() as s:
        token = s.scalar(select(ApiToken).where(ApiToken.prefix == plaintext.split("_")[1]))
        assert token is not None
        return token


def _move_last_use_back(hub, plaintext: str, seconds: int) -> None:
    """As if the token's last recorded use were ``seconds`` ago (the next window, without waiting for it)."""
    with transaction(hub.sessions) as s:
        s.execute(update(ApiToken).where(ApiToken.prefix == plaintext.split("_")[1])
                  .values(last_used_at=utcnow() - dt.timedelta(seconds=seconds)))


def test_window_mode_audits_each_tokens_first_use_per_window(app, hub, people, client: TestClient):
    assert hub.settings.security.token_use_audit == "window"  # the default
    window = hub.settings.security.token_use_window_seconds
    alice, bob = people("alice"), people("bob")
    ta, tb = token_for(hub, alice), token_for(hub, bob)
    for _ in range(5):
        assert client.get("/api/v1/projects", headers=bearer(ta)).status_code == 200
    assert client.get("/api/v1/projects", headers=bearer(tb)).status_code == 200

    events = _used(hub, ta.split("_")[1])
    assert len(events) == 1 and events[0].outcome == "ok"
    start, end = identity.use_window(events[0].at, window)
    assert events[0].details == {"window_start": start.isoformat(), "window_end": end.isoformat(),
                                 "window_seconds": window}
    assert events[0].subject_user_id == alice.user.id
    first_use = _token(hub, ta).last_used_at
    assert first_use is not None and start <= first_use < end
    assert len(_used(hub, tb.split("_")[1])) == 1  # every token has its own window

    # The next window: the first use there is recorded again, with its window. Only the database is moved back
    # here, not the clock: this process's decision cache still knows it recorded this window (a real next window
    # starts later than what it knows), so that knowledge is dropped as well.
    _move_last_use_back(hub, ta, window + 1)
    decision_cache.enable(hub.sessions.kw["bind"]).clear()
    assert client.get("/api/v1/projects", headers=bearer(ta)).status_code == 200
    assert client.get("/api/v1/projects", headers=bearer(ta)).status_code == 200
    events = _used(hub, ta.split("_")[1])
    assert len(events) == 2
    assert events[1].details["window_start"] == identity.use_window(events[1].at, window)[0].isoformat()
    assert _token(hub, ta).last_used_at > first_use


def test_revocation_expiry_and_disabled_accounts_are_checked_on_every_request(app, hub, people, client):
    alice, bob, carol = people("alice"), people("bob"), people("carol")
    ta, tb, tc = token_for(hub, alice), token_for(hub, bob), token_for(hub, carol)
    for t in (ta, tb, tc):  # each token's use in this window is recorded: later requests write nothing
        assert client.get("/api/v1/projects", headers=bearer(t)).status_code == 200

    # revoked through the API, within the same window
    assert client.delete(f"/api/v1/tokens/{ta.split('_')[1]}", headers=bearer(ta)).status_code == 204
    r = client.get("/api/v1/projects", headers=bearer(ta))
    assert r.status_code == 401 and r.json()["detail"] == "token revoked"
    with transaction(hub.sessions) as s:  # expired, within the same window
        s.execute(update(ApiToken).where(ApiToken.prefix == tb.split("_")[1])
                  .values(expires_at=utcnow() - dt.timedelta(seconds=1)))
        s.execute(update(User).where(User.id == carol.user.id).values(is_active=False))
    r = client.get("/api/v1/projects", headers=bearer(tb))
    assert r.status_code == 401 and r.json()["detail"] == "token expired"
    r = client.get("/api/v1/projects", headers=bearer(tc))
    assert r.status_code == 401 and r.json()["detail"] == "token account disabled"

    # refused uses are audited every time, in any mode
    assert client.get("/api/v1/projects", headers=bearer(ta)).status_code == 401
    denied = [e for e in _used(hub, ta.split("_")[1]) if e.outcome == "denied"]
    assert [e.details["reason"] for e in denied] == ["revoked", "revoked"]
    assert [e.details["reason"] for e in _used(hub, tb.split("_")[1]) if e.outcome == "denied"] == ["expired"]
    assert [e.details["reason"] for e in _used(hub, tc.split("_")[1])
            if e.outcome == "denied"] == ["account disabled"]


def test_every_mode_audits_every_use(settings, hub, people):
    every = settings.model_copy(update={"security": settings.security.model_copy(
        update={"token_use_audit": "every"})})
    alice = people("alice")
    token = token_for(hub, alice)
    with TestClient(create_app(every, run_jobs=False), base_url="http://127.0.0.1:8000") as c:
        for _ in range(3):
            assert c.get("/api/v1/projects", headers=bearer(token)).status_code == 200
    events = _used(hub, token.split("_")[1])
    assert len(events) == 3 and all(e.details == {} for e in events)


def test_concurrent_first_uses_write_one_event(hub, people):
    """Two requests that both read a stale last_used_at: only the one whose UPDATE moved it writes the event."""
    alice = people("alice")
    token = token_for(hub, alice)
    s1, s2 = open_session(hub.sessions, deferred=True), open_session(hub.sessions, deferred=True)
    try:
        s2.scalar(select(ApiToken).where(ApiToken.prefix == token.split("_")[1]))  # loads the row: never used
        s2.commit()  # (its loaded attributes stay as read: expire_on_commit=False)
        identity.authenticate_token(s1, token, "127.0.0.1", use_audit="window", window_seconds=3600)
        s1.commit()
        identity.authenticate_token(s2, token, "127.0.0.1", use_audit="window", window_seconds=3600)
        s2.commit()
    finally:
        s1.close()
        s2.close()
    assert len(_used(hub, token.split("_")[1])) == 1


def test_read_check_cache_lives_one_transaction_and_drops_on_rights_change(hub, people):
    """``authz.readable_projects`` is read once per transaction; a membership written in the same transaction
    (ORM or bulk) and a new transaction both see the database's current rights."""
    from sqlalchemy import delete

    from strongroom.audit.service import Actor

    alice, bob = people("alice"), people("bob")
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="proj-1", name="P1", pi="alice", ethics_ref="E",
                                end_date=dt.date.today() + dt.timedelta(days=30))

    def principal_of(s, person):
        fake = type("S", (), {"mfa_at": dt.datetime.now(dt.UTC), "id_hash": "t0000000"})()
        return identity.session_principal(fake, s.get(User, person.user.id), "127.0.0.1")

    with transaction(hub.sessions) as s:
        reader, pi = principal_of(s, bob), principal_of(s, alice)
        assert authz.readable_projects(s, reader) == set()
        access = projects.open_project(s, pi, "proj-1")
        pid = access.project.id
        # an ORM write of a membership: the cache drops
        projects.add_member(s, pi, access, "bob@example.org", fresh_minutes=10)
        s.flush()
        assert authz.readable_projects(s, reader) == {pid}
        s.execute(delete(Membership).where(Membership.user_id == bob.user.id))  # a bulk write drops it too
        assert authz.readable_projects(s, reader) == set()
        projects.add_member(s, pi, access, "bob@example.org", fresh_minutes=10)
    with open_session(hub.sessions, deferred=True) as s:  # as a GET request's
        assert authz.readable_projects(s, reader) == {pid}
        assert authz.readable_projects(s, reader) == {pid}  # cached: no query (see below)
        with transaction(hub.sessions) as other:  # another request removes bob
            other.execute(delete(Membership).where(Membership.user_id == bob.user.id))
        s.commit()  # this session's next transaction reads afresh
        assert authz.readable_projects(s, reader) == set()


def test_read_check_reads_memberships_once_per_transaction(hub, people):
    from sqlalchemy import event

    from strongroom.audit.service import Actor

    bob = people("bob")
    for slug in ("proj-1", "proj-2", "proj-3"):
        with transaction(hub.sessions) as s:
            projects.create_project(s, Actor.system("t"), slug=slug, name=slug, pi="bob", ethics_ref="E",
                                    end_date=dt.date.today() + dt.timedelta(days=30))
    statements: list[str] = []
    with hub.sessions() as s:
        fake = type("S", (), {"mfa_at": dt.datetime.now(dt.UTC), "id_hash": "t0000000"})()
        reader = identity.session_principal(fake, s.get(User, bob.user.id), "127.0.0.1")
        engine = s.get_bind()

        def count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
            statements.append(statement)

        event.listen(engine, "before_cursor_execute", count)
        try:
            first = authz.readable_projects(s, reader)
            for _ in range(10):
                assert authz.readable_projects(s, reader) == first
        finally:
            event.remove(engine, "before_cursor_execute", count)
    assert len(first) == 3
    assert len([x for x in statements if "memberships" in x]) == 1


@pytest.mark.parametrize("mode", ["window", "every"])
def test_mode_is_a_setting(settings, mode):
    from strongroom.config import Settings

    assert Settings(**{**settings.model_dump(), "security": {"token_use_audit": mode}}).security.token_use_audit == mode
