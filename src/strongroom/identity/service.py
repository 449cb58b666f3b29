"""Identity: local accounts with TOTP, browser sessions, API tokens, login throttling.

Every function takes an open SQLAlchemy session and writes audit events in the caller's
transaction; the caller commits.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import pyotp
import segno
from sqlalchemy import Select, bindparam, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from .. import decision_cache
from ..audit import service as audit
from ..audit.service import Actor
from ..db import rowcount, utcnow
from ..errors import Conflict, Invalid, MfaRequired, NotFound, TooManyRequests, Unauthenticated
from .models import (
    LOCAL_ISSUER,
    ApiToken,
    LocalCredential,
    LoginAttempt,
    RecoveryCode,
    User,
    WebSession,
)
from .principal import SCOPES, Principal
from .secrets import (
    MIN_PASSWORD_LENGTH,
    FieldCipher,
    dummy_hash,
    equal_secrets,
    hash_password,
    keyed_digest,
    needs_rehash,
    new_secret,
    sha256_hex,
    verify_password,
)

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")
TOTP_ISSUER = "Strongroom"
RECOVERY_CODES = 10


# -- users -------------------------------------------------------------------------------------
def find_user(session: Session, ref: str) -> User | None:
    """A user by local username, e-mail or id: how people name each other in forms and the CLI."""
    ref = ref.strip()
    try:
        by_id = session.get(User, uuid.UUID(ref))
        if by_id is not None:
            return by_id
    except ValueError:
        pass
    user = session.scalar(select(User).join(LocalCredential).where(LocalCredential.username == ref.lower()))
    if user is not None:
        return user
    matches = list(session.scalars(select(User).where(func.lower(User.email) == ref.lower()).limit(2)))
    return matches[0] if len(matches) == 1 else None


def check_password_policy(password: str, *, username: str | None = None) -> None:
    """Length is what matters (NIST SP 800-63B); beyond it only refuse the trivially guessable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Invalid(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > 1024:
        raise Invalid("password is too long")
    if len(set(password.lower())) < 5:
        raise Invalid("password must use at least 5 different characters")
    if username and len(username) >= 3 and username.lower() in password.lower():
        raise Invalid("password must not contain the username")


def create_local_user(
    session: Session,
    actor: Actor,
    *,
    username: str,
    password: str,
    display_name: str,
    email: str | None = None,
    affiliation: str | None = None,
    is_admin: bool = False,
) -> User:
    username = username.strip().lower()
    if not USERNAME_RE.match(username):
        raise Invalid("username must be 2-63 characters: lower-case letters, digits, '.', '_' or '-'")
    check_password_policy(password, username=username)
    if session.scalar(select(exists().where(LocalCredential.username == username))):
        raise Conflict(f"username {username!r} is taken")
    user = User(issuer=LOCAL_ISSUER, subject=username, display_name=display_name.strip() or username,
                email=email, affiliation=affiliation, is_admin=is_admin)
    session.add(user)
    session.flush()
    session.add(LocalCredential(user_id=user.id, username=username, password_hash=hash_password(password)))
    audit.record(session, actor, "user.created", subject_user_id=user.id, target=username,
                 details={"admin": is_admin, "issuer": LOCAL_ISSUER})
    session.flush()
    return user


def set_country(session: Session, principal: Principal, country: str | None) -> User:
    """The country of the user's home organisation (ISO 3166-1 alpha-2), as they give it: it is what the
    hub's "countries shared with" counts. Empty clears it."""
    import pycountry

    code = (country or "").strip().upper() or None
    if code is not None and (len(code) != 2 or pycountry.countries.get(alpha_2=code) is None):
        raise Invalid("choose a country from the list (an ISO 3166-1 two-letter code)")
    user = session.get(User, principal.user.id)
    if user is None:
        raise NotFound("no such user")
    if user.country != code:
        audit.record(session, principal.actor, "user.country_changed", subject_user_id=user.id,
                     target=user.subject, details={"from": user.country, "to": code})
        user.country = code
        session.flush()
    return user


def upsert_federated_user(
    session: Session, *, issuer: str, subject: str, display_name: str, email: str | None,
    affiliation: str | None,
) -> tuple[User, bool]:
    """The user for an OIDC identity, created on first login; profile claims refreshed each time. Claims longer
    than their columns never reach the database (PostgreSQL would refuse them: a 500): an identity (issuer,
    subject) is refused, never cut (a cut one could be someone else's); a name or affiliation is shortened (it is
    only shown), an over-long e-mail dropped (a shortened address would be another's)."""
    if len(issuer) > _column_length(User.issuer) or len(subject) > _column_length(User.subject):
        raise Invalid("the identity provider's user identifier is longer than this hub accepts "
                      f"(issuer {_column_length(User.issuer)}, subject {_column_length(User.subject)} characters)")
    display_name = display_name[:_column_length(User.display_name)]
    affiliation = affiliation[:_column_length(User.affiliation)] if affiliation else affiliation
    email = email if email and len(email) <= _column_length(User.email) else None
    user = session.scalar(select(User).where(User.issuer == issuer, User.subject == subject))
    created = user is None
    if user is None:
        user = User(issuer=issuer, subject=subject, display_name=display_name or subject)
        session.add(user)
    user.display_name = display_name or user.display_name
    user.email = email or user.email
    user.affiliation = affiliation or user.affiliation
    session.flush()
    return user, created


def _column_length(column: Any) -> int:
    return int(column.property.columns[0].type.length)


# Capabilities above identity say who else can see data (projects: every member), through
# `config.add_data_role_check` in their includeme; identity never looks into their tables.
DATA_ROLE_CHECKS: list[Callable[[Session, User], bool]] = []


def holds_data_role(session: Session, user: User) -> bool:
    """Whether MFA is mandatory for this user: admins, platform auditors (they read every project's audit events,
    with who did what from where), and whoever a registered check says can see data."""
    return (user.is_admin or audit.is_auditor(session, user.id)
            or any(check(session, user) for check in DATA_ROLE_CHECKS))


def require_fresh_mfa(principal: Principal, minutes: int) -> None:
    """Sensitive actions need a second factor within the last ``minutes`` (a token: its minting)."""
    if not principal.mfa_is_fresh(minutes):
        raise MfaRequired(f"this action needs a multi-factor login within the last {minutes} minutes",
                          reauthenticate=True)


# -- login throttling --------------------------------------------------------------------------
# Every failed password, second factor or current-password check counts twice: under the account (``user:``, every
# address together, ``limit`` per window) and under the client's address (``ip:``, every account together, a much
# higher ``address_limit``). A mistyped or attacked account is held without holding anyone else behind the same
# address (a hospital's NAT), while one address trying password after password over many accounts (spraying) is
# held at its ceiling. IPv6 clients count per /64, the block one subscriber holds, so rotating addresses gains
# nothing; and per /48 too (``net:``, a site's allocation, ``NETWORK_LIMIT_FACTOR`` times the address ceiling), so
# a sprayer holding a /48 cannot multiply the ceiling by the 65,536 /64s in it.
ADDRESS_LIMIT_FACTOR = 20  # the address ceiling when a caller names none: 20 accounts' worth of failures
NETWORK_LIMIT_FACTOR = 4


def _address_key(ip: str) -> str:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return f"ip:{ip}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"ip:{address.ipv4_mapped}"
        return f"ip:{ipaddress.ip_network((address, 64), strict=False)}"
    return f"ip:{address}"


def _network_key(ip: str) -> str | None:
    """The IPv6 /48 an address belongs to (None for IPv4 and IPv4-mapped addresses: they count per address)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if not isinstance(address, ipaddress.IPv6Address) or address.ipv4_mapped is not None:
        return None
    return f"net:{ipaddress.ip_network((address, 48), strict=False)}"


# Failures for one account from all addresses together, as a multiple of the per-address limit: guessing spread
# over many addresses is held too, but no address the account has logged in from (`KNOWN_ADDRESS_DAYS`) is
# locked out by it — a stranger's failures from elsewhere must not lock the owner out of their own account.
ACCOUNT_SPREAD_FACTOR = 4
KNOWN_ADDRESS_DAYS = 30


def _throttle_keys(username: str, ip: str | None) -> list[str]:
    """The counters a failure adds to: the account from anywhere, the account from this address, the address."""
    name = username.lower()
    if not ip:
        return [f"user:{name}"]
    address, network = _address_key(ip), _network_key(ip)
    return [f"user:{name}", f"user:{name}@{address}", address, *([network] if network else [])]


def check_throttle(session: Session, username: str, ip: str | None, *, limit: int, window_s: int,
                   address_limit: int | None = None) -> None:
    """429 past ``limit`` failures for the account from this address, ``address_limit`` for the address (every
    account; ``× NETWORK_LIMIT_FACTOR`` for its IPv6 /48), or ``limit × ACCOUNT_SPREAD_FACTOR`` for the account from
    all addresses together — the last one not for an address the account completed a login from lately (without
    an address: ``limit``)."""
    since = utcnow() - dt.timedelta(seconds=window_s)
    per_address = address_limit if address_limit is not None else limit * ADDRESS_LIMIT_FACTOR
    name = username.lower()

    def failures(key: str) -> int:
        return session.scalar(select(func.count()).where(LoginAttempt.key == key,
                                                         LoginAttempt.created_at >= since)) or 0

    if ip is None:
        held = failures(f"user:{name}") >= limit
    else:
        address, network = _address_key(ip), _network_key(ip)
        held = failures(f"user:{name}@{address}") >= limit or failures(address) >= per_address or (
            network is not None and failures(network) >= per_address * NETWORK_LIMIT_FACTOR) or (
            failures(f"user:{name}") >= limit * ACCOUNT_SPREAD_FACTOR and not _known_address(session, name, address))
    if held:
        raise TooManyRequests("too many failed logins; wait a few minutes and try again", retry_after=window_s)


def _known_address(session: Session, name: str, address: str) -> bool:
    since = utcnow() - dt.timedelta(days=KNOWN_ADDRESS_DAYS)
    return session.scalar(select(LoginAttempt.id).where(LoginAttempt.key == f"known:{name}@{address}",
                                                        LoginAttempt.created_at >= since).limit(1)) is not None


def note_failed_login(session: Session, username: str, ip: str | None) -> None:
    for key in _throttle_keys(username, ip):
        session.add(LoginAttempt(key=key))


def clear_failed_logins(session: Session, username: str, ip: str | None = None) -> None:
    """After a completed second factor: the account's failures are forgotten, and the address is remembered as
    one the account logs in from (``ip``)."""
    name = username.lower()
    session.execute(delete(LoginAttempt).where(
        (LoginAttempt.key == f"user:{name}") | LoginAttempt.key.startswith(f"user:{name}@", autoescape=True)))
    if ip:
        known = f"known:{name}@{_address_key(ip)}"
        session.execute(delete(LoginAttempt).where(LoginAttempt.key == known))
        session.add(LoginAttempt(key=known))


@dataclass
class PasswordCheck:
    user: User
    needs_enrolment: bool


def authenticate_password(
    session: Session, username: str, password: str, *, ip: str | None, limit: int, window_s: int,
    address_limit: int | None = None,
) -> PasswordCheck:
    """First factor. Raises Unauthenticated with one message for every failure reason."""
    username = username.strip().lower()
    check_throttle(session, username, ip, limit=limit, window_s=window_s, address_limit=address_limit)
    cred = session.scalar(select(LocalCredential).where(LocalCredential.username == username))
    ok = verify_password(cred.password_hash if cred else dummy_hash(), password)
    if cred is None or not ok or not cred.user.is_active:
        note_failed_login(session, username, ip)
        audit.record(session, Actor(id=cred.user_id if cred else None, label=username, ip=ip),
                     "login.password", outcome="denied", subject_user_id=cred.user_id if cred else None)
        raise Unauthenticated("wrong username or password")
    if needs_rehash(cred.password_hash):
        cred.password_hash = hash_password(password)
    audit.record(session, Actor(cred.user.id, cred.user.label, ip), "login.password",
                 subject_user_id=cred.user_id)
    return PasswordCheck(user=cred.user, needs_enrolment=not cred.mfa_enrolled)


def change_password(session: Session, principal: Principal, current: str, new: str, *, limit: int, window_s: int,
                    address_limit: int | None = None, keep_session: WebSession | None = None) -> None:
    """A local user's own change. Every other session and every API token of theirs ends: whoever
    knew the old password may have used it to start one.

    The current-password check is a password guess like a login's: it shares the login throttle under the
    account's username (and the caller's address), so a stolen session cannot try passwords faster than the
    login form allows. Wrong guesses and throttled attempts are audited as denied."""
    cred = _credential(session, principal.user)
    try:
        check_throttle(session, cred.username, principal.ip, limit=limit, window_s=window_s,
                       address_limit=address_limit)
    except TooManyRequests:
        audit.record(session, principal.actor, "user.password_changed", outcome="denied",
                     subject_user_id=principal.user.id, details={"reason": "too many failed attempts"})
        raise
    if not verify_password(cred.password_hash, current):
        note_failed_login(session, cred.username, principal.ip)
        audit.record(session, principal.actor, "user.password_changed", outcome="denied",
                     subject_user_id=principal.user.id, details={"reason": "current password wrong"})
        raise Invalid("current password is wrong")
    if new == current:
        raise Invalid("the new password must differ from the current one")
    check_password_policy(new, username=cred.username)
    cred.password_hash = hash_password(new)
    audit.record(session, principal.actor, "user.password_changed", subject_user_id=principal.user.id)
    revoke_access(session, principal.actor, principal.user, reason="password changed", keep_session=keep_session)


# Capabilities above identity keep credentials of their own (sftp: SSH keys), added through
# `config.add_hook(...:CREDENTIAL_REVOKERS, ...)`; identity never imports them. A revoker is called as
# ``revoker(session, actor, user, reason)`` in the caller's transaction, withdraws (and audits) every such
# credential of the user and returns ``{kind: [identifiers]}`` for the ``user.access_revoked`` event. It
# raises rather than leave one standing: the whole withdrawal (password change, MFA reset, …) then fails.
CREDENTIAL_REVOKERS: list[Callable[[Session, Actor, User, str], dict[str, list[str]]]] = []


def revoke_access(session: Session, actor: Actor, user: User, *, reason: str,
                  keep_session: WebSession | None = None) -> dict[str, int]:
    """End a user's browser sessions (all, or all but ``keep_session``), revoke their API tokens and withdraw
    every credential another capability keeps for them (``CREDENTIAL_REVOKERS``: SSH keys). Every path that
    withdraws a user's access (password change, MFA reset, deactivation) comes through here."""
    query = delete(WebSession).where(WebSession.user_id == user.id)
    if keep_session is not None:
        query = query.where(WebSession.id_hash != keep_session.id_hash)
    sessions = rowcount(session.execute(query))
    now = utcnow()
    tokens = list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id,
                                                         ApiToken.revoked_at.is_(None))))
    for token in tokens:
        token.revoked_at = now
    others: dict[str, list[str]] = {}
    for revoker in CREDENTIAL_REVOKERS:
        others.update(revoker(session, actor, user, reason))
    audit.record(session, actor, "user.access_revoked", subject_user_id=user.id,
                 details={"reason": reason, "sessions": sessions, "tokens": [t.prefix for t in tokens], **others})
    return {"sessions": sessions, "tokens": len(tokens), **{kind: len(ids) for kind, ids in others.items()}}


