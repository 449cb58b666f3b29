"""``strongroom dicom serve`` (the project DICOM destinations), ``strongroom import dicom`` (bulk) and
``strongroom admin rotate-keystore-key`` (the pseudonym key store's key)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

dicom_app = typer.Typer(help="The DICOM destination: receive images from the scanners each project allows.",
                        no_args_is_help=True)
import_app = typer.Typer(help="Import data in bulk on the hub host.", no_args_is_help=True)
keystore_app = typer.Typer()  # merged into `strongroom admin`
console = Console()
err = Console(stderr=True)


@dicom_app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: imaging.dicom_host).")] = None,
    workers: Annotated[int, typer.Option(help="De-identification processes (0: one per CPU).")] = 0,
) -> None:
    """Run every project's DICOM destination (AE title + port from the project's settings).

    Only senders listed in the project's allowed DICOM senders (calling AE title and address) may
    store; received images are de-identified with the project's profile, verified, encrypted into the
    archive and published as a new version of the project's import dataset once the senders go quiet.
    Destinations follow settings changes within a few seconds. Stop with Ctrl-C or SIGTERM: what was
    acknowledged is finished on the next start if it could not be finished now.
    """
    from ..audit import outbox
    from ..config import get_settings
    from ..hub import Hub
    from ..migrate import upgrade
    from .scp import SWITCH_INTERVAL_SECONDS, DicomService

    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)

    settings = get_settings()
    upgrade(settings.effective_database_url)
    hub = Hub.from_settings(settings)
    from ..archive.keys import ensure_key

    ensure_key(hub)
    outbox.resume(hub)  # audit events a process on this host could not write before it stopped
    service = DicomService(hub, workers=workers or None, host=host)
    signal.signal(signal.SIGTERM, lambda *_: service.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: service.stopping.set())
    err.print(f"[bold]DICOM destinations[/] on {service.host}: following project settings "
              f"(every {settings.imaging.refresh_seconds:g} s)")
    service.serve_forever()
    if service.stale:  # exit non-zero: a supervisor restarts it, with the current secret
        err.print("[red]error:[/] the hub secret was rotated: restart `strongroom dicom serve` with the current secret "
                  "(acknowledged objects wait in the spool)")
        raise typer.Exit(3)


@import_app.command("dicom")
def import_dicom(
    path: Annotated[Path, typer.Argument(help="A folder (searched recursively), a ZIP file or one DICOM file.",
                                         exists=True)],
    project: Annotated[str, typer.Option("--project", "-p", help="The project's slug.")],
    workers: Annotated[int, typer.Option(help="Worker processes (0: one per CPU).")] = 0,
    publish: Annotated[bool, typer.Option("--publish/--no-publish",
                                          help="Publish what passed as a new dataset version.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """De-identify, verify, encrypt and archive DICOM files into a project, with the project's profile.

    Objects the risk check or the leak scan cannot clear go to the project's quarantine for review;
    damaged DICOM files are rejected with a reason; files that are not DICOM at all (text, JSON,
    DICOMDIR, hidden files) are skipped and reported as "not a DICOM file". Run again to resume an
    interrupted import: what is already in the project is recognised and skipped.
    """
    from ..config import get_settings
    from ..errors import DomainError
    from ..hub import Hub
    from .bulk import count_sources, project_by_slug, run_import

    hub = Hub.from_settings(get_settings())
    try:
        project_id = project_by_slug(hub, project)
    except DomainError as exc:
        err.print(f"[red]error:[/] {exc.detail}")
        raise typer.Exit(2) from None
    total = count_sources(path)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[summary]}"), TimeRemainingColumn(), console=err,
                  disable=as_json or not err.is_terminal) as bar:
        task = bar.add_task(f"importing {path.name}", total=total, summary="")
        tally: dict[str, int] = {}

        def progress(n: int, outcome: str) -> None:
            tally[outcome] = tally.get(outcome, 0) + n
            bar.update(task, advance=n, summary=" ".join(f"{k} {v}" for k, v in sorted(tally.items())))

        try:
            report = run_import(hub, project_id, path, workers=workers, publish=publish, progress=progress)
        except DomainError as exc:
            err.print(f"[red]error:[/] {exc.detail}")
            raise typer.Exit(2) from None
    data = report.as_dict()
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        table = Table(title=f"import {report.batch_id} into {project}", show_header=False)
        for key in ("received", "archived", "quarantined", "rejected", "duplicates", "skipped"):
            table.add_row(key, f"{data[key]:,}")
        table.add_row("published version", str(data["published_version"] or "—"))
        console.print(table)
        if data["reasons"]:
            reasons = Table("reason", "files", title="quarantined, rejected or skipped, by reason")
            for reason, count in data["reasons"].items():
                reasons.add_row(reason, f"{count:,}")
            console.print(reasons)
        if report.rejected_files:  # names only here, on the operator's screen: the batch keeps positions
            rejected = Table("#", "file", "reason", title="rejected files (in the import's order)")
            for position, name, reason in report.rejected_files:
                rejected.add_row(str(position), escape(name), reason)
            console.print(rejected)
    if report.rejected:
        raise typer.Exit(1)


@keystore_app.command("rotate-keystore-key")
def rotate_keystore_key(
    resume: Annotated[bool, typer.Option(
        "--resume", help="No new key: finish re-sealing under the current one (after an interruption, or to catch "
                         "what a process sealed under the old key while the rotation ran).")] = False,
) -> None:
    """Rotate the pseudonym key store's key (it seals every project's pseudonymization secret and the originals
    behind pseudonyms). Every process seals with the new key from its next seal on, no restart; then every
    sealed row is sealed again under it, with a progress bar. The old key is kept in
    [bold]pseudonym-keystore-retired/[/] so what it sealed (rows not re-sealed yet, spooled DICOM objects,
    database backups) still opens: delete it once no backup needs it. Audited; safe to interrupt and run
    again with --resume."""
    from ..audit.service import record as audit
    from ..db import transaction
    from ..hub import Hub
    from ..identity.cli import _operator
    from . import keystore

    hub = Hub.from_settings()
    actor = _operator()
    if not resume:
        previous, current = keystore.rotate_key(hub.settings)
        with transaction(hub.sessions) as session:
            audit(session, actor, "imaging.keystore_key.rotated", target=f"keystore-key:{current}",
                  details={"previous": previous, "current": current})
        console.print(f"[green]rotated[/]: sealing with key {current}; {previous} kept in "
                      f"{keystore.retired_dir(hub.settings)}")
    checked = changed = 0
    with Progress(TextColumn("re-sealing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("reseal", total=None)
        for step in keystore.reseal(hub.sessions, hub.settings):
            checked, total, changed = step
            bar.update(task, completed=checked, total=total)
    with transaction(hub.sessions) as session:
        audit(session, actor, "imaging.keystore_key.resealed",
              target=f"keystore-key:{keystore.key_id(keystore.keystore_key(hub.settings))}",
              details={"checked": checked, "resealed": changed})
    console.print(f"re-sealed {changed} of {checked} sealed values under the current key")
