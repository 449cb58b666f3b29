"""`strongroom admin rotate-secret`: the hub secret rotates, and everything it protects follows it.

The audit chain keeps verifying across the rotation, but each stretch only under its own key (a retired secret
vouches for nothing written after it); a process still holding the old secret writes nothing and is not ready;
TOTP keeps working, recovery codes are replaced (their users told), archive key files move to the new passphrase;
an interrupted rotation completes when run again.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from conftest import PASSWORD
from helpers import form_post
from imaging_support import make_project
from strongroom import hubsecret
from strongroom.app import create_app
from strongroom.archive import c4gh
from strongroom.archive import keys as archive_keys
from strongroom.audit import outbox
from strongroom.audit import service as audit
from strongroom.audit.models import AuditEvent, AuditHead
from strongroom.audit.service import Actor
from strongroom.config import Settings
from strongroom.db import transaction, utcnow
from strongroom.hub import Hub
from strongroom.identity import service as identity
from strongroom.identity.models import LocalCredential, User
from strongroom.jobs import service as jobs
from strongroom.jobs.models import Job
from strongroom.jobs.registry import job
from strongroom.jobs.runner import Runner
from strongroom.projects.models import Project
from strongroom.workspaces.models import Workspace
from test_cli_and_ops import run_cli

NEW_SECRET = "rotated-" + "n" * 40


@job("test.audited")
def _audited(ctx, payload):
    with ctx.transaction() as s:
        audit.record(s, Actor.system("test"), "test.audited")


def _runner(hub: Hub) -> Runner:
    runner = Runner(hub, lease_seconds=10, name="test")
    runner.kinds = {"test.audited": runner.kinds["test.audited"]}  # only this test's job, not the e-mails
    return runner


def _login(app, person) -> int:
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    assert form_post(c, "/login", {"username": person.username, "password": PASSWORD}).status_code == 303
    return form_post(c, "/login/mfa", {"code": person.code()}).status_code


def _recovery_login(app, person, code: str) -> int:
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    form_post(c, "/login", {"username": person.username, "password": PASSWORD})
    return form_post(c, "/login/mfa", {"code": code}).status_code


def _forge_after_the_head(hub: Hub, key: bytes) -> int:
    """What someone holding a retired secret and the database could do: append an event keyed by it."""
    with transaction(hub.sessions) as s:
        head = s.get(AuditHead, 1)
        event = AuditEvent(seq=head.seq + 1, at=utcnow(), action="project.deleted", outcome="ok", actor_id=None,
                           actor="forger", subject_user_id=None, project_id=None, target=None, ip=None,
                           details={}, prev_hash=head.hash)
        event.hash = audit.compute_hash(key, event)
        s.add(event)
        head.seq, head.hash = event.seq, event.hash
        return event.seq


def test_the_hub_secret_rotates_and_everything_it_protects_follows(app, hub, people, settings, tmp_path):
    alice = people("alice")
    with transaction(hub.sessions) as s:
        recovery = identity.regenerate_recovery_codes(s, s.get(User, alice.user.id), hub.secret)
    archive_keys.ensure_key(hub)
    with hub.sessions() as s:
        [(fingerprint, archive_pair)] = archive_keys.hub_keys(hub, s).pairs
        [key_file] = archive_keys.key_files(hub, s)
    secret_file = tmp_path / "new.secret"
    secret_file.write_text(NEW_SECRET + "\n")

    # A configured secret is not replaced behind the operator's back: the new one must be given.
    refused = run_cli(settings, "admin", "rotate-secret")
    assert refused.returncode == 2 and "--new-secret-file" in refused.stderr
    for bad, why in (("short", "at least 32"), ("change-me-" + "0" * 40, "placeholder"),
                     (settings.secret_key.get_secret_value(), "the one in use")):
        (tmp_path / "bad.secret").write_text(bad)
        r = run_cli(settings, "admin", "rotate-secret", "--new-secret-file", str(tmp_path / "bad.secret"))
        assert r.returncode == 2 and why in r.stderr, r.stderr
    # A TOTP seed the secret in use cannot open refuses the rotation before anything moved: the key files and the
    # chain stay as they were, and the operator is told what to do.
    bob = people("bob")
    with transaction(hub.sessions) as s:
        s.get(LocalCredential, bob.user.id).totp_secret = b"not a sealed seed"
    unreadable = run_cli(settings, "admin", "rotate-secret", "--new-secret-file", str(secret_file))
    assert unreadable.returncode == 2 and "strongroom admin reset-mfa bob" in unreadable.stderr, unreadable.stderr
    c4gh.load_private_key(key_file, hubsecret.archive_passphrase(hub.secret))
    with hub.sessions() as s:
        assert audit.chain_key_id(s) == hubsecret.secret_id(hub.secret)
    assert run_cli(settings, "admin", "reset-mfa", "bob").returncode == 0
    # A workspace's notebook server holds a token derived from the secret: not while one runs.
    make_project(hub, "notebooks", pi="alice")
    with transaction(hub.sessions) as s:
        project = s.scalar(select(Project).where(Project.slug == "notebooks"))
        running = Workspace(project_id=project.id, user_id=alice.user.id, state="running", launcher="local",
                            isolation="none", started_at=utcnow())
        s.add(running)
    busy = run_cli(settings, "admin", "rotate-secret", "--new-secret-file", str(secret_file))
    assert busy.returncode == 2 and "workspace" in busy.stderr
    with transaction(hub.sessions) as s:
        s.get(Workspace, running.id).state = "stopped"
    with hub.sessions() as s:
        assert audit.chain_key_id(s) == hubsecret.secret_id(hub.secret)  # nothing moved yet
        s.rollback()
        before = audit.count(s)

    rotated = run_cli(settings, "admin", "rotate-secret", "--new-secret-file", str(secret_file))
    assert rotated.returncode == 0, rotated.stderr
    old_id, new_id = hubsecret.secret_id(hub.secret), hubsecret.secret_id(NEW_SECRET.encode())
    assert new_id in rotated.stdout and "STRONGROOM_SECRET_KEY" in rotated.stdout
    with hub.sessions() as s:
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == audit.SECRET_ROTATED)).all()
        assert event.seq == before + 1 and event.target == f"hub-secret:{new_id}"
        assert event.details["from"] == old_id and event.details["to"] == new_id
        assert event.details["totp_seeds"] == 1 and event.details["recovery_codes_deleted"] == 10
        assert event.details["archive_key_files"] == 1
        [mail] = [j.payload for j in s.scalars(select(Job).where(Job.kind == "notify.email"))
                  if j.payload["template"] == "recovery_codes_reset"]
        assert mail["to"] == "alice@example.org"
    retired = hubsecret.retired_dir(settings) / f"{old_id}.json"
    assert oct(retired.stat().st_mode & 0o777) == "0o600" and oct(retired.parent.stat().st_mode & 0o777) == "0o700"
    assert settings.secret_key.get_secret_value() not in retired.read_text()  # derived keys only

    # The process still holding the old secret: out of service, and it cannot write a single event.
    with TestClient(app, base_url="http://127.0.0.1:8000") as stale:
        assert stale.get("/readyz").json() == {"status": "stale-secret", "database": "ok"}
        assert stale.get("/readyz").status_code == 503
    with pytest.raises(audit.StaleSecret, match="rotated"), transaction(hub.sessions) as s:
        audit.record(s, Actor.system("stale"), "test.stale")
    with hub.sessions() as s:
        assert audit.count(s) == before + 1
        report = audit.verify(s)  # it can check what came before, and says it cannot check what follows
    assert [p.kind for p in report.problems] == ["unknown-key"]
    # Something already done that the stale process must audit after the fact waits in the outbox, not lost.
    assert outbox.record_after(hub, Actor.system("stale"), "test.after-the-fact") is False
    with transaction(hub.sessions) as s:  # a stale worker gives the job back untried and stops
        jobs.enqueue(s, "test.audited", {})
    stale_worker = _runner(hub)
    assert stale_worker.run_until_idle() == 0 and stale_worker.stale
    with hub.sessions() as s:
        waiting = s.scalar(select(Job).where(Job.kind == "test.audited"))
        assert (waiting.status, waiting.attempts, waiting.locked_by) == ("queued", 0, None)

    # The hub started again with the new secret.
    new_settings = settings.model_copy(update={"secret_key": SecretStr(NEW_SECRET)})
    new_app = create_app(new_settings, run_jobs=False)
    new_hub: Hub = new_app.state.hub
    with TestClient(new_app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/readyz").status_code == 200
    assert _runner(new_hub).run_until_idle() == 1  # the job the stale worker gave back
    assert outbox.replay(new_hub) == 1  # what `serve`, `worker` and `dicom serve` do at start
    assert _login(new_app, alice) == 303  # the TOTP seed was re-encrypted
    assert _recovery_login(new_app, alice, recovery[0]) == 401  # the codes were deleted
    archive_keys._cache.clear()
    with new_hub.sessions() as s:
        assert archive_keys.hub_keys(new_hub, s).pairs[0][1].secret == archive_pair.secret
    with pytest.raises(c4gh.KeyFileError, match="wrong passphrase"):
        c4gh.load_private_key(key_file, hubsecret.archive_passphrase(hub.secret))
    verified = run_cli(new_settings, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    with new_hub.sessions() as s:
        report = audit.verify(s)
    assert report.ok and report.checked == audit_count(new_hub) > before + 1  # the login's events too

    # Run again (as after an interruption), with the old secret still configured: it completes, nothing twice.
    again = run_cli(settings, "admin", "rotate-secret", "--new-secret-file", str(secret_file))
    assert again.returncode == 0 and "completed" in again.stdout, again.stderr
    with new_hub.sessions() as s:
        assert len(s.scalars(select(AuditEvent).where(AuditEvent.action == audit.SECRET_ROTATED)).all()) == 1
    archive_keys._cache.clear()
    with new_hub.sessions() as s:
        assert archive_keys.hub_keys(new_hub, s).current[0] == fingerprint

    # A retired secret vouches for nothing after its retirement: an event keyed by it is caught.
    forged = _forge_after_the_head(new_hub, hubsecret.audit_key(hub.secret))
    with new_hub.sessions() as s:
        report = audit.verify(s)
    assert [(p.seq, p.kind) for p in report.problems] == [(forged, "edited")]


def audit_count(hub: Hub) -> int:
    with hub.sessions() as s:
        return audit.count(s)


def test_a_hub_keeping_its_secret_in_a_file_gets_a_new_one_and_resumes_an_interrupted_rotation(tmp_path):
    """Without a configured secret the hub keeps it in var/secret.key: the rotation picks the new one itself,
    writes it to a pending file first (a rotation that stopped resumes with that one) and replaces the file last."""
    settings = Settings(var_dir=tmp_path / "var", jobs={"embedded": False})
    from strongroom.migrate import upgrade

    upgrade(settings.effective_database_url)
    hub = Hub.from_settings(settings)
    old = hub.secret
    with transaction(hub.sessions) as s:
        audit.record(s, Actor.system("t"), "test.before")
    pending = settings.secret_key_path.with_name("secret.key.new")
    pending.write_text("p" * 64)  # a rotation that stopped right after choosing its secret
    done = run_cli(settings, "admin", "rotate-secret", extra_env={"STRONGROOM_SECRET_KEY": ""})
    assert done.returncode == 0, done.stderr
    assert settings.secret_key_path.read_text() == "p" * 64 and not pending.exists()
    assert oct(settings.secret_key_path.stat().st_mode & 0o777) == "0o600"
    fresh = Hub.from_settings(settings)
    assert fresh.secret != old and [r.id for r in fresh.retired] == [hubsecret.secret_id(old)]
    with transaction(fresh.sessions) as s:
        audit.record(s, Actor.system("t"), "test.after")
    with fresh.sessions() as s:
        assert audit.verify(s).ok
    again = run_cli(settings, "admin", "rotate-secret", extra_env={"STRONGROOM_SECRET_KEY": ""})
    assert again.returncode == 0, again.stderr  # a second rotation: a new random secret, the chain still whole
    newest = Hub.from_settings(settings)
    assert newest.secret not in (old, b"p" * 64) and len(newest.retired) == 2
    with newest.sessions() as s:
        assert audit.verify(s).ok