def deactivate_user(session: Session, actor: Actor, user: User) -> None:
    """Administrator action: the account can no longer log in, and its sessions and tokens end now."""
    if not user.is_active:
        raise Conflict("this account is already deactivated")
    user.is_active = False
    audit.record(session, actor, "user.deactivated", subject_user_id=user.id)
    revoke_access(session, actor, user, reason="account deactivated")


# -- TOTP --------------------------------------------------------------------------------------
def _credential(session: Session, user: User) -> LocalCredential:
    cred = session.get(LocalCredential, user.id)
    if cred is None:
        raise Invalid("this account signs in through its home organisation; MFA is managed there")
    return cred


@dataclass
class Enrolment:
    secret: str
    uri: str
    qr_svg_data_uri: str


def begin_totp_enrolment(session: Session, user: User, hub_secret: bytes) -> Enrolment:
    """A new (unconfirmed) TOTP seed; replaces any earlier unconfirmed one."""
    cred = _credential(session, user)
    if cred.mfa_enrolled:
        raise Conflict("MFA is already enrolled; an administrator can reset it")
    seed = pyotp.random_base32()
    cred.totp_secret = FieldCipher(hub_secret, "totp").encrypt(seed)
    return _enrolment(seed, cred.username)


def current_enrolment(session: Session, user: User, hub_secret: bytes) -> Enrolment | None:
    cred = _credential(session, user)
    if cred.mfa_enrolled or cred.totp_secret is None:
        return None
    return _enrolment(FieldCipher(hub_secret, "totp").decrypt(cred.totp_secret), cred.username)


