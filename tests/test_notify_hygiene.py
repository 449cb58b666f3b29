"""E-mail hygiene: without an SMTP host the hub says mail is not sent and logs no address, subject or body;
a deactivated account is e-mailed by no path (handlers, applicants, digests, any address of theirs)."""

from __future__ import annotations

import json
import smtplib

import pytest
from sqlalchemy import select

from imaging_support import make_project
from strongroom.access import notices
from strongroom.access.models import Application, DatasetRole
from strongroom.archive.models import Dataset
from strongroom.audit.service import Actor
from strongroom.config import NotifySettings, Settings
from strongroom.db import transaction
from strongroom.identity import service as identity
from strongroom.identity.models import User
from strongroom.jobs.models import Job
from strongroom.notify import service as notify
from strongroom.notify.models import DigestItem, NotifyPreference
from strongroom.projects.models import Project
from test_log_scrubbing import lines  # noqa: F401 - JSON log lines as `strongroom serve` writes them

PERSONAL = {"to": "patient.contact@hospital.example", "template": "application_rejected",
            "context": {"application_id": 7, "dataset": "Internal: Lung CT of ward 4", "name": "Dr Alice Example",
                        "reason": "applicant is under investigation"}}


def _no_personal_data(text: str) -> None:
    for needle in ("patient.contact", "hospital.example", "Lung CT", "Dr Alice", "under investigation", "rejected"):
        assert needle not in text, needle


def test_without_an_smtp_host_the_log_says_so_and_holds_no_mail(tmp_path, lines):  # noqa: F811
    settings = Settings(var_dir=tmp_path / "var", secret_key="a" * 64)
    assert not settings.notify.host  # the embedded default, and the example deployments'
    assert notify.send_job(settings, 41, PERSONAL) == {"delivery": "logged", "template": "application_rejected"}
    [line] = lines()
    _no_personal_data(json.dumps(line).replace("application_rejected", ""))
    assert line["level"] == "warning" and line["event"] == "notify.email.not_sent"
    assert line["template"] == "application_rejected" and line["job_id"] == 41 and line["recipients"] == 1
    assert "no SMTP host" in line["detail"]


def test_a_sent_mail_is_logged_without_its_subject_or_address(tmp_path, lines, monkeypatch):  # noqa: F811
    sent = []

    class FakeSMTP:
        def __init__(self, host, port, timeout):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def ehlo(self):
            pass

        def send_message(self, msg):
            sent.append(msg)

    monkeypatch.setattr(smtplib, "SMTP", FakeSMTP)
    settings = Settings(var_dir=tmp_path / "var", secret_key="a" * 64,
                        notify=NotifySettings(host="127.0.0.1", starttls=False))
    assert notify.send_job(settings, 42, PERSONAL)["delivery"] == "sent"
    assert sent and sent[0]["To"] == PERSONAL["to"]
    [line] = lines()
    _no_personal_data(json.dumps(line).replace("application_rejected", ""))
    assert line["event"] == "notify.email" and line["job_id"] == 42 and line["message_id"] == sent[0]["Message-ID"]


def test_a_refused_recipient_is_reported_without_the_address(tmp_path, monkeypatch):
    class RefusingSMTP:
        def __init__(self, host, port, timeout):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def ehlo(self):
            pass

        def send_message(self, msg):
            raise smtplib.SMTPRecipientsRefused(
                {PERSONAL["to"]: (550, f"5.1.1 <{PERSONAL['to']}>: Recipient address rejected".encode())})

    monkeypatch.setattr(smtplib, "SMTP", RefusingSMTP)
    settings = Settings(var_dir=tmp_path / "var", secret_key="a" * 64,
                        notify=NotifySettings(host="127.0.0.1", starttls=False))
    with pytest.raises(notify.SMTPRefused) as refused:  # what the runner logs and keeps as the job's last_error
        notify.send_job(settings, 43, PERSONAL)
    assert "550" in str(refused.value)
    _no_personal_data(repr(refused.value))


def _mails(hub) -> list[str]:
    with hub.sessions() as s:
        return sorted(j.payload["to"] for j in s.scalars(select(Job).where(Job.kind == notify.EMAIL_JOB)))


def _deactivate(hub, user_id) -> None:
    with transaction(hub.sessions) as s:
        identity.deactivate_user(s, Actor.system("admin"), s.get(User, user_id))


def test_deactivated_accounts_get_no_application_mail(hub, people):
    people("alice", mfa=False)
    hank, hilda, eve = (people(n, mfa=False) for n in ("hank", "hilda", "eve"))
    make_project(hub, "lung", pi="alice")
    with transaction(hub.sessions) as s:
        pid = s.scalar(select(Project.id).where(Project.slug == "lung"))
        s.add(Dataset(id="SRD-HYG1", project_id=pid, title="Ward 4 - internal", created_by=eve.user.id))
        s.flush()
        s.add_all([DatasetRole(dataset_id="SRD-HYG1", user_id=p.user.id, role="handler") for p in (hank, hilda)])
    _deactivate(hub, hank.user.id)
    with transaction(hub.sessions) as s:
        app = Application(id=42, applicant_id=eve.user.id, dataset_id="SRD-HYG1")
        notices.notify_handlers(s, app, "application_submitted")
        notices.notify_applicant(s, app, "application_approved")
    assert _mails(hub) == ["eve@example.org", "hilda@example.org"]  # the active ones still get theirs
    _deactivate(hub, eve.user.id)
    with transaction(hub.sessions) as s:
        notices.notify_applicant(s, Application(id=43, applicant_id=eve.user.id, dataset_id="SRD-HYG1"),
                                 "application_revoked")
        notify.enqueue_email(s, to="EVE@example.org", template="remark", context={"name": "Eve"})
        notify.notify_user(s, eve.user.id, "remark", {})
    assert _mails(hub) == ["eve@example.org", "hilda@example.org"]


def test_a_deactivated_handlers_held_digest_is_dropped(hub, people, tmp_path):
    hana = people("hana", mfa=False)
    with transaction(hub.sessions) as s:
        s.add(NotifyPreference(user_id=hana.user.id, mode="daily"))
    with transaction(hub.sessions) as s:
        notify.enqueue_email(s, to="hana@example.org", template="application_submitted",
                             context={"application_id": "SRA-1", "dataset": "Internal title", "name": "Hana"})
    with hub.sessions() as s:
        assert len(list(s.scalars(select(DigestItem)))) == 1  # held for her digest while she was active
    _deactivate(hub, hana.user.id)
    with transaction(hub.sessions) as s:
        assert notify.queue_digest(s, hub.settings, hana.user.id) == 0
    with hub.sessions() as s:
        assert all(item.sent_at is not None for item in s.scalars(select(DigestItem)))  # not kept for later
    assert _mails(hub) == []
