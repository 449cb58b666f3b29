"""Login, MFA enrolment, re-authentication and the account page (thin: services do the work)."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from ..audit import service as audit
from ..audit.service import Actor
from ..db import utcnow
from ..deps import (
    OIDC_STATE_COOKIE,
    SESSION_COOKIE,
    CsrfChecked,
    Db,
    HubDep,
    PostedForm,
    WebPrincipal,
    client_ip,
    current_web_session,
    delete_cookie,
    read_cookie,
    set_cookie,
    show_viewer,
    use_session_cookie,
)
from ..errors import DomainError, Forbidden, Invalid, TooManyRequests, Unauthenticated
from ..hub import Hub
from ..schemas import whole_number
from ..web.templating import redirect_with, templates
from . import service
from .models import LocalCredential, OidcLoginState, WebSession
from .oidc import OidcClient
from .principal import SCOPES
from .secrets import MIN_PASSWORD_LENGTH, equal_secrets, sha256_hex

router = APIRouter()


def _safe_next(value: str | None) -> str:
    """Only same-site relative paths: never an open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/projects"
    if len(value) > 2000 or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "/projects"  # browsers drop tabs and newlines from a URL: "/\t/evil" would become "//evil"
    return value


def _enrol_url(next: str | None) -> str:
    """MFA enrolment, carrying on to where the user was going (the default needs no parameter)."""
    target = _safe_next(next)
    return "/mfa/enrol" if target == "/projects" else f"/mfa/enrol?next={quote(target)}"


def _with_session_cookie(response: Response, hub: Hub, value: str) -> Response:
    set_cookie(response, hub.settings, SESSION_COOKIE, value)
    return response


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _refused(request: Request, template: str, context: dict[str, object], exc: DomainError) -> Response:
    """Re-render a login form with the refusal; throttling adds Retry-After."""
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else None
    return templates.TemplateResponse(request, template, {**context, "error": exc.detail},
                                      status_code=exc.status, headers=headers)


# -- password + TOTP ---------------------------------------------------------------------------
@router.get("/login")
def login_page(request: Request, db: Db, next: str | None = None) -> Response:
    found = current_web_session(request, db)
    if found is not None:
        ws, _user = found
        if ws.stage == "active":
            return _redirect(_safe_next(next))
        if ws.stage == "password-ok":
            return _redirect(f"/login/mfa?next={quote(_safe_next(next))}")
        if ws.stage == "enrol":
            return _redirect(_enrol_url(next))
    return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login", dependencies=[CsrfChecked])
def login_submit(request: Request, db: Db, hub: HubDep, username: Annotated[str, Form(max_length=200)],
                 password: Annotated[str, Form(max_length=1024)], next: Annotated[str, Form()] = "/projects",
                 ) -> Response:
    sec = hub.settings.security
    try:
        check = service.authenticate_password(db, username, password, ip=client_ip(request),
                                              limit=sec.login_attempts_per_window,
                                              window_s=sec.login_window_seconds,
                                              address_limit=sec.login_attempts_per_address)
    except DomainError as exc:
        db.commit()  # keep the refusal's audit event and throttle count
        return _refused(request, "login.html", {"next": _safe_next(next)}, exc)
    stage = "enrol" if check.needs_enrolment else "password-ok"
    cookie = service.start_session(db, check.user, stage=stage, method="local", mfa=False,
                                   ip=client_ip(request), max_hours=sec.session_max_hours)
    target = _enrol_url(next) if stage == "enrol" else f"/login/mfa?next={quote(_safe_next(next))}"
    response = redirect_with(request, target,
                             "Password accepted. Set up your second factor to continue." if stage == "enrol"
                             else "Password accepted. Now the code from your authenticator app.")
    return _with_session_cookie(response, hub, cookie)


@router.get("/login/mfa")
def mfa_page(request: Request, db: Db, next: str | None = None) -> Response:
    found = current_web_session(request, db)
    if found is None or found[0].stage != "password-ok":
        return _redirect("/login")
    return templates.TemplateResponse(request, "login_mfa.html", {"next": _safe_next(next), "error": None,
                                                                  "action": "/login/mfa"})