def _enrolment(seed: str, username: str) -> Enrolment:
    uri = pyotp.TOTP(seed).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)
    qr = segno.make(uri, error="m").svg_data_uri(scale=5, title="TOTP enrolment QR code")
    return Enrolment(secret=seed, uri=uri, qr_svg_data_uri=qr)


def _accept_totp(cred: LocalCredential, seed: str, code: str) -> bool:
    """Valid in the current ±1 step window, and not a step already used (no replay)."""
    code = re.sub(r"\s", "", code)
    if len(code) != 6 or not code.isascii() or not code.isdigit():  # "²" is a digit to isdigit()
        return False
    totp = pyotp.TOTP(seed)
    now = utcnow().timestamp()
    for offset in (0, -1, 1):
        at = now + offset * totp.interval
        step = totp.timecode(dt.datetime.fromtimestamp(at, dt.UTC))
        if step > cred.totp_last_step and equal_secrets(totp.at(at), code):
            cred.totp_last_step = step
            return True
    return False


def confirm_totp_enrolment(session: Session, user: User, code: str, hub_secret: bytes, ip: str | None
                           ) -> list[str]:
    """Confirm the seed with a first code; returns fresh recovery codes (shown once)."""
    cred = _credential(session, user)
    if cred.totp_secret is None or cred.mfa_enrolled:
        raise Conflict("no enrolment in progress")
    seed = FieldCipher(hub_secret, "totp").decrypt(cred.totp_secret)
    if not _accept_totp(cred, seed, code):
        audit.record(session, Actor(user.id, user.label, ip), "mfa.enrol", outcome="denied",
                     subject_user_id=user.id)
        raise Invalid("that code is not valid; check the device clock and try the next code")
    cred.totp_confirmed_at = utcnow()
    codes = regenerate_recovery_codes(session, user, hub_secret)
    audit.record(session, Actor(user.id, user.label, ip), "mfa.enrol", subject_user_id=user.id)
    return codes


