"""The authorisation decision's cheaper reads (issue 16): the token and its user in one statement; the read
check's row queries, run on the session's connection, still see the session's unflushed changes."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import event

from conftest import token_for
from strongroom.archive import authz
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.identity import service as identity
from strongroom.identity.models import User
from strongroom.projects import service as projects
from strongroom.projects.models import Membership


def _principal(s, person):  # type: ignore[no-untyped-def]
    fake = type("S", (), {"mfa_at": dt.datetime.now(dt.UTC), "id_hash": "t0000000"})()
    return identity.session_principal(fake, s.get(User, person.user.id), "127.0.0.1")


def test_token_check_reads_token_and_user_in_one_statement(hub, people):
    alice = people("alice")
    token = token_for(hub, alice)
    statements: list[str] = []
    with hub.sessions() as s:
        engine = s.get_bind()

        def count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
            statements.append(statement)

        event.listen(engine, "before_cursor_execute", count)
        try:
            principal = identity.authenticate_token(s, token, "127.0.0.1", use_audit="window")
        finally:
            event.remove(engine, "before_cursor_execute", count)
        assert principal.user.id == alice.user.id
        s.rollback()
    # (the window's first use also writes its token.used event: the audit chain's head is read for that)
    reads = [x for x in statements if x.lstrip().upper().startswith("SELECT") and "audit_head" not in x]
    assert len(reads) == 1 and "FROM api_tokens" in reads[0] and "JOIN users" in reads[0]


def test_read_check_sees_an_unflushed_membership(hub, people):
    alice, bob = people("alice"), people("bob")
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="proj-1", name="P1", pi="alice", ethics_ref="E",
                                end_date=dt.date.today() + dt.timedelta(days=30))
    with transaction(hub.sessions) as s:
        reader, pi = _principal(s, bob), _principal(s, alice)
        access = projects.open_project(s, pi, "proj-1")
        s.add(Membership(project_id=access.project.id, user_id=bob.user.id, role="member"))  # pending, unflushed
        assert s.new
        assert authz.readable_projects(s, reader) == {access.project.id}
        s.rollback()
    with hub.sessions() as s:
        assert authz.readable_projects(s, _principal(s, bob)) == set()