@router.post("/login/mfa", dependencies=[CsrfChecked])
def mfa_submit(request: Request, db: Db, hub: HubDep, code: Annotated[str, Form(max_length=20)],
               next: Annotated[str, Form()] = "/projects") -> Response:
    found = current_web_session(request, db)
    if found is None or found[0].stage != "password-ok":
        return _redirect("/login")
    ws, user = found
    sec = hub.settings.security
    try:
        service.verify_second_factor(db, user, code, hub.secret, client_ip(request),
                                     limit=sec.login_attempts_per_window, window_s=sec.login_window_seconds,
                                     address_limit=sec.login_attempts_per_address)
    except DomainError as exc:
        db.commit()
        return _refused(request, "login_mfa.html", {"next": _safe_next(next), "action": "/login/mfa"}, exc)
    cookie = service.rotate_session(db, ws, stage="active", mfa=True)
    response = redirect_with(request, _safe_next(next), f"Logged in as {user.display_name}.")
    return _with_session_cookie(response, hub, cookie)


@router.get("/mfa/enrol")
def enrol_page(request: Request, db: Db, hub: HubDep, next: str | None = None) -> Response:
    found = current_web_session(request, db)
    if found is None or found[0].stage not in ("enrol", "active"):
        return _redirect("/login")
    ws, user = found
    cred = db.get(LocalCredential, user.id)
    if cred is None or cred.mfa_enrolled:
        return _redirect("/account")
    enrolment = service.current_enrolment(db, user, hub.secret) or service.begin_totp_enrolment(
        db, user, hub.secret)
    return templates.TemplateResponse(request, "mfa_enrol.html", {"enrolment": enrolment, "error": None,
                                                                  "next": _safe_next(next)})


@router.post("/mfa/enrol", dependencies=[CsrfChecked])
def enrol_submit(request: Request, db: Db, hub: HubDep, code: Annotated[str, Form(max_length=20)],
                 next: Annotated[str, Form(max_length=2000)] = "/projects") -> Response:
    found = current_web_session(request, db)
    if found is None or found[0].stage not in ("enrol", "active"):
        return _redirect("/login")
    ws, user = found
    try:
        codes = service.confirm_totp_enrolment(db, user, code, hub.secret, client_ip(request))
    except DomainError as exc:
        db.commit()
        enrolment = service.current_enrolment(db, user, hub.secret)
        return _refused(request, "mfa_enrol.html", {"enrolment": enrolment, "next": _safe_next(next)}, exc)
    cookie = service.rotate_session(db, ws, stage="active", mfa=True)
    use_session_cookie(request, cookie)
    show_viewer(request, user)
    # The page the user was going to comes after the codes are saved (only same-site paths).
    response = templates.TemplateResponse(request, "recovery_codes.html", {
        "codes": codes, "first": True, "next": _safe_next(next),
        "notice": {"kind": "ok", "text": "Multi-factor authentication is on."}})
    return _with_session_cookie(response, hub, cookie)


@router.get("/login/reauth")
def reauth_page(request: Request, principal: WebPrincipal, next: str | None = None) -> Response:
    if not principal.user.is_local:
        return _redirect(f"/auth/oidc/login?next={quote(_safe_next(next))}&reauth=1")
    return templates.TemplateResponse(request, "login_mfa.html",
                                      {"next": _safe_next(next), "error": None, "action": "/login/reauth",
                                       "reauth": True})


@router.post("/login/reauth", dependencies=[CsrfChecked])
def reauth_submit(request: Request, db: Db, hub: HubDep, principal: WebPrincipal,
                  code: Annotated[str, Form(max_length=20)], next: Annotated[str, Form()] = "/projects"
                  ) -> Response:
    found = current_web_session(request, db)
    assert found is not None
    ws, user = found
    sec = hub.settings.security
    try:
        service.verify_second_factor(db, user, code, hub.secret, client_ip(request),
                                     limit=sec.login_attempts_per_window, window_s=sec.login_window_seconds,
                                     address_limit=sec.login_attempts_per_address)
    except DomainError as exc:
        db.commit()
        return _refused(request, "login_mfa.html",
                        {"next": _safe_next(next), "action": "/login/reauth", "reauth": True}, exc)
    ws.mfa_at = utcnow()
    ws.data = {k: v for k, v in (ws.data or {}).items() if k != service.MFA_NOT_RECENT}
    return redirect_with(request, _safe_next(next), "Identity confirmed: you can go on.")