def verify_second_factor(session: Session, user: User, code: str, hub_secret: bytes, ip: str | None,
                         *, limit: int, window_s: int, address_limit: int | None = None) -> str:
    """Check a TOTP or recovery code. Returns which one was used; raises Unauthenticated."""
    cred = _credential(session, user)
    check_throttle(session, cred.username, ip, limit=limit, window_s=window_s, address_limit=address_limit)
    actor = Actor(user.id, user.label, ip)
    if cred.mfa_enrolled and cred.totp_secret is not None:
        seed = FieldCipher(hub_secret, "totp").decrypt(cred.totp_secret)
        if _accept_totp(cred, seed, code):
            audit.record(session, actor, "login.mfa", subject_user_id=user.id, details={"factor": "totp"})
            clear_failed_logins(session, cred.username, ip)
            return "totp"
        normalized = re.sub(r"[\s-]", "", code).lower()
        digest = keyed_digest(hub_secret, "recovery", normalized)
        rc = session.scalar(select(RecoveryCode).where(RecoveryCode.user_id == user.id,
                                                       RecoveryCode.code_hash == digest,
                                                       RecoveryCode.used_at.is_(None)))
        if rc is not None:
            rc.used_at = utcnow()
            audit.record(session, actor, "login.mfa", subject_user_id=user.id,
                         details={"factor": "recovery-code"})
            clear_failed_logins(session, cred.username, ip)
            return "recovery-code"
    note_failed_login(session, cred.username, ip)
    audit.record(session, actor, "login.mfa", outcome="denied", subject_user_id=user.id)
    raise Unauthenticated("that code is not valid")


