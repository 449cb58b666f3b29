"""E-mail notifications.

`enqueue_email` is called inside the caller's transaction: the e-mail is a durable job
(``notify.email``) that commits or rolls back with the change it announces, and is retried with
backoff while the SMTP server is away. The job renders a Jinja2 text template from
``templates/`` (first line = Subject, the rest = body) and sends it with the ``notify`` settings.
With no SMTP host configured (the embedded default) nothing is sent: a warning names the template, the
job and the number of recipients, never an address, subject or body (they carry personal data and
internal dataset titles).

Deactivated accounts get no e-mail: `enqueue_email` (every e-mail passes through it), `notify_user` and
`queue_digest` apply the one rule, `may_receive`.

Handler-facing templates (`DIGESTIBLE`) go to a user who chose the ``daily`` mode into
`DigestItem` rows instead; the periodic ``notify.digest`` job sends each such user one e-mail a day.
"""

from __future__ import annotations

import email.policy
import hashlib
import ipaddress
import json
import smtplib
import ssl
import uuid
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any

import structlog
from email_validator import EmailNotValidError, validate_email
from jinja2 import Environment, FileSystemLoader
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..config import NotifySettings, Settings
from ..db import utcnow
from ..errors import Invalid
from ..identity.models import User
from ..identity.principal import Principal
from ..jobs import service as jobs
from .models import DAILY, IMMEDIATE, DigestItem, NotifyPreference

log = structlog.get_logger("strongroom.notify")

# template → who reads it. Context keys each template uses are listed for callers.
TEMPLATES: dict[str, str] = {
    "application_submitted": "handler",   # application_id, dataset, name, [applicant]
    "application_approved": "applicant",  # application_id, dataset, name, [ends], [comment]
    "application_rejected": "applicant",  # application_id, dataset, name, reason
    "application_returned": "applicant",  # application_id, dataset, name, [comment]
    "application_revoked": "applicant",   # application_id, dataset, name, [reason]
    "remark": "applicant",                # application_id, dataset, name, comment
    "entitlement_expiring": "applicant",  # dataset, name, ends, days_left
    "entitlement_ended": "applicant",     # dataset, name, ends
    "digest": "handler",                  # name, items [{subject, body}]
    "airlock_review": "handler",          # request_id, project, direction, state, checks
    "airlock_decided": "applicant",       # request_id, project, direction, state, [reason]
    "airlock_delivered": "applicant",     # request_id, project, files
    "airlock_short_of_reviewers": "applicant",  # request_id, project, direction, state, needed, possible
    "compute_over_budget": "applicant",   # project, booking_id, machine, gpus, start, end, gpu_weeks, used, budget,
                                          # booked_by
    "workspace_ending": "applicant",      # project, workspace, ends, minutes
    "recovery_codes_reset": "applicant",  # name
    "retention_due": "applicant",         # name, dataset, dataset_id, version, keep_until, last_used, last_use, months
}
DIGESTIBLE = frozenset(name for name, role in TEMPLATES.items() if role == "handler" and name != "digest")
EMAIL_JOB = "notify.email"

_env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=False,
                   trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


# -- rendering ---------------------------------------------------------------------------------
def render(settings: Settings, template: str, context: dict[str, Any]) -> tuple[str, str]:
    """(subject, body): the template's first line is the subject, the rest the body."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown e-mail template {template!r}")
    text = _env.get_template(f"{template}.txt").render(
        {"site_name": settings.site_name, "base_url": settings.base_url.rstrip("/"), **context})
    first, _, rest = text.partition("\n")
    subject = " ".join(first.split())[:250]  # one line, no control characters: no header injection
    return subject, rest.strip("\n") + "\n"


def _plain(context: dict[str, Any]) -> dict[str, Any]:
    """The context as JSON data (it is stored in the job), dates and ids as strings."""
    plain: dict[str, Any] = json.loads(json.dumps(context, default=str))
    return plain


def _address(to: str) -> str | None:
    try:
        return validate_email(to, check_deliverability=False).normalized
    except EmailNotValidError:
        return None


# -- who may receive ---------------------------------------------------------------------------
def may_receive(session: Session, address: str) -> bool:
    """The one rule for every e-mail the hub queues: not to a deactivated account. An address that only
    deactivated accounts have is refused; one an active account has, or no account at all, is allowed."""
    holders = list(session.scalars(select(User.is_active).where(func.lower(User.email) == address.lower())))
    return not holders or any(holders)


# -- enqueueing --------------------------------------------------------------------------------
def enqueue_email(session: Session, *, to: str, template: str, context: dict[str, Any]) -> None:
    """Send ``template`` to ``to`` once the caller's transaction commits (or hold it for the
    recipient's daily digest). An unusable address, or one of a deactivated account (`may_receive`), is
    logged and skipped, never an error for the action that triggered the e-mail."""
    if template not in TEMPLATES or template == "digest":
        raise ValueError(f"unknown e-mail template {template!r}")
    address = _address(to or "")
    if address is None:
        log.warning("notify.bad_address", template=template)
        return
    if not may_receive(session, address):
        log.info("notify.skipped", template=template, reason="account deactivated")
        return
    data = _plain(context)
    if template in DIGESTIBLE:
        user_id = session.scalar(
            select(NotifyPreference.user_id).join(User, User.id == NotifyPreference.user_id)
            .where(func.lower(User.email) == address.lower(), NotifyPreference.mode == DAILY).limit(1))
        if user_id is not None:
            session.add(DigestItem(user_id=user_id, to=address, template=template, context=data))
            return
    jobs.enqueue(session, EMAIL_JOB, {"to": address, "template": template, "context": data}, max_attempts=8)


def notify_user(session: Session, user_id: uuid.UUID, template: str, context: dict[str, Any]) -> None:
    """`enqueue_email` to a user's address (skipped when they have none); ``name`` filled in."""
    user = session.get(User, user_id)
    if user is None or not user.email or not user.is_active:  # the rule of `may_receive`, for this account
        return
    enqueue_email(session, to=user.email, template=template, context={"name": user.display_name, **context})