@router.post("/logout", dependencies=[CsrfChecked])
def logout(request: Request, db: Db, hub: HubDep) -> Response:
    found = current_web_session(request, db)
    if found is not None:
        ws, user = found
        service.end_session(db, ws, Actor(user.id, user.label, client_ip(request)))
    response = redirect_with(request, "/login", "You are logged out.")
    delete_cookie(response, hub.settings, SESSION_COOKIE)
    return response


# -- OIDC --------------------------------------------------------------------------------------
def _oidc(request: Request, hub: Hub) -> OidcClient:
    if not hub.settings.oidc.issuer:
        raise Invalid("no OpenID Provider is configured on this hub")
    client = getattr(request.app.state, "oidc", None)
    if client is None:
        client = OidcClient(hub.settings.oidc, hub.settings.base_url.rstrip("/") + "/auth/oidc/callback")
        request.app.state.oidc = client
    return client


# WebSession.data key: the state (hash) of the re-authentication this session asked its OpenID Provider for.
OIDC_REAUTH = "oidc_reauth_state"


@router.get("/auth/oidc/login")
def oidc_login(request: Request, db: Db, hub: HubDep, next: str | None = None, reauth: bool = False) -> Response:
    """Start an OpenID Connect login. ``reauth`` (from /login/reauth, for a fresh second factor): the provider is
    told to authenticate the user again now, and the callback accepts nothing less for this session."""
    client = _oidc(request, hub)
    state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    db.add(OidcLoginState(state_hash=sha256_hex(state), nonce=nonce, code_verifier=verifier,
                          next_url=_safe_next(next)))
    found = current_web_session(request, db) if reauth else None
    if found is not None and found[0].stage == "active":
        found[0].data = {**(found[0].data or {}), OIDC_REAUTH: sha256_hex(state)}
    response = _redirect(client.authorization_url(state=state, nonce=nonce, code_verifier=verifier, reauth=reauth))
    # Binds the flow to this browser: a callback URL opened elsewhere (login CSRF) is refused. Path=/ with the
    # __Host- name (cookies Secure), like every hub cookie: a state cookie tossed in from a sibling host, naming a
    # login the attacker started (its row is real, its code the attacker's), would complete that login here.
    set_cookie(response, hub.settings, OIDC_STATE_COOKIE, state, max_age=600)
    return response