def regenerate_recovery_codes(session: Session, user: User, hub_secret: bytes) -> list[str]:
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = secrets.token_hex(5)  # 40 bits each, single use, throttled like passwords
        codes.append(f"{raw[:5]}-{raw[5:]}")
        session.add(RecoveryCode(user_id=user.id, code_hash=keyed_digest(hub_secret, "recovery", raw)))
    return codes


def remaining_recovery_codes(session: Session, user: User) -> int:
    return session.scalar(select(func.count()).where(RecoveryCode.user_id == user.id,
                                                     RecoveryCode.used_at.is_(None))) or 0


@dataclass(frozen=True)
class Rekeyed:
    totp_seeds: int  # re-encrypted under the new secret
    recovery_codes: int  # unused ones deleted
    users_without_codes: list[uuid.UUID]  # whose codes those were: they generate new ones on their security page


def rekey_second_factors(session: Session, old_secret: bytes, new_secret: bytes) -> Rekeyed:
    """A hub secret rotation's part in identity: every TOTP seed (enrolled or pending) re-encrypted under the new
    secret. Recovery codes are kept only as digests keyed by the old secret and cannot be re-keyed: the unused
    ones are deleted rather than left verifiable by a retired key (their users keep their TOTP)."""
    old, new = FieldCipher(old_secret, "totp"), FieldCipher(new_secret, "totp")
    seeds = 0
    for cred in session.scalars(select(LocalCredential).where(LocalCredential.totp_secret.is_not(None))):
        assert cred.totp_secret is not None
        try:
            cred.totp_secret = new.encrypt(old.decrypt(cred.totp_secret))
        except ValueError:
            raise Invalid(f"{cred.username}'s TOTP seed cannot be decrypted with the hub secret in use: "
                             f"reset their MFA first (strongroom admin reset-mfa {cred.username})") from None
        seeds += 1
    unused = RecoveryCode.used_at.is_(None)
    users = list(session.scalars(select(RecoveryCode.user_id).where(unused).distinct()))
    codes = rowcount(session.execute(delete(RecoveryCode).where(unused)))
    return Rekeyed(seeds, codes, users)


def reset_mfa(session: Session, actor: Actor, user: User) -> None:
    """Administrator action: the user must enrol again at next login. All sessions and API tokens
    end: they were vouched for by the factor that is now distrusted."""
    cred = _credential(session, user)
    cred.totp_secret = None
    cred.totp_confirmed_at = None
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    audit.record(session, actor, "mfa.reset", subject_user_id=user.id)
    revoke_access(session, actor, user, reason="mfa reset")


