"""`strongroom admin` user commands: operator commands run on the hub host, audited as the system actor."""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Column, Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit.service import Actor
from ..config import get_settings
from ..db import transaction
from ..errors import DomainError
from ..hub import Hub
from ..text import for_terminal
from . import service
from .models import User

app = typer.Typer()  # merged into `strongroom admin` (identity's includeme)
console = Console()


def _operator() -> Actor:
    return Actor(id=None, label=f"cli:{getpass.getuser()}@{os.uname().nodename}")


def _fail(exc: DomainError) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/] {exc.detail}")
    raise typer.Exit(2)


@app.command("create-user")
def create_user(
    username: str,
    display_name: Annotated[str, typer.Option("--name", help="Full name.")],
    email: Annotated[str | None, typer.Option(help="E-mail address.")] = None,
    affiliation: Annotated[str | None, typer.Option(help="Home organisation.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Make a platform administrator.")] = False,
    password: Annotated[str | None, typer.Option(
        envvar="STRONGROOM_NEW_PASSWORD", help="Password (prompted if omitted; ≥ 12 characters).")] = None,
) -> None:
    """Create a local account. The user enrols TOTP at first login."""
    hub = Hub.from_settings(get_settings())
    password = password or typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        with transaction(hub.sessions) as session:
            user = service.create_local_user(session, _operator(), username=username, password=password,
                                             display_name=display_name, email=email, affiliation=affiliation,
                                             is_admin=admin)
            console.print(f"created [bold]{username}[/] ({user.id})")
    except DomainError as exc:
        _fail(exc)


def _act_on_user(user: str, action: Callable[[Session, Actor, User], object]) -> None:
    """Run ``action(session, operator, user)`` in one transaction; a clear error for an unknown user."""
    hub = Hub.from_settings(get_settings())
    try:
        with transaction(hub.sessions) as session:
            found = service.find_user(session, user)
            if found is None:
                raise typer.BadParameter(f"no user {user!r}")
            action(session, _operator(), found)
    except DomainError as exc:
        _fail(exc)


@app.command("reset-mfa")
def reset_mfa(user: Annotated[str, typer.Argument(help="Username, e-mail or id.")]) -> None:
    """Remove a user's TOTP and recovery codes, end their sessions and revoke their API tokens."""
    _act_on_user(user, service.reset_mfa)
    console.print(f"MFA reset for {user}")


@app.command("deactivate")
def deactivate(user: Annotated[str, typer.Argument(help="Username, e-mail or id.")]) -> None:
    """Stop an account from logging in; its browser sessions and API tokens end at once."""
    _act_on_user(user, service.deactivate_user)
    console.print(f"deactivated {user}; their sessions and API tokens are revoked")


@app.command("users")
def users(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output, nothing cut.")] = False,
          ) -> None:
    """List all users."""
    hub = Hub.from_settings(get_settings())
    with hub.sessions() as session:
        rows: list[dict[str, Any]] = [
            {"id": str(u.id), "name": u.display_name, "subject": u.subject, "issuer": u.issuer,
             "email": u.email or "", "admin": u.is_admin, "active": u.is_active,
             "last_login": u.last_login_at.isoformat(timespec="minutes") if u.last_login_at else None}
            for u in session.scalars(select(User).order_by(User.display_name))]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    # fold, never cut: an id or an e-mail address with an ellipsis in it is useless to copy
    table = Table(*(Column(h, overflow="fold") for h in
                    ("id", "name", "subject", "issuer", "e-mail", "admin", "active", "last login")))
    for r in rows:
        # names, subjects and e-mails come from users and identity providers: shown as text on the operator's screen
        table.add_row(r["id"], *(for_terminal(r[k]) for k in ("name", "subject", "issuer", "email")),
                      "yes" if r["admin"] else "",
                      "yes" if r["active"] else "no", (r["last_login"] or "").replace("T", " ")[:16])
    console.print(table)