@router.get("/auth/oidc/callback")
def oidc_callback(request: Request, db: Db, hub: HubDep, state: str = "", code: str = "",
                  error: str | None = None) -> Response:
    pending = db.get(OidcLoginState, sha256_hex(state)) if state else None
    if pending is None or (utcnow() - pending.created_at).total_seconds() > 600:
        raise Unauthenticated("this login link expired or was already used; start again")
    if not equal_secrets(read_cookie(request, OIDC_STATE_COOKIE) or "", state):
        raise Unauthenticated("this login was started in another browser; start again here")
    db.delete(pending)  # single use
    if error or not code:
        db.commit()
        raise Unauthenticated(f"the identity provider did not log you in ({error or 'no code'})")
    identity = _oidc(request, hub).complete(code=code, code_verifier=pending.code_verifier, nonce=pending.nonce)
    user, created = service.upsert_federated_user(db, issuer=identity.issuer, subject=identity.subject,
                                                  display_name=identity.name, email=identity.email,
                                                  affiliation=identity.affiliation)
    actor = Actor(user.id, user.label, client_ip(request))
    if created:
        audit.record(db, actor, "user.created", subject_user_id=user.id, target=identity.subject,
                     details={"issuer": identity.issuer})
    details = {"method": "oidc", "acr": identity.acr, "mfa": identity.mfa}
    if not user.is_active:
        audit.record(db, actor, "login.oidc", outcome="denied", subject_user_id=user.id,
                     details={**details, "reason": "account disabled"})
        db.commit()
        raise Forbidden("this account is disabled")
    if not identity.mfa and service.holds_data_role(db, user):
        audit.record(db, actor, "login.oidc", outcome="denied", subject_user_id=user.id,
                     details={**details, "reason": "mfa required for data role"})
        db.commit()
        raise Forbidden("your role can see data, so your home organisation must log you in with "
                        "multi-factor authentication; enable MFA there and try again", mfa_required=True)
    # A second factor counts as fresh only when the provider shows it authenticated the user for this very request
    # (auth_time), not when it answered from a session of its own that may be hours old.
    recent = identity.mfa and identity.authenticated_since(pending.created_at)
    found = current_web_session(request, db)
    if found is not None and found[0].user_id == user.id and _reauth_of(found[0], pending):
        ws, _ = found  # this session's re-authentication: refreshes its MFA, or nothing
        if not recent:
            audit.record(db, actor, "login.oidc", outcome="denied", subject_user_id=user.id,
                         details={**details, "reauth": True, "auth_time": _iso(identity.auth_time),
                                  "reason": "no fresh multi-factor authentication"})
            db.commit()
            raise Forbidden("your home organisation did not ask for your password and second factor again, so this "
                            "does not confirm that it is you; try again and sign in there when asked (log out of "
                            "your home organisation first if it does not ask)")
        audit.record(db, actor, "login.oidc", subject_user_id=user.id, details={**details, "reauth": True})
        cookie = service.rotate_session(db, ws, stage="active", mfa=True)
        return _oidc_done(_with_session_cookie(_redirect(pending.next_url), hub, cookie), hub)
    audit.record(db, actor, "login.oidc", subject_user_id=user.id, details=details)
    if found is not None:  # a login replaces whatever session this browser had
        db.delete(found[0])
    cookie = service.start_session(db, user, stage="active", method="oidc", mfa=identity.mfa, mfa_recent=recent,
                                   ip=client_ip(request), max_hours=hub.settings.security.session_max_hours)
    response = redirect_with(request, pending.next_url, f"Logged in as {user.display_name}.")
    return _oidc_done(_with_session_cookie(response, hub, cookie), hub)


def _oidc_done(response: Response, hub: Hub) -> Response:
    delete_cookie(response, hub.settings, OIDC_STATE_COOKIE)
    return response


def _reauth_of(ws: WebSession, pending: OidcLoginState) -> bool:
    """Whether this login is the re-authentication ``ws`` asked for (see ``oidc_login``)."""
    return (ws.data or {}).get(OIDC_REAUTH) == pending.state_hash


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment else None


# -- account -----------------------------------------------------------------------------------
def _account_context(db: Db, principal: WebPrincipal) -> dict[str, object]:
    cred = db.get(LocalCredential, principal.user.id)
    return {
        "user": principal.user,
        "principal": principal,
        "credential": cred,
        "recovery_left": service.remaining_recovery_codes(db, principal.user) if cred else None,
        "tokens": service.list_tokens(db, principal.user),
        "scopes": {k: v for k, v in SCOPES.items() if k in principal.scopes},
        "events": audit.personal_trail(db, principal.user.id, limit=20),
        "now": utcnow(),
        "new_token": None,
        "error": None,
        "password_error": None,
        "password_changed": False,
        "min_password_length": MIN_PASSWORD_LENGTH,
        "countries": _countries(),
    }


def _countries() -> list[tuple[str, str]]:
    import pycountry

    return sorted(((str(c.alpha_2), str(getattr(c, "common_name", None) or c.name)) for c in pycountry.countries),
                  key=lambda pair: pair[1])


@router.get("/account")
def account_page(request: Request, db: Db, principal: WebPrincipal) -> Response:
    return templates.TemplateResponse(request, "account.html", _account_context(db, principal))