# -- browser sessions --------------------------------------------------------------------------
# WebSession.data key: the login was multi-factor but not shown to be recent (an OpenID Provider that answered from
# its own earlier session without saying when it authenticated the user): the session reads data, but every
# fresh-MFA action first sends the user to re-authenticate. Dropped by the next session rotation with MFA.
MFA_NOT_RECENT = "mfa_not_recent"


def start_session(session: Session, user: User, *, stage: str, method: str, mfa: bool, ip: str | None,
                  max_hours: int, mfa_recent: bool = True) -> str:
    """Create a session; returns the cookie value (only its hash is stored). ``mfa_recent=False``: the second factor
    (``mfa``) counts for reading data but never as a fresh one (see ``MFA_NOT_RECENT``)."""
    secret = new_secret()
    now = utcnow()
    session.add(WebSession(id_hash=sha256_hex(secret), user_id=user.id, stage=stage, auth_method=method,
                           mfa_at=now if mfa else None, last_seen_at=now,
                           expires_at=now + dt.timedelta(hours=max_hours), ip=ip,
                           data={} if mfa_recent or not mfa else {MFA_NOT_RECENT: True}))
    if stage == "active":
        user.last_login_at = now
    return secret


def load_session(session: Session, cookie: str | None, *, idle_minutes: int) -> WebSession | None:
    if not cookie or len(cookie) > 200:
        return None
    return load_session_by_hash(session, sha256_hex(cookie), idle_minutes=idle_minutes)


def load_session_by_hash(session: Session, id_hash: str, *, idle_minutes: int) -> WebSession | None:
    """The session stored under ``id_hash`` (what a workspace's cookie names), checked as its cookie would be."""
    ws = session.get(WebSession, id_hash)
    if ws is None:
        return None
    now = utcnow()
    if ws.expires_at <= now or now - ws.last_seen_at > dt.timedelta(minutes=idle_minutes):
        session.delete(ws)
        return None
    if now - ws.last_seen_at > dt.timedelta(seconds=30):  # avoid a write per request
        ws.last_seen_at = now
    return ws


def rotate_session(session: Session, ws: WebSession, *, stage: str, mfa: bool) -> str:
    """Issue a new cookie on privilege change (after MFA), so a pre-login cookie is worthless. With ``mfa`` the
    second factor was just presented (now); without it the session keeps what it had."""
    secret = new_secret()
    now = utcnow()
    fresh = WebSession(id_hash=sha256_hex(secret), user_id=ws.user_id, stage=stage,
                       auth_method=ws.auth_method, mfa_at=now if mfa else ws.mfa_at, last_seen_at=now,
                       expires_at=ws.expires_at, ip=ws.ip, data={} if mfa else dict(ws.data or {}))
    session.delete(ws)
    session.add(fresh)
    if stage == "active":
        user = session.get(User, ws.user_id)
        if user is not None:
            user.last_login_at = now
    return secret


def end_session(session: Session, ws: WebSession, actor: Actor) -> None:
    session.delete(ws)
    audit.record(session, actor, "logout", subject_user_id=ws.user_id)


def session_principal(ws: WebSession, user: User, ip: str | None) -> Principal:
    data = getattr(ws, "data", None) or {}
    return Principal(user=user, via="session", mfa_at=ws.mfa_at, scopes=frozenset(_scopes_for(user)),
                     credential_id=f"session:{ws.id_hash[:8]}", ip=ip,
                     fresh_mfa_allowed=not data.get(MFA_NOT_RECENT))


def _scopes_for(user: User) -> set[str]:
    return {s for s in SCOPES if s != "admin" or user.is_admin}


# -- API tokens --------------------------------------------------------------------------------
TOKEN_RE = re.compile(r"^sr_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{20,100})$")


def create_token(session: Session, principal: Principal, *, name: str, scopes: list[str], days: int,
                 max_days: int) -> tuple[ApiToken, str]:
    """Mint a token; returns it and the plaintext, which is never stored and shown only once."""
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise Invalid("token name must be 1-100 characters")
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise Invalid(f"unknown or missing scopes: {sorted(unknown)}; choose from {sorted(SCOPES)}")
    if not set(scopes) <= principal.scopes:
        raise Invalid("a token cannot have scopes its creator lacks")
    if not 1 <= days <= max_days:
        raise Invalid(f"token lifetime must be 1-{max_days} days")
    prefix = secrets.token_hex(6)
    secret = new_secret(24)
    token = ApiToken(user_id=principal.user.id, name=name, prefix=prefix, secret_hash=sha256_hex(secret),
                     scopes=sorted(set(scopes)), expires_at=utcnow() + dt.timedelta(days=days))
    session.add(token)
    session.flush()
    audit.record(session, principal.actor, "token.created", subject_user_id=principal.user.id,
                 target=f"token:{prefix}", details={"name": name, "scopes": token.scopes, "days": days})
    return token, f"sr_{prefix}_{secret}"