# -- preferences -------------------------------------------------------------------------------
def preference(session: Session, user_id: uuid.UUID) -> str:
    pref = session.get(NotifyPreference, user_id)
    return pref.mode if pref else IMMEDIATE


def set_preference(session: Session, principal: Principal, mode: str) -> str:
    if mode not in (IMMEDIATE, DAILY):
        raise Invalid("mode must be 'immediate' or 'daily'")
    pref = session.get(NotifyPreference, principal.user.id)
    if pref is None:
        pref = NotifyPreference(user_id=principal.user.id, mode=mode)
        session.add(pref)
    elif pref.mode != mode:
        pref.mode, pref.updated_at = mode, utcnow()
    else:
        return mode
    audit.record(session, principal.actor, "notify.preference.changed", subject_user_id=principal.user.id,
                 details={"mode": mode})
    return mode


# -- digests -----------------------------------------------------------------------------------
def users_with_pending_digest(session: Session) -> list[uuid.UUID]:
    return list(session.scalars(select(DigestItem.user_id).where(DigestItem.sent_at.is_(None)).distinct()))


def queue_digest(session: Session, settings: Settings, user_id: uuid.UUID) -> int:
    """Turn a user's pending items into one queued e-mail; returns how many items it holds. The items of a
    deactivated account are marked done without an e-mail."""
    stmt = (select(DigestItem).where(DigestItem.user_id == user_id, DigestItem.sent_at.is_(None))
            .order_by(DigestItem.id).limit(500))
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    items = list(session.scalars(stmt))
    if not items:
        return 0
    user = session.get(User, user_id)
    to = _address((user.email if user and user.email else None) or items[-1].to)
    if to is None or (user is not None and not user.is_active) or not may_receive(session, to):
        now = utcnow()
        for item in items:  # held for someone who may not have them any more: dropped, not kept for later
            item.sent_at = now
        log.info("notify.skipped", template="digest", items=len(items), reason="account deactivated")
        return 0
    rendered = []
    for item in items:
        subject, body = render(settings, item.template, {**item.context, "digest_item": True})
        rendered.append({"subject": subject, "body": body.strip()})
    name = user.display_name if user else ""
    jobs.enqueue(session, EMAIL_JOB, {"to": to, "template": "digest",
                                      "context": {"name": name, "items": rendered}}, max_attempts=8)
    now = utcnow()
    for item in items:
        item.sent_at = now
    return len(items)


# -- sending -----------------------------------------------------------------------------------
def build_message(settings: Settings, to: str, subject: str, body: str, message_key: str) -> EmailMessage:
    sender = settings.notify.from_address
    domain = sender.rpartition("@")[2] or "localhost"
    msg = EmailMessage(policy=email.policy.SMTP)  # CRLF, folded at 78 columns
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    # stable per job: a retried send carries the same id, so receivers can drop the duplicate
    msg["Message-ID"] = f"<{hashlib.sha256(message_key.encode()).hexdigest()[:32]}@{domain}>"
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(body)
    return msg


class SMTPRefused(RuntimeError):
    """The SMTP server said no; the message names its reply code, never an address (the job is retried)."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def deliver(s: NotifySettings, msg: EmailMessage, *, template: str | None = None, job_id: int | None = None) -> str:
    """Send over SMTP; with no host configured, send nothing and log a warning that says so. Returns how it
    went out. The log names the template, the job, the number of recipients and the Message-ID (to find it
    at the mail server): never an address, the subject or the body."""
    recipients = len(msg.get_all("To") or [])
    if not s.host:
        log.warning("notify.email.not_sent", template=template, job_id=job_id, recipients=recipients,
                    detail="no SMTP host is configured ([notify] host): e-mails are dropped")
        return "logged"
    if s.username and not s.starttls and not _loopback(s.host):
        raise RuntimeError("refusing to send SMTP credentials without STARTTLS")
    try:
        with smtplib.SMTP(s.host, s.port, timeout=s.timeout_seconds) as smtp:
            smtp.ehlo()
            if s.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if s.username:
                smtp.login(s.username, s.password.get_secret_value())
            smtp.send_message(msg)
    # the server's answers quote the addresses; what is raised here ends up in the log and the job's last_error
    except smtplib.SMTPRecipientsRefused as exc:
        codes = sorted({code for code, _ in exc.recipients.values()})
        raise SMTPRefused(f"the SMTP server refused the recipient ({', '.join(map(str, codes))})") from None
    except smtplib.SMTPResponseException as exc:
        raise SMTPRefused(f"{type(exc).__name__}: the SMTP server answered {exc.smtp_code}") from None
    log.info("notify.email", delivery="smtp", template=template, job_id=job_id, recipients=recipients,
             message_id=msg["Message-ID"])
    return "sent"


def send_job(settings: Settings, job_id: int, payload: dict[str, Any]) -> dict[str, Any]:
    subject, body = render(settings, payload["template"], payload.get("context") or {})
    msg = build_message(settings, payload["to"], subject, body, f"{settings.base_url}|job|{job_id}")
    delivery = deliver(settings.notify, msg, template=payload["template"], job_id=job_id)
    return {"delivery": delivery, "template": payload["template"]}