@router.post("/account/country", dependencies=[CsrfChecked])
def set_country(request: Request, posted: PostedForm, db: Db, principal: WebPrincipal) -> Response:
    try:
        user = service.set_country(db, principal, str(posted.form.get("country", "")))
    except Invalid as exc:
        ctx = _account_context(db, principal) | {"error": exc.detail}
        return templates.TemplateResponse(request, "account.html", ctx, status_code=422)
    return redirect_with(request, "/account", f"Country saved: {user.country}." if user.country
                         else "Country cleared.")


@router.post("/account/tokens", dependencies=[CsrfChecked])
def create_token(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal) -> Response:
    form = posted.form
    service.require_fresh_mfa(principal, hub.settings.security.fresh_mfa_minutes)
    try:
        days = whole_number(str(form.get("days", "30")), "days", minimum=1,
                            maximum=hub.settings.security.token_max_days)
        token, plaintext = service.create_token(db, principal, name=str(form.get("name", "")),
                                                scopes=[str(s) for s in form.getlist("scopes")], days=days,
                                                max_days=hub.settings.security.token_max_days)
    except Invalid as exc:
        ctx = _account_context(db, principal) | {"error": exc.detail}
        return templates.TemplateResponse(request, "account.html", ctx, status_code=422)
    ctx = _account_context(db, principal) | {"new_token": plaintext, "new_token_name": token.name,
                                             "notice": {"kind": "ok", "text": f"Token “{token.name}” created."}}
    return templates.TemplateResponse(request, "account.html", ctx)


@router.post("/account/tokens/{prefix}/revoke", dependencies=[CsrfChecked])
def revoke_token(request: Request, db: Db, principal: WebPrincipal, prefix: str) -> Response:
    service.revoke_token(db, principal, prefix)
    return redirect_with(request, "/account#tokens", "Token revoked.")


@router.post("/account/recovery-codes", dependencies=[CsrfChecked])
def new_recovery_codes(request: Request, db: Db, hub: HubDep, principal: WebPrincipal) -> Response:
    service.require_fresh_mfa(principal, hub.settings.security.fresh_mfa_minutes)
    if not principal.user.is_local:
        raise Invalid("your home organisation manages your MFA")
    codes = service.regenerate_recovery_codes(db, principal.user, hub.secret)
    audit.record(db, principal.actor, "mfa.recovery_codes_regenerated", subject_user_id=principal.user.id)
    return templates.TemplateResponse(request, "recovery_codes.html", {
        "codes": codes, "first": False, "next": "/account",
        "notice": {"kind": "ok", "text": "New recovery codes made; the old ones no longer work."}})



@router.get("/account/password")
def password_page() -> Response:
    """Where a re-authentication for the password form returns to."""
    return _redirect("/account#password")


@router.post("/account/password", dependencies=[CsrfChecked])
def change_password(request: Request, db: Db, hub: HubDep, principal: WebPrincipal,
                    current_password: Annotated[str, Form(max_length=1024)],
                    new_password: Annotated[str, Form(max_length=1024)],
                    new_password_again: Annotated[str, Form(max_length=1024)]) -> Response:
    sec = hub.settings.security
    service.require_fresh_mfa(principal, sec.fresh_mfa_minutes)
    found = current_web_session(request, db)
    assert found is not None
    ws, _user = found
    try:
        if new_password != new_password_again:
            raise Invalid("the two new passwords differ")
        service.change_password(db, principal, current_password, new_password, keep_session=ws,
                                limit=sec.login_attempts_per_window, window_s=sec.login_window_seconds,
                                address_limit=sec.login_attempts_per_address)
    except (Invalid, TooManyRequests) as exc:
        # the refusal's audit event and throttle count are kept: this response commits
        ctx = _account_context(db, principal) | {"password_error": exc.detail}
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else None
        return templates.TemplateResponse(request, "account.html", ctx, status_code=exc.status, headers=headers)
    # A new session id for this browser too: a copy of the old cookie is worth nothing now.
    cookie = service.rotate_session(db, ws, stage="active", mfa=False)
    use_session_cookie(request, cookie)
    ctx = _account_context(db, principal) | {"password_changed": True,
                                             "notice": {"kind": "ok", "text": "Password changed."}}
    response = templates.TemplateResponse(request, "account.html", ctx)
    return _with_session_cookie(response, hub, cookie)