def use_window(now: dt.datetime, seconds: int) -> tuple[dt.datetime, dt.datetime]:
    """The fixed window of ``seconds`` (aligned on the epoch, the same in every process) holding ``now``."""
    epoch = int(now.timestamp())
    start = dt.datetime.fromtimestamp(epoch - epoch % seconds, dt.UTC)
    return start, start + dt.timedelta(seconds=seconds)


def authenticate_token(session: Session, plaintext: str, ip: str | None, *, use_audit: str = "every",
                       window_seconds: int = 60) -> Principal:
    """Resolve a bearer token. Expired, revoked, unknown and malformed tokens are all refused — checked on
    every request, whatever ``use_audit`` says.

    ``use_audit`` (``[security] token_use_audit``) decides how an accepted use is recorded: ``every`` writes a
    ``token.used`` event and ``last_used_at`` on every request; ``window`` writes them for the token's first use
    in each fixed window of ``window_seconds`` (the event names the window), so a busy client's reads take no
    write lock. Refused uses are audited every time in both modes."""
    match = TOKEN_RE.match(plaintext.strip())
    if match is not None and use_audit == "window":
        principal = _from_decision_cache(session, match.group(1), match.group(2), ip, window_seconds)
        if principal is not None:
            return principal
    row = session.execute(_token_statement(), {"prefix": match.group(1)}).first() if match else None
    now = utcnow()
    if (row is None or match is None
            or not secrets.compare_digest(row[0].secret_hash, sha256_hex(match.group(2)))):
        raise Unauthenticated("invalid token")
    token, user = row[0], row[1]
    reason = ("revoked" if token.revoked_at else "expired" if token.expires_at <= now
              else "account disabled" if user is None or not user.is_active else None)
    actor = Actor(token.user_id, user.label if user else str(token.user_id), ip)
    if reason:
        audit.record(session, actor, "token.used", outcome="denied", subject_user_id=token.user_id,
                     target=f"token:{token.prefix}", details={"reason": reason})
        raise Unauthenticated(f"token {reason}")
    assert user is not None
    if use_audit == "window":
        window, moved = _record_use_in_window(session, token.id, token.prefix, token.user_id, token.last_used_at,
                                              actor, now, window_seconds)
        if moved:
            set_committed_value(token, "last_used_at", now)
            decision_cache.remember_window_on_commit(session, token.prefix, window)
        decision_cache.remember_token(session, token, user, None if moved else window)
    else:
        token.last_used_at = now
        audit.record(session, actor, "token.used", subject_user_id=user.id, target=f"token:{token.prefix}")
    return _token_principal(user, token.scopes, token.created_at, token.prefix, ip)


def _token_principal(user: User, token_scopes: Iterable[str], created_at: dt.datetime, prefix: str,
                     ip: str | None) -> Principal:
    # A token was minted under fresh MFA: that moment is its MFA time. A project-bound one (a workspace's) reads data
    # with it but never passes a fresh-MFA check (Principal.mfa_is_fresh), and deps refuses it on account routes.
    token_scopes = list(token_scopes)
    scopes = frozenset(token_scopes) & frozenset(_scopes_for(user))
    bound = [s.removeprefix(PROJECT_SCOPE) for s in token_scopes if s.startswith(PROJECT_SCOPE)]
    return Principal(user=user, via="token", mfa_at=created_at, scopes=scopes,
                     credential_id=f"token:{prefix}", ip=ip,
                     project_id=uuid.UUID(bound[0]) if bound else None)


def _from_decision_cache(session: Session, prefix: str, secret: str, ip: str | None,
                         window_seconds: int) -> Principal | None:
    """The token check from the process's decision cache (``decision_cache``), or None: not cached, or anything
    but an accepted use (a wrong secret, an expired token: the database path decides and audits it)."""
    found = decision_cache.cached_token(session, prefix)
    if found is None:
        return None
    entry, state = found
    now = utcnow()
    if entry.expires_at <= now or not secrets.compare_digest(entry.secret_hash, sha256_hex(secret)):
        return None
    user = decision_cache.user_in(session, entry)
    start, _ = use_window(now, window_seconds)
    recorded = state.windows.get(prefix)
    if recorded is None or recorded < start:
        actor = Actor(entry.user_id, user.label, ip)
        window, moved = _record_use_in_window(session, entry.token_id, prefix, entry.user_id, recorded, actor, now,
                                              window_seconds)
        if moved:
            decision_cache.remember_window_on_commit(session, prefix, window, state)
        else:  # recorded and committed by another request
            state.windows[prefix] = window
    return _token_principal(user, entry.scopes, entry.created_at, prefix, ip)


