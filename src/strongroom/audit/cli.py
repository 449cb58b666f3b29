"""`strongroom audit`: verify the chain against its checkpoints, write a checkpoint, list events."""

from __future__ import annotations

import getpass
import os
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..config import get_settings
from ..db import open_session
from ..hub import Hub
from ..text import for_terminal
from . import checkpoints, service
from .anchor import AnchorKey

app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
console = Console()


@app.command()
def verify(
    public_key: Annotated[list[Path] | None, typer.Option(
        help="Check checkpoint signatures with this exported public key (an auditor's own copy) instead of the "
             "hub's key files (the current key and those `rotate-anchor-key` retired). Repeat it for the keys "
             "before and after a rotation: a checkpoint signed by any holds.")
    ] = None,
) -> None:
    """Walk the whole hash chain and compare it with the signed checkpoints; exit 1 and say where if
    any event was edited, deleted or reordered, the newest events were cut off, or a checkpoint is bad."""
    settings = get_settings()
    hub = Hub.from_settings(settings)
    keys = ([AnchorKey.from_public_pem(path.read_bytes()) for path in public_key] if public_key
            else checkpoints.verification_keys(settings))
    anchors, bad = checkpoints.gather(settings, keys)
    with open_session(hub.sessions, deferred=True) as session:  # reads without the write lock
        total = service.count(session)
        session.rollback()
        with Progress(TextColumn("verifying audit chain"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console, transient=True) as progress:
            task = progress.add_task("verify", total=total)
            report = service.verify(session, progress=lambda n: progress.update(task, completed=n),
                                    anchors=anchors)
    report.problems += [service.Problem(0, "bad-checkpoint", b) for b in bad]
    if report.ok:
        console.print(f"[green]OK[/]: {report.checked} events, chain intact")
        if report.proven is not None:
            n = report.proven.seq
            after = (f"events {n + 1}–{report.checked} after it chained but not yet anchored"
                     if report.checked > n else "")
            proven = f"events 1–{n} proven by the checkpoint of {report.proven.at}" if n else ""
            console.print("; ".join(p for p in (proven, after) if p), soft_wrap=True)
        else:
            console.print("[yellow]no checkpoint found[/]: the chain is intact but a cut-off of its newest "
                          "events cannot be ruled out (run `strongroom audit checkpoint`)")
        return
    table = Table("event #", "problem", "detail", title="Audit chain is broken", title_style="bold red")
    for p in report.problems:
        table.add_row(str(p.seq), p.kind, p.detail)
    console.print(table)
    console.print(f"[red]FAILED[/]: {len(report.problems)} problem(s) in {report.checked} events")
    raise typer.Exit(1)


@app.command()
def checkpoint() -> None:
    """Sign the chain's current end now and write it to the checkpoint file, S3 and the log (the hub
    also does this every 5 minutes). Exit 1 if the chain is shorter than an earlier checkpoint."""
    hub = Hub.from_settings(get_settings())
    try:
        written = checkpoints.write_checkpoint(hub)
    except checkpoints.AnchorRefused as exc:
        Console(stderr=True).print(f"[red]refused:[/] {exc}")
        raise typer.Exit(1) from None
    cp = written.checkpoint
    assert cp is not None
    if written.unchanged:
        console.print(f"unchanged: event {cp.seq} is already anchored by the checkpoint of {cp.at}")
    else:
        console.print(f"checkpoint: event {cp.seq} at {cp.at} → {', '.join(written.sinks)}", soft_wrap=True)


@app.command("rotate-anchor-key")
def rotate_anchor_key() -> None:
    """Sign checkpoints with a new anchor key from now on. The old key's public half stays in the keys
    directory (``audit-anchor-retired/``), so its checkpoints keep anchoring the chain; its private half is
    gone. Audited, and the chain is anchored under the new key at once. Export the new public key for the
    auditors (``strongroom audit public-key``)."""
    from ..audit.service import Actor
    from ..audit.service import record as audit
    from ..db import transaction

    settings = get_settings()
    hub = Hub.from_settings(settings)
    old, new = checkpoints.rotate_anchor_key(settings)
    with transaction(hub.sessions) as session:
        audit(session, Actor(id=None, label=f"cli:{getpass.getuser()}@{os.uname().nodename}"),
              "audit.anchor_key.rotated", target=f"anchor-key:{new}", details={"previous": old, "current": new})
    written = checkpoints.write_checkpoint(hub)
    console.print(f"[green]rotated[/]: checkpoints are signed with {new}; {old} is kept for verification "
                  f"(public half). Anchored event {written.checkpoint.seq if written.checkpoint else 0}.")


@app.command("public-key")
def public_key_cmd() -> None:
    """Print the checkpoint signing key's public half (PEM), for verifying checkpoints elsewhere."""
    console.print(checkpoints.anchor_key(get_settings()).public_pem(), end="", highlight=False)


def _operator():
    from ..identity.cli import _operator as operator

    return operator()


@app.command("list")
def list_events(
    project: Annotated[str | None, typer.Option(
        help="Only events of this project (slug). The read is written to the audit log.")] = None,
    all_projects: Annotated[bool, typer.Option(
        "--all-projects", help="Project events too. The read is written to the audit log.")] = False,
    user: Annotated[str | None, typer.Option(help="Only events by or about this user (username, e-mail, id).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
) -> None:
    """Show recent events (operators on the hub host): platform events, or — audited — a project's."""
    from sqlalchemy import select

    from ..db import transaction
    from ..identity.service import find_user
    from ..projects.models import Project

    hub = Hub.from_settings(get_settings())
    with transaction(hub.sessions) as session:
        project_id: uuid.UUID | None = None
        user_id: uuid.UUID | None = None
        if project:
            found = session.scalar(select(Project).where(Project.slug == project))
            if found is None:
                raise typer.BadParameter(f"no project {project!r}")
            project_id = found.id
        if user:
            u = find_user(session, user)
            if u is None:
                raise typer.BadParameter(f"no user {user!r}")
            user_id = u.id
        reads_projects = project_id is not None or all_projects
        events = service.query(session, project_id=project_id, user_id=user_id, limit=limit,
                               platform_only=not reads_projects)
        if reads_projects:  # segmented like the API: a project's events leave only with a trace
            service.record_read(session, _operator(), project_id=project_id, returned=len(events), via="cli",
                                user_id=user_id)
        table = Table("#", "when", "actor", "action", "outcome", "target",
                      title=None if reads_projects else "platform events (--project / --all-projects: audited)")
        for e in events:
            table.add_row(str(e.seq), e.at.strftime("%Y-%m-%d %H:%M:%S"), for_terminal(e.actor), e.action,
                          e.outcome, for_terminal(e.target))  # a label and a target may carry what users typed
        console.print(table)


# `strongroom admin grant-auditor / revoke-auditor / auditors` (added to the admin group by cli.py).
admin_app = typer.Typer()


def _user_id(session, who: str) -> uuid.UUID:
    from ..identity.service import find_user

    found = find_user(session, who)
    if found is None:
        raise typer.BadParameter(f"no user {who!r}")
    return found.id


@admin_app.command("grant-auditor")
def grant_auditor(user: Annotated[str, typer.Argument(help="Username, e-mail or id.")]) -> None:
    """Make a user a platform auditor (the data protection officer): they may read every project's
    audit events, and each of their reads is audited. The grant is audited too."""
    from ..db import transaction

    hub = Hub.from_settings(get_settings())
    with transaction(hub.sessions) as session:
        changed = service.grant_auditor(session, _operator(), _user_id(session, user))
    console.print(f"{user} is {'now' if changed else 'already'} an auditor")


@admin_app.command("revoke-auditor")
def revoke_auditor(user: Annotated[str, typer.Argument(help="Username, e-mail or id.")]) -> None:
    """Take the auditor role away (audited)."""
    from ..db import transaction

    hub = Hub.from_settings(get_settings())
    with transaction(hub.sessions) as session:
        changed = service.revoke_auditor(session, _operator(), _user_id(session, user))
    console.print(f"{user} {'is no longer' if changed else 'was not'} an auditor")
