"""The audit chain: appends in order, and `strongroom audit verify` finds every kind of tampering."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import text

from strongroom.audit import service as audit
from strongroom.audit.service import Actor
from strongroom.db import transaction


def _seed(hub, n: int = 6) -> None:  # noqa: ANN001
    with transaction(hub.sessions) as s:
        for i in range(n):
            audit.record(s, Actor.system("seed"), f"test.event{i}", details={"i": i})


def _verify_cli(settings) -> subprocess.CompletedProcess:  # noqa: ANN001
    env = {**os.environ, "STRONGROOM_DATABASE_URL": settings.effective_database_url,
           "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(),
           "STRONGROOM_VAR_DIR": str(settings.var_dir), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "strongroom.cli", "audit", "verify"], env=env,
                          capture_output=True, text=True, timeout=60)


def _sql(hub, statements: str) -> None:  # noqa: ANN001
    with hub.sessions() as s:
        for statement in statements.split("; "):
            s.execute(text(statement))
        s.commit()


def test_intact_chain_verifies(hub, settings):  # noqa: ANN001
    _seed(hub)
    result = _verify_cli(settings)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 events, chain intact" in result.stdout


@pytest.mark.parametrize(
    ("tamper", "expected_seq", "kind"),
    [
        ("UPDATE audit_events SET details = '{\"i\": 99}' WHERE seq = 3", "3", "edited"),
        ("UPDATE audit_events SET actor = 'someone else' WHERE seq = 2", "2", "edited"),
        ("DELETE FROM audit_events WHERE seq = 4", "5", "missing"),
        ("DELETE FROM audit_events WHERE seq = 6", "6", "truncated"),
        ("UPDATE audit_events SET seq = -1 WHERE seq = 2; UPDATE audit_events SET seq = 2 WHERE seq = 3; "
         "UPDATE audit_events SET seq = 3 WHERE seq = -1", "2", "edited"),
    ],
    ids=["edited-details", "edited-actor", "deleted-middle", "deleted-last", "reordered"],
)
def test_tampering_is_detected_and_located(hub, settings, tamper, expected_seq, kind):  # noqa: ANN001
    _seed(hub)
    _sql(hub, tamper)
    result = _verify_cli(settings)
    assert result.returncode == 1, result.stdout
    assert "FAILED" in result.stdout
    rows = [line for line in result.stdout.splitlines() if kind in line]
    assert rows and rows[0].split("│")[1].strip() == expected_seq, result.stdout


def test_recomputing_a_plain_hash_is_not_enough(hub):  # noqa: ANN001
    """The chain is keyed: someone with database access but not the hub key cannot re-seal an edit."""
    import hashlib

    _seed(hub, 3)
    with hub.sessions() as s:
        event = audit.query(s, limit=3)[-1]  # seq 1
        forged = hashlib.sha256(b"forged").hexdigest()
        s.execute(text("UPDATE audit_events SET details = '{}', hash = :h WHERE seq = 1"), {"h": forged})
        s.execute(text("UPDATE audit_events SET prev_hash = :h WHERE seq = 2"), {"h": forged})
        s.commit()
        report = audit.verify(s)
    assert not report.ok and {p.seq for p in report.problems} >= {1, 2}
    assert event.seq == 1


def test_queries_filter_by_project_and_user(hub, people):  # noqa: ANN001
    import uuid

    alice = people("alice")
    pid = uuid.uuid4()
    with transaction(hub.sessions) as s:
        audit.record(s, Actor(alice.user.id, "alice"), "x.one", project_id=pid)
        audit.record(s, Actor.system(), "x.two", subject_user_id=alice.user.id)
        audit.record(s, Actor.system(), "x.three")
    with hub.sessions() as s:
        assert [e.action for e in audit.query(s, project_id=pid)] == ["x.one"]
        mine = [e.action for e in audit.query(s, user_id=alice.user.id, action_prefix="x.")]
        assert mine == ["x.two", "x.one"]
        page1 = audit.query(s, limit=2)
        page2 = audit.query(s, limit=2, before_seq=page1[-1].seq)
        assert page1[0].seq > page1[1].seq > page2[0].seq


def test_concurrent_writers_keep_one_chain(hub):  # noqa: ANN001
    from concurrent.futures import ThreadPoolExecutor

    def write(i: int) -> None:
        with transaction(hub.sessions) as s:
            audit.record(s, Actor.system(f"t{i}"), "concurrent", details={"i": i})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(40)))
    with hub.sessions() as s:
        report = audit.verify(s)
    assert report.ok and report.checked == 40