@cache
def _token_statement() -> Select[ApiToken, User]:
    """The token by its prefix with its user, in one query (a user that is gone comes back as None). Built once
    per process: it is asked on every API request."""
    return (select(ApiToken, User).outerjoin(User, User.id == ApiToken.user_id)
            .where(ApiToken.prefix == bindparam("prefix")))


def _record_use_in_window(session: Session, token_id: uuid.UUID, prefix: str, user_id: uuid.UUID,
                          last_used_at: dt.datetime | None, actor: Actor, now: dt.datetime, seconds: int
                          ) -> tuple[dt.datetime, bool]:
    """The token's first accepted use in this window: ``last_used_at`` and one ``token.used`` event. Later uses
    in the window read ``last_used_at`` and write nothing. The conditional UPDATE settles a race between
    processes: only the request that moved ``last_used_at`` into the window writes the event. Returns the
    window's start (its use is recorded now, by this request or another) and whether this request moved it."""
    start, end = use_window(now, seconds)
    if last_used_at is not None and last_used_at >= start:
        return start, False
    moved = session.execute(
        update(ApiToken).where(ApiToken.id == token_id,
                               or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < start))
        .values(last_used_at=now).execution_options(synchronize_session=False))
    if rowcount(moved) != 1:
        return start, False  # another request recorded this window's use
    audit.record(session, actor, "token.used", subject_user_id=user_id, target=f"token:{prefix}",
                 details={"window_start": start.isoformat(), "window_end": end.isoformat(),
                          "window_seconds": seconds})
    return start, True


PROJECT_SCOPE = "project:"  # a scope entry binding a token to one project (never offered on the token page)


def create_project_token(session: Session, actor: Actor, user: User, *, project_id: uuid.UUID, name: str,
                         scopes: list[str], minutes: int) -> tuple[ApiToken, str]:
    """A short-lived token bound to one project (a notebook workspace's ``STRONGROOM_TOKEN``): minted by the
    hub for a member who just passed fresh MFA, revoked when the workspace stops."""
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise Invalid(f"unknown or missing scopes: {sorted(unknown)}")
    prefix = secrets.token_hex(6)
    secret = new_secret(24)
    token = ApiToken(user_id=user.id, name=name[:100], prefix=prefix, secret_hash=sha256_hex(secret),
                     scopes=[*sorted(set(scopes)), f"{PROJECT_SCOPE}{project_id}"],
                     expires_at=utcnow() + dt.timedelta(minutes=minutes))
    session.add(token)
    session.flush()
    audit.record(session, actor, "token.created", subject_user_id=user.id, project_id=project_id,
                 target=f"token:{prefix}", details={"name": token.name, "scopes": token.scopes,
                                                    "minutes": minutes})
    return token, f"sr_{prefix}_{secret}"


def revoke_token_by_prefix(session: Session, actor: Actor, prefix: str) -> None:
    """Revoke a token the hub minted (a workspace's, at stop)."""
    token = session.scalar(select(ApiToken).where(ApiToken.prefix == prefix))
    if token is not None and token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(session, actor, "token.revoked", subject_user_id=token.user_id, target=f"token:{prefix}")


def list_tokens(session: Session, user: User) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id)
                                .order_by(ApiToken.created_at.desc())))


def revoke_token(session: Session, principal: Principal, prefix: str) -> ApiToken:
    token = session.scalar(select(ApiToken).where(ApiToken.prefix == prefix,
                                                  ApiToken.user_id == principal.user.id))
    if token is None:
        raise NotFound("no such token")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(session, principal.actor, "token.revoked", subject_user_id=principal.user.id,
                     target=f"token:{prefix}")
    return token


# -- housekeeping ------------------------------------------------------------------------------
def purge_expired(session: Session, *, window_s: int) -> dict[str, int]:
    now = utcnow()
    s = rowcount(session.execute(delete(WebSession).where(WebSession.expires_at <= now)))
    a = rowcount(session.execute(delete(LoginAttempt).where(  # failures: after their window; known addresses later
        (~LoginAttempt.key.startswith("known:") & (LoginAttempt.created_at < now - dt.timedelta(seconds=window_s)))
        | (LoginAttempt.created_at < now - dt.timedelta(days=KNOWN_ADDRESS_DAYS)))))
    from .models import OidcLoginState

    o = rowcount(session.execute(delete(OidcLoginState).where(
        OidcLoginState.created_at < now - dt.timedelta(minutes=15))))
    return {"sessions": s, "login_attempts": a, "oidc_states": o}
