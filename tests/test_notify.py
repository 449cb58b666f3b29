"""E-mail notifications against a real SMTP server (aiosmtpd on a loopback port): every template
arrives with the right subject and recipient, handlers in daily mode get one digest, reminders
before an entitlement ends go out once, expiry is notified and audited once, and a send that fails
stays queued for a retry."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import threading
import uuid
from dataclasses import dataclass, field

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import select

from conftest import bearer, token_for
from strongroom.access.models import Entitlement
from strongroom.archive.models import Dataset
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.config import NotifySettings
from strongroom.db import transaction
from strongroom.jobs import service as jobs
from strongroom.jobs.models import Job
from strongroom.jobs.runner import Runner
from strongroom.notify import service as notify
from strongroom.notify.models import DigestItem
from strongroom.projects import service as projects
from strongroom.projects.models import Project
from support.live import free_port

END = dt.date.today() + dt.timedelta(days=365)


@dataclass
class Mailbox:
    port: int
    messages: list[email.message.EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd hook
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        with self.lock:
            self.messages.append(msg)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[email.message.EmailMessage]:
        return [m for m in self.messages if m["To"] == address]


def _authenticator(box: Mailbox):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == b"hub"
              and auth_data.password == b"s3cret")
        if ok:
            box.logins.append(auth_data.login.decode())
        return AuthResult(success=ok)

    return check


@pytest.fixture
def smtp():
    box = Mailbox(port=free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port, authenticator=_authenticator(box),
                            auth_require_tls=False, auth_required=False)
    controller.start()
    yield box
    controller.stop()


@pytest.fixture
def settings(settings, smtp):
    return settings.model_copy(update={"notify": NotifySettings(
        host="127.0.0.1", port=smtp.port, starttls=False, from_address="hub@strongroom.test")})


def _drain(hub) -> int:
    return Runner(hub, lease_seconds=10, name="test").run_until_idle()


def _run_job(hub, kind: str, payload: dict | None = None) -> dict:
    with transaction(hub.sessions) as s:
        job_id = jobs.enqueue(s, kind, payload or {}).id
    _drain(hub)
    with hub.sessions() as s:
        job = s.get(Job, job_id)
        assert job.status == "done", job.last_error
        return job.result


CONTEXT = {"application_id": "SRA-TEST", "dataset": "Chest CT 2024", "name": "Carol",
           "reason": "No ethics approval", "comment": "Please attach the approval", "ends": "2027-06-30",
           "days_left": 14}


def test_every_template_arrives_with_its_subject_and_recipient(hub, smtp):
    expected = {
        "application_submitted": "New application SRA-TEST for Chest CT 2024",
        "application_approved": "Approved: your application SRA-TEST",
        "application_rejected": "Rejected: your application SRA-TEST",
        "application_returned": "Changes requested: your application SRA-TEST",
        "application_revoked": "Access revoked: Chest CT 2024",
        "remark": "New comment on your application SRA-TEST",
        "entitlement_expiring": "Your access to Chest CT 2024 ends on 2027-06-30",
        "entitlement_ended": "Your access to Chest CT 2024 has ended",
    }
    with transaction(hub.sessions) as s:
        for i, template in enumerate(expected):
            notify.enqueue_email(s, to=f"person{i}@example.org", template=template, context=CONTEXT)
        notify.enqueue_email(s, to="not an address", template="remark", context=CONTEXT)  # skipped, no error
        with pytest.raises(ValueError):
            notify.enqueue_email(s, to="x@example.org", template="no_such_template", context={})
    assert _drain(hub) == len(expected)
    assert len(smtp.messages) == len(expected)
    for i, (template, subject) in enumerate(expected.items()):
        [msg] = smtp.to(f"person{i}@example.org")
        assert msg["Subject"].strip().startswith(f"[Strongroom] {subject}"), (template, msg["Subject"])
        assert msg["From"] == "hub@strongroom.test" and msg["Auto-Submitted"] == "auto-generated"
        assert msg["Message-ID"].endswith("@strongroom.test>")
        assert smtp.envelopes[smtp.messages.index(msg)] == ("hub@strongroom.test", [f"person{i}@example.org"])
    rejected = smtp.to("person2@example.org")[0].get_content()
    assert "No ethics approval" in rejected and "/applications/SRA-TEST" in rejected
    assert "Hello Carol," in rejected


def test_mail_is_queued_with_the_transaction_and_retried_when_smtp_is_down(hub, smtp, settings):
    with pytest.raises(RuntimeError), transaction(hub.sessions) as s:
        notify.enqueue_email(s, to="rolled@example.org", template="remark", context=CONTEXT)
        raise RuntimeError("the action failed")
    dead = settings.model_copy(update={"notify": settings.notify.model_copy(update={"port": free_port()})})
    hub.settings = dead
    with transaction(hub.sessions) as s:
        notify.enqueue_email(s, to="later@example.org", template="remark", context=CONTEXT)
    with hub.sessions() as s:
        [job_id] = s.scalars(select(Job.id).where(Job.kind == "notify.email"))  # the rolled-back one is gone
    _drain(hub)
    with hub.sessions() as s:
        job = s.get(Job, job_id)
        assert job.status == "queued" and job.attempts == 1 and "Connection" in job.last_error
    hub.settings = settings
    with transaction(hub.sessions) as s:
        s.get(Job, job_id).run_after = dt.datetime.now(dt.UTC)
    _drain(hub)
    assert [m["To"] for m in smtp.messages] == ["later@example.org"]


def test_an_account_deactivated_after_its_mail_was_queued_gets_nothing(hub, smtp, people):
    """The rule is asked again when the job sends: a mail queued while the account was active (or waiting for a
    retry while SMTP was down) is not delivered once the account is deactivated."""
    from strongroom.identity import service as identity
    from strongroom.identity.models import User

    eve = people("eve", mfa=False)
    with transaction(hub.sessions) as s:
        notify.enqueue_email(s, to="eve@example.org", template="remark", context=CONTEXT)
        notify.enqueue_email(s, to="other@example.org", template="remark", context=CONTEXT)
    with transaction(hub.sessions) as s:
        identity.deactivate_user(s, Actor.system("admin"), s.get(User, eve.user.id))
    _drain(hub)
    assert [m["To"] for m in smtp.messages] == ["other@example.org"]
    with hub.sessions() as s:
        results = [j.result for j in s.scalars(select(Job).where(Job.kind == "notify.email").order_by(Job.id))]
    assert results[0]["delivery"] == "skipped: account deactivated" and results[1]["delivery"] == "sent"


def test_smtp_login_and_logged_delivery_without_a_host(hub, smtp, settings):
    authed = NotifySettings.model_validate({**settings.notify.model_dump(), "username": "hub",
                                            "password": "s3cret"})
    msg = notify.build_message(settings, "a@example.org", "Hi", "Body\n", "k1")
    assert notify.deliver(authed, msg) == "sent" and smtp.logins == ["hub"]
    # credentials never travel in the clear to anything but loopback
    remote = authed.model_copy(update={"host": "192.0.2.1"})
    with pytest.raises(RuntimeError, match="STARTTLS"):
        notify.deliver(remote, msg)
    # the embedded default: no host, the e-mail goes to the log
    embedded = settings.model_copy(update={"notify": NotifySettings()})
    result = notify.send_job(embedded, 7, {"to": "a@example.org", "template": "remark", "context": CONTEXT})
    assert result == {"delivery": "logged", "template": "remark"}
    assert len(smtp.messages) == 1


def test_handlers_in_daily_mode_get_one_digest(hub, smtp, people, client):
    hana = people("hana", email="hana@example.org")
    api = bearer(token_for(hub, hana))
    assert client.get("/api/v1/me/notifications", headers=api).json() == {"mode": "immediate"}
    assert client.put("/api/v1/me/notifications", json={"mode": "weekly"}, headers=api).status_code == 422
    r = client.put("/api/v1/me/notifications", json={"mode": "daily"}, headers=api)
    assert r.status_code == 200 and r.json() == {"mode": "daily"}
    with transaction(hub.sessions) as s:
        for n in range(3):
            notify.enqueue_email(s, to="Hana@Example.org", template="application_submitted",
                                 context={**CONTEXT, "application_id": f"SRA-{n}", "name": "Hana"})
        # applicant-facing mail to the same person is never held back
        notify.enqueue_email(s, to="hana@example.org", template="remark", context=CONTEXT)
    _drain(hub)
    assert [m["Subject"] for m in smtp.messages] == ["[Strongroom] New comment on your application SRA-TEST"]
    with hub.sessions() as s:
        assert len(list(s.scalars(select(DigestItem).where(DigestItem.sent_at.is_(None))))) == 3

    assert _run_job(hub, "notify.digest") == {"digests": 1, "items": 3}
    _drain(hub)
    [digest] = [m for m in smtp.messages if "digest" in m["Subject"]]
    assert digest["Subject"] == "[Strongroom] Daily digest: 3 updates" and digest["To"] == "hana@example.org"
    body = digest.get_content()
    assert all(f"New application SRA-{n} for Chest CT 2024" in body for n in range(3))
    assert body.count("Hello") == 1  # one greeting, not one per item
    assert _run_job(hub, "notify.digest") == {"digests": 0, "items": 0}  # nothing twice

    client.put("/api/v1/me/notifications", json={"mode": "immediate"}, headers=api)
    with transaction(hub.sessions) as s:
        notify.enqueue_email(s, to="hana@example.org", template="application_submitted", context=CONTEXT)
    _drain(hub)
    assert len(smtp.messages) == 3
    with hub.sessions() as s:
        changes = s.scalars(select(AuditEvent).where(AuditEvent.action == "notify.preference.changed")
                            .order_by(AuditEvent.seq))
        assert [e.details for e in changes] == [{"mode": "daily"}, {"mode": "immediate"}]


def test_entitlement_reminders_go_out_once_and_expiry_is_notified_once(hub, smtp, people):
    alice, carol = people("alice"), people("carol", email="carol@example.org")
    now = dt.datetime.now(dt.UTC)
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="alice", ethics_ref="E1",
                                end_date=END)
        project = s.scalar(select(Project).where(Project.slug == "lung"))
        for ds_id, title in (("SRD-AAAAAAAAAA", "Chest CT"), ("SRD-BBBBBBBBBB", "Knee MR"),
                             ("SRD-CCCCCCCCCC", "Brain MR"), ("SRD-DDDDDDDDDD", "Hip X-ray")):
            s.add(Dataset(id=ds_id, project_id=project.id, title=title, created_by=alice.user.id))
        s.flush()

        def ent(ds: str, starts: float, ends: float, **kw) -> uuid.UUID:
            e = Entitlement(user_id=carol.user.id, dataset_id=ds, version=None,
                            starts_at=now + dt.timedelta(days=starts), ends_at=now + dt.timedelta(days=ends),
                            **kw)
            s.add(e)
            s.flush()
            return e.id

        soon = ent("SRD-AAAAAAAAAA", -300, 5)          # reminder due
        later = ent("SRD-BBBBBBBBBB", -10, 30)         # not yet
        ended = ent("SRD-DDDDDDDDDD", -400, -1 / 24)   # ended an hour ago: notify
        renewed_old = ent("SRD-CCCCCCCCCC", -400, -1 / 24)  # ended, but renewed:
        ent("SRD-CCCCCCCCCC", -1 / 24, 200)            # ...this one continues → no "ended" mail
        ent("SRD-AAAAAAAAAA", -400, -100, revoked_at=now - dt.timedelta(days=200))  # revoked: not ours
        ancient = ent("SRD-AAAAAAAAAA", -800, -60)     # ended long ago: marked quietly

    assert _run_job(hub, "access.entitlements") == {"reminded": 1, "ended": 3}
    _drain(hub)
    assert _run_job(hub, "access.entitlements") == {"reminded": 0, "ended": 0}  # once only
    _drain(hub)
    subjects = sorted(m["Subject"].strip() for m in smtp.to("carol@example.org"))
    assert subjects == ["[Strongroom] Your access to Chest CT ends on "
                        f"{(now + dt.timedelta(days=5)).date().isoformat()}",
                        "[Strongroom] Your access to Hip X-ray has ended"]
    reminder = next(m for m in smtp.messages if "ends on" in m["Subject"]).get_content()
    assert "(4 days from now)" in reminder or "(5 days from now)" in reminder
    with hub.sessions() as s:
        rows = {e.id: e for e in s.scalars(select(Entitlement))}
        assert rows[soon].reminded_at is not None and rows[later].reminded_at is None
        assert all(rows[i].ended_notified_at is not None for i in (ended, renewed_old, ancient))
        audited = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "access.entitlement.ended")))
        assert len(audited) == 3 and {a.details["renewed"] for a in audited} == {True, False}

    # the 30-day one comes into the window: its reminder goes out, once
    with transaction(hub.sessions) as s:
        s.get(Entitlement, later).ends_at = now + dt.timedelta(days=3)
    assert _run_job(hub, "access.entitlements", {"days": 14}) == {"reminded": 1, "ended": 0}
    assert _run_job(hub, "access.entitlements") == {"reminded": 0, "ended": 0}
    _drain(hub)
    assert len(smtp.to("carol@example.org")) == 3
