"""The audit chain: appends in order, and `strongroom audit verify` finds every kind of tampering."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import select, text

from strongroom.audit import checkpoints
from strongroom.audit import service as audit
from strongroom.audit.service import Actor
from strongroom.db import transaction
from support.seaweed import seaweedfs  # noqa: F401 - session fixture


def _seed(hub, n: int = 6) -> None:
    with transaction(hub.sessions) as s:
        for i in range(n):
            audit.record(s, Actor.system("seed"), f"test.event{i}", details={"i": i})


def _verify_cli(settings, *args: str) -> subprocess.CompletedProcess:
    return _cli(settings, "audit", "verify", *args)


def _cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STRONGROOM_DATABASE_URL": settings.effective_database_url,
           "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value(),
           "STRONGROOM_VAR_DIR": str(settings.var_dir), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "strongroom.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def _sql(hub, statements: str) -> None:
    with hub.sessions() as s:
        for statement in statements.split("; "):
            s.execute(text(statement))
        s.commit()


def test_intact_chain_verifies(hub, settings):
    _seed(hub)
    result = _verify_cli(settings)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 events, chain intact" in result.stdout


MOVE_HEAD_TO_4 = "UPDATE audit_head SET seq = 4, hash = (SELECT hash FROM audit_events WHERE seq = 4)"


@pytest.mark.parametrize(
    ("tamper", "expected_seq", "kind"),
    [
        ("UPDATE audit_events SET details = '{\"i\": 99}' WHERE seq = 3", "3", "edited"),
        ("UPDATE audit_events SET actor = 'someone else' WHERE seq = 2", "2", "edited"),
        ("DELETE FROM audit_events WHERE seq = 1", "2", "missing"),
        ("DELETE FROM audit_events WHERE seq = 4", "5", "missing"),
        ("DELETE FROM audit_events WHERE seq = 6", "6", "truncated"),
        ("UPDATE audit_events SET seq = -1 WHERE seq = 2; UPDATE audit_events SET seq = 2 WHERE seq = 3; "
         "UPDATE audit_events SET seq = 3 WHERE seq = -1", "2", "edited"),
        # the chain that remains is perfect: only the checkpoint outside the database knows better
        (f"DELETE FROM audit_events WHERE seq > 4; {MOVE_HEAD_TO_4}", "5", "truncated"),
        ("DELETE FROM audit_events; UPDATE audit_head SET seq = 0, hash = '" + "0" * 64 + "'", "1", "truncated"),
        ("DELETE FROM audit_events; DELETE FROM audit_head", "1", "truncated"),
    ],
    ids=["edited-details", "edited-actor", "deleted-first", "deleted-middle", "deleted-last", "reordered",
         "tail-cut-head-moved-back", "wiped-head-reset", "wiped-head-deleted"],
)
def test_tampering_is_detected_and_located(hub, settings, tamper, expected_seq, kind):
    _seed(hub)
    assert _cli(settings, "audit", "checkpoint").returncode == 0
    _sql(hub, tamper)
    result = _verify_cli(settings)
    assert result.returncode == 1, result.stdout
    assert "FAILED" in result.stdout
    rows = [line for line in result.stdout.splitlines() if kind in line]
    assert rows and rows[0].split("│")[1].strip() == expected_seq, result.stdout


def test_recomputing_a_plain_hash_is_not_enough(hub):
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


def test_queries_filter_by_project_and_user(hub, people):
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


def test_concurrent_writers_keep_one_chain(hub):
    from concurrent.futures import ThreadPoolExecutor

    def write(i: int) -> None:
        with transaction(hub.sessions) as s:
            audit.record(s, Actor.system(f"t{i}"), "concurrent", details={"i": i})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(40)))
    with hub.sessions() as s:
        report = audit.verify(s)
    assert report.ok and report.checked == 40


def test_verify_reports_how_far_the_checkpoints_prove(hub, settings):
    _seed(hub, 4)
    result = _verify_cli(settings)
    assert result.returncode == 0 and "no checkpoint found" in result.stdout, result.stdout
    written = _cli(settings, "audit", "checkpoint")
    assert written.returncode == 0 and "event 4" in written.stdout, written.stdout + written.stderr
    assert '"event": "audit.checkpoint"' in written.stdout + written.stderr  # the structured log's copy
    assert "unchanged" in _cli(settings, "audit", "checkpoint").stdout  # nothing new: nothing written
    _seed(hub, 3)
    result = _verify_cli(settings)
    assert result.returncode == 0, result.stdout
    assert "events 1–4 proven by the checkpoint of" in result.stdout
    assert "events 5–7 after it chained but not yet anchored" in result.stdout
    lines = (settings.var_dir / "audit-checkpoints.jsonl").read_text().splitlines()
    assert len(lines) == 1 and oct((settings.var_dir / "keys" / "audit-anchor.key").stat().st_mode)[-3:] == "600"


def test_rewritten_tail_differs_from_the_checkpoint(hub, settings):
    """Cut the tail, move the head back and append new events up to the old length: same count, but
    not the events the checkpoint signed."""
    _seed(hub)
    checkpoints.write_checkpoint(hub)
    _sql(hub, f"DELETE FROM audit_events WHERE seq > 4; {MOVE_HEAD_TO_4}")
    _seed(hub, 2)
    result = _verify_cli(settings)
    assert result.returncode == 1
    rows = [line for line in result.stdout.splitlines() if "anchor-mismatch" in line]
    assert rows and rows[0].split("│")[1].strip() == "6", result.stdout
    # and the hub refuses to anchor the shortened chain over the earlier checkpoint
    _sql(hub, f"DELETE FROM audit_events WHERE seq > 4; {MOVE_HEAD_TO_4}")
    refused = _cli(settings, "audit", "checkpoint")
    assert refused.returncode == 1 and "anchored 6" in refused.stderr, refused.stdout + refused.stderr


def test_bad_or_foreign_checkpoints_fail_verification(hub, settings, tmp_path):
    import json

    from strongroom.audit.anchor import AnchorKey

    _seed(hub)
    checkpoints.write_checkpoint(hub)
    path = settings.var_dir / "audit-checkpoints.jsonl"
    good = path.read_text()
    forged = json.loads(good)
    forged["seq"] = 3  # claims less than was signed: a signature over other bytes
    path.write_text(json.dumps(forged) + "\n")
    result = _verify_cli(settings)
    assert result.returncode == 1 and "bad-checkpoint" in result.stdout, result.stdout
    # signed, but by a key that is not the hub's
    other = AnchorKey.load_or_create(tmp_path / "other.key")
    path.write_text(other.sign(6, forged["head"], audit.utcnow()).to_json() + "\n")
    result = _verify_cli(settings)
    assert result.returncode == 1 and "bad-checkpoint" in result.stdout, result.stdout
    # verifiable elsewhere with the exported public key only
    path.write_text(good)
    public = _cli(settings, "audit", "public-key")
    assert public.returncode == 0 and "BEGIN PUBLIC KEY" in public.stdout
    (tmp_path / "hub.pub").write_text(public.stdout)
    assert _verify_cli(settings, "--public-key", str(tmp_path / "hub.pub")).returncode == 0
    (tmp_path / "other.pub").write_text(other.public_pem())
    assert _verify_cli(settings, "--public-key", str(tmp_path / "other.pub")).returncode == 1
    # across a rotation of the anchor key: checkpoints signed by the old key and by the new one, each
    # verified by its own key when both are given, and a failure with either alone
    path.write_text(good + other.sign(6, forged["head"], audit.utcnow()).to_json() + "\n")
    both = _verify_cli(settings, "--public-key", str(tmp_path / "hub.pub"), "--public-key", str(tmp_path / "other.pub"))
    assert both.returncode == 0, both.stdout
    for alone in ("hub.pub", "other.pub"):
        assert _verify_cli(settings, "--public-key", str(tmp_path / alone)).returncode == 1


def test_the_anchor_key_rotates_and_earlier_checkpoints_keep_anchoring_the_chain(hub, settings, tmp_path):
    """`strongroom audit rotate-anchor-key`: new checkpoints are signed with the new key, the old key's public
    half stays beside it (never its private half), so verification on the hub passes without moving anything
    aside, an auditor verifies with both exported keys, and an end cut off after the rotation is still caught
    by the checkpoint the old key signed."""
    import json

    from strongroom.audit.models import AuditEvent

    _seed(hub)
    checkpoints.write_checkpoint(hub)
    (tmp_path / "old.pub").write_text(_cli(settings, "audit", "public-key").stdout)
    rotated = _cli(settings, "audit", "rotate-anchor-key")
    assert rotated.returncode == 0, rotated.stderr
    (tmp_path / "new.pub").write_text(_cli(settings, "audit", "public-key").stdout)
    lines = [json.loads(line) for line in (settings.var_dir / "audit-checkpoints.jsonl").read_text().splitlines()]
    assert len({cp["key_id"] for cp in lines}) == 2 and lines[-1]["seq"] == 7  # the rotation's own event, anchored
    retired = list(checkpoints.retired_dir(settings).iterdir())
    assert len(retired) == 1 and "PRIVATE" not in retired[0].read_text()
    assert (tmp_path / "old.pub").read_text() == retired[0].read_text()
    assert _verify_cli(settings).returncode == 0
    both = _verify_cli(settings, "--public-key", str(tmp_path / "old.pub"), "--public-key", str(tmp_path / "new.pub"))
    assert both.returncode == 0, both.stdout
    with hub.sessions() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "audit.anchor_key.rotated")).one()
    assert event.details["current"] == lines[-1]["key_id"] != event.details["previous"]

    # the newest checkpoint (new key) is lost and the chain's end cut back: the old key's checkpoint still holds
    (settings.var_dir / "audit-checkpoints.jsonl").write_text(json.dumps(lines[0]) + "\n")
    _sql(hub, "DELETE FROM audit_events WHERE seq = 7; UPDATE audit_head SET seq = 6, "
              "hash = (SELECT hash FROM audit_events WHERE seq = 6) WHERE id = 1")
    assert _verify_cli(settings).returncode == 0  # nothing anchored beyond 6 any more: intact
    _sql(hub, "DELETE FROM audit_events WHERE seq = 6; UPDATE audit_head SET seq = 5, "
              "hash = (SELECT hash FROM audit_events WHERE seq = 5) WHERE id = 1")
    cut = _verify_cli(settings)
    assert cut.returncode == 1 and "truncated" in cut.stdout, cut.stdout
    with pytest.raises(checkpoints.AnchorRefused):
        checkpoints.write_checkpoint(hub)  # the new key does not lift the old anchor


def test_hourly_verification_reads_in_pages_and_lets_writers_in(hub):
    """Writers append between the verifier's pages (each page is its own read transaction): they are
    not blocked, and the walk catches up with them instead of calling them a broken chain."""
    _seed(hub, 5)
    appended = []

    def write_meanwhile(_n: int) -> None:
        if len(appended) < 3:
            with transaction(hub.sessions) as s:
                appended.append(audit.record(s, Actor.system("writer"), "during.verify").seq)

    with hub.sessions() as s:
        report = audit.verify(s, batch=2, progress=write_meanwhile)
        assert not s.in_transaction()
    assert report.ok, report.problems
    assert appended and report.checked == 5 + len(appended)


def test_checkpoint_job_and_verify_job(hub):
    from strongroom.audit.jobs import checkpoint, verify_chain
    from strongroom.jobs.context import JobContext

    _seed(hub)
    ctx = JobContext(job_id=1, attempt=1, worker_id="t", hub=hub)
    assert checkpoint(ctx, {})["seq"] == 6
    assert verify_chain(ctx, {})["ok"] is True
    _sql(hub, f"DELETE FROM audit_events WHERE seq > 4; {MOVE_HEAD_TO_4}")
    assert verify_chain(ctx, {})["ok"] is False
    with pytest.raises(checkpoints.AnchorRefused):
        checkpoint(ctx, {})
    with hub.sessions() as s:
        outcome = audit.query(s, action_prefix="audit.verified", limit=1)[0]
    assert outcome.outcome == "failed" and "5:truncated" in outcome.details["problems"]


@pytest.mark.slow
def test_s3_checkpoints_outlive_the_file_and_are_never_overwritten(settings, seaweedfs, tmp_path):  # noqa: F811
    """SeaweedFS has no Object Lock: checkpoints go in as write-once keys, and say so."""
    from strongroom.archive.backend import storage_from
    from strongroom.config import StorageSettings
    from strongroom.hub import Hub

    storage = StorageSettings(kind="s3", endpoint_url=seaweedfs.endpoint_url, access_key=seaweedfs.access_key,
                              secret_key=seaweedfs.secret_key, region=seaweedfs.region,
                              bucket=f"anchor{os.getpid()}{tmp_path.name[-6:]}".lower().replace("_", ""))
    s3_settings = settings.model_copy(update={"archive": settings.archive.model_copy(update={"storage": storage})})
    hub = Hub.from_settings(s3_settings)
    _seed(hub)
    written = checkpoints.write_checkpoint(hub)
    assert any("write-once key, no object lock" in sink for sink in written.sinks), written.sinks
    s3 = storage_from(storage, settings.var_dir)
    [key] = list(s3.iter_keys("audit-checkpoints/"))
    with pytest.raises(FileExistsError):
        s3.put_retained(key, b"{}", audit.utcnow())
    # the local file is lost and the database wiped: the S3 copy still convicts
    (settings.var_dir / "audit-checkpoints.jsonl").unlink()
    _sql(hub, "DELETE FROM audit_events; UPDATE audit_head SET seq = 0, hash = '" + "0" * 64 + "'")
    anchors, bad = checkpoints.gather(s3_settings, checkpoints.anchor_key(s3_settings))
    assert not bad and [a.seq for a in anchors] == [6]
    with hub.sessions() as s:
        report = audit.verify(s, anchors=anchors)
    assert [p.kind for p in report.problems] == ["truncated"] and report.checked == 0
