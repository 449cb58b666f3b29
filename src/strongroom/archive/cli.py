"""`strongroom upload | download | keys | datasets` (over the API) and `strongroom archive` (hub host)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ..client import connect
from ..hubclient import HubClient, HubError, config_path
from ..text import for_terminal as shown
from . import c4gh
from .transfer import (
    SMALL_FILE_BYTES,
    UploadPlan,
    bundle_groups,
    decrypt_and_verify,
    download_file,
    iter_dataset_files,
    plan_uploads,
    stream_size,
    upload_bundle,
    upload_file,
)

app = typer.Typer()
keys_app = typer.Typer(no_args_is_help=True, help="Your crypt4gh key pair: downloads are re-encrypted to it.")
datasets_app = typer.Typer(no_args_is_help=True, help="Datasets and versions (over the API).")
archive_app = typer.Typer(no_args_is_help=True, help="Archive operations on the hub host (keys, ingest).")
app.add_typer(keys_app, name="keys")
app.add_typer(datasets_app, name="datasets")
console = Console()
err = Console(stderr=True)


def _default_key_dir() -> Path:
    return config_path().parent


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}", justify="left"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=console)


def _fail(exc: Exception | str) -> None:
    err.print(f"[red]error:[/] {shown(exc)}")  # often the hub's words: shown as text, never as markup
    raise typer.Exit(1)


@app.command()
def upload(
    paths: Annotated[list[Path], typer.Argument(help="Files and/or directories (recursed).")],
    project: Annotated[str, typer.Option("--project", "-p", help="Project id to upload into.")],
    parallel: Annotated[int, typer.Option(min=1, max=32, help="Parts in flight per file.")] = 4,
) -> None:
    """Encrypt (crypt4gh, to the hub's key) while streaming and upload; re-run to resume. Files up to 1 MiB
    travel in bundles of up to 1,000 (one request each); larger files in parts, --parallel at a time."""
    client = connect()
    try:
        response = client.request("GET", "/api/v1/archive/public-key")
        hub_public = c4gh.parse_public_key(response.text)
        plans = plan_uploads(paths)
    except (HubError, ValueError) as exc:
        _fail(exc)
    try:  # a wrong project is a mistake to correct, not a transfer to resume
        client.request("GET", f"/api/v1/projects/{project}")
    except HubError as exc:
        _fail(f"cannot upload into {project!r}: {exc} (`strongroom projects list` shows your projects)")
    state_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "strongroom" / "uploads"
    failures = 0
    with _progress() as progress:
        header_size = len(c4gh.make_header([b"\0" * 32], hub_public, None))
        overall = progress.add_task(f"[bold]{len(plans)} file(s)",
                                    total=sum(stream_size(p, header_size) for p in plans))
        small = [p for p in plans if p.size <= SMALL_FILE_BYTES]
        failures += _upload_small(client, project, small, hub_public, header_size, state_dir, parallel, progress,
                                  overall)
        for plan in (p for p in plans if p.size > SMALL_FILE_BYTES):
            task = progress.add_task(shown(plan.name[-40:]), total=stream_size(plan, header_size))

            def advance(n: int, task: TaskID = task) -> None:
                progress.advance(task, n)
                progress.advance(overall, n)

            try:
                record = upload_file(client, project, plan, hub_public, state_dir=state_dir, workers=parallel,
                                     on_bytes=advance)
                progress.update(task, total=progress.tasks[task].completed,
                                description=f"[green]✓[/] {shown(plan.name[-38:])} → {shown(record['id'])}")
            except HubError as exc:
                failures += 1
                progress.update(task, description=f"[red]✗[/] {shown(plan.name[-38:])}: {shown(exc)}")
    if failures:
        err.print(f"[red]{failures} upload(s) failed[/]; run the same command again to resume")
        raise typer.Exit(1)
    console.print(f"uploaded {len(plans)} file(s) into [bold]{shown(project)}[/]; ingest runs on the hub "
                  f"(`strongroom datasets` / the project's Data page show progress)")


def _upload_small(client: HubClient, project: str, small: list[UploadPlan], hub_public: bytes, header_size: int,
                  state_dir: Path, parallel: int, progress: Progress, overall: TaskID) -> int:
    """Files up to 1 MiB go in bundles (one request and one group ingest for up to 1,000 of them): the failed
    files' count. A bundle is all or nothing, and safe to send again (`upload_bundle`)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    if not small:
        return 0
    groups = bundle_groups(small, header_size)
    task = progress.add_task(f"{len(small)} small file(s) in {len(groups)} bundle(s)",
                             total=sum(stream_size(p, header_size) for p in small))
    failures, sent = 0, 0
    with ThreadPoolExecutor(min(parallel, 4)) as pool:
        futures = {pool.submit(upload_bundle, client, project, g, hub_public, state_dir=state_dir): g
                   for g in groups}
        for future in as_completed(futures):
            group = futures[future]
            size = sum(stream_size(p, header_size) for p in group)
            try:
                future.result()
                sent += len(group)
            except HubError as exc:
                failures += len(group)
                err.print(f"[red]✗[/] a bundle of {len(group)} file(s) from {shown(group[0].name)}: {shown(exc)}")
            progress.advance(task, size)
            progress.advance(overall, size)
    progress.update(task, description=f"[green]✓[/] {sent} small file(s) in {len(groups)} bundle(s)"
                    if not failures else f"[red]✗[/] {failures} of {len(small)} small file(s) not sent")
    return failures


@app.command()
def download(
    ids: Annotated[list[str], typer.Argument(help="File (SRF-…) or dataset (SRD-…) accessions.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write into.")] = Path("."),
    key: Annotated[str | None, typer.Option(help="Fingerprint of your registered key (default: newest).")] = None,
    decrypt: Annotated[bool, typer.Option(help="Decrypt locally and verify the SHA-256.")] = False,
    secret_key: Annotated[Path | None, typer.Option(help="Your private key file (for --decrypt).")] = None,
    version: Annotated[int | None, typer.Option(help="Dataset version (default: latest released).")] = None,
    parallel: Annotated[int, typer.Option(min=1, max=16, help="Files in flight.")] = 4,
) -> None:
    """Download re-encrypted to your key; interrupted downloads resume; --decrypt verifies checksums."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    client = connect()
    secret = None
    if decrypt:
        path = secret_key or _default_key_dir() / "strongroom.sec"
        if not path.is_file():  # say so before asking for a passphrase of a key that is not there
            _fail(f"no private key at {path}: make one with `strongroom keys generate` and register it "
                  f"(`strongroom keys register`), or pass --secret-key FILE")
        passphrase = os.environ.get("STRONGROOM_KEY_PASSPHRASE") or typer.prompt(
            f"passphrase for {path}", hide_input=True, default="", show_default=False)
        try:
            secret = c4gh.load_private_key(path, passphrase or None).secret
        except (OSError, c4gh.C4ghError, ValueError) as exc:
            _fail(exc)
    try:
        files: list[dict] = []
        for ident in ids:
            if ident.startswith("SRD-"):
                files.extend(iter_dataset_files(client, ident, version))
            else:
                files.append({"id": ident})
    except HubError as exc:
        _fail(exc)
    failures = 0
    with _progress() as progress, ThreadPoolExecutor(parallel) as pool:
        def one(file_id: str) -> str:
            task = progress.add_task(shown(file_id), total=None)
            target, meta = download_file(client, file_id, out, key=key,
                                         on_bytes=lambda n: progress.advance(task, n),
                                         on_total=lambda n: progress.update(task, total=n))
            if secret is not None:
                decrypt_and_verify(target, secret, meta["plaintext_sha256"])
            progress.update(task, description=f"[green]✓[/] {shown(str(meta['path'])[-40:])}")
            return file_id

        futures = {pool.submit(one, f["id"]): f["id"] for f in files}
        for future in as_completed(futures):
            try:
                future.result()
            except (HubError, c4gh.C4ghError, OSError) as exc:
                failures += 1
                err.print(f"[red]✗ {shown(futures[future])}:[/] {shown(exc)}")
    if failures:
        err.print(f"[red]{failures} download(s) failed[/]; run the same command again to resume")
        raise typer.Exit(1)
    console.print(f"{len(files)} file(s) in {out}" + (" (decrypted and verified)" if decrypt else ""))


# -- keys --------------------------------------------------------------------------------------
@keys_app.command("generate")
def keys_generate(
    out: Annotated[Path | None, typer.Option(help="Base path (default ~/.config/strongroom/strongroom).")] = None,
    passphrase: Annotated[str | None, typer.Option(envvar="STRONGROOM_KEY_PASSPHRASE", hide_input=True,
                                                   help="Protects the private key (prompted when not given).")
                          ] = None,
    passphrase_file: Annotated[Path | None, typer.Option(help="Read the passphrase from this file's first line "
                                                               "(for scripts and machines without a terminal).")
                               ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing key pair (downloads made for the old key "
                                             "can no longer be decrypted).")] = False,
) -> None:
    """Create a crypt4gh key pair (compatible with crypt4gh-keygen)."""
    base = out or _default_key_dir() / "strongroom"
    if base.with_suffix(".sec").exists() and not force:
        _fail(f"{base.with_suffix('.sec')} exists; keep it (files downloaded for it need it) or pass --force")
    if passphrase_file is not None:
        try:
            lines = passphrase_file.read_text().splitlines()
        except OSError as exc:
            _fail(exc)
        passphrase = lines[0] if lines else ""
    if passphrase is None:
        if not sys.stdin.isatty():
            _fail("no terminal to ask for a passphrase: pass --passphrase-file FILE or set STRONGROOM_KEY_PASSPHRASE")
        passphrase = typer.prompt("passphrase for the private key", hide_input=True, confirmation_prompt=True)
    base.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    keypair = c4gh.generate_keypair()
    c4gh.write_private_key(base.with_suffix(".sec"), keypair, passphrase or None)
    c4gh.write_public_key(base.with_suffix(".pub"), keypair.public)
    console.print(f"wrote {base.with_suffix('.sec')} and {base.with_suffix('.pub')} "
                  f"(fingerprint {c4gh.fingerprint(keypair.public)})")


@keys_app.command("register")
def keys_register(public_key: Annotated[Path, typer.Argument(help="A crypt4gh public key file.")],
                  name: Annotated[str, typer.Option(help="A name you recognise.")] = "laptop") -> None:
    """Register a public key with the hub."""
    try:
        key = connect().json("POST", "/api/v1/me/keys", json={"name": name, "public_key": public_key.read_text()})
    except (HubError, OSError) as exc:
        _fail(exc)
    console.print(f"registered {shown(key['fingerprint'])} ({shown(key['name'])})")


@keys_app.command("list")
def keys_list() -> None:
    """Your registered public keys."""
    try:
        found = connect().json("GET", "/api/v1/me/keys")
    except HubError as exc:  # a refusal, not a traceback (whose locals would print the hub's answer raw)
        _fail(exc)
    table = Table("fingerprint", "name", "registered", "state")
    for k in found:
        table.add_row(*map(shown, (k["fingerprint"], k["name"], k["created_at"][:16])),
                      "revoked" if k["revoked_at"] else "active")
    console.print(table)


# -- datasets ----------------------------------------------------------------------------------
@datasets_app.command("list")
def datasets_list(project: Annotated[str, typer.Option("--project", "-p")]) -> None:
    """Datasets a project owns or has been shared."""
    try:
        found = connect().json("GET", f"/api/v1/projects/{project}/datasets")
    except HubError as exc:
        _fail(exc)
    table = Table("accession", "title", "versions", "owner")
    for ds in found:
        table.add_row(*map(shown, (ds["id"], ds["title"],
                                   " ".join(f"v{v['number']}:{v['state']}" for v in ds["versions"]),
                                   ds["owner_project"])))
    console.print(table)


@datasets_app.command("create")
def datasets_create(project: Annotated[str, typer.Option("--project", "-p")],
                    title: Annotated[str, typer.Option()],
                    files: Annotated[list[str], typer.Argument(help="File accessions (SRF-…).")],
                    description: Annotated[str, typer.Option()] = "") -> None:
    """Create a dataset whose draft version 1 holds FILES."""
    try:
        ds = connect().json("POST", f"/api/v1/projects/{project}/datasets",
                            json={"title": title, "description": description, "files": files})
    except HubError as exc:
        _fail(exc)
    console.print(f"created {shown(ds['id'])} (v1 draft, {shown(ds['versions'][0]['file_count'])} files)")


@datasets_app.command("release")
def datasets_release(dataset: str, version: Annotated[int, typer.Option()] = 1) -> None:
    """Release a draft version (immutable from then on)."""
    try:
        v = connect().json("POST", f"/api/v1/datasets/{dataset}/versions/{version}/release")
    except HubError as exc:
        _fail(exc)
    console.print(f"{shown(dataset)} v{shown(v['number'])} {shown(v['state'])} ({shown(v['file_count'])} files)")


@datasets_app.command("files")
def datasets_files(dataset: str, version: Annotated[int | None, typer.Option()] = None) -> None:
    """List a version's files with checksums."""
    try:
        files = list(iter_dataset_files(connect(), dataset, version))
    except HubError as exc:
        _fail(exc)
    table = Table("accession", "path", "size", "sha256")
    for f in files:
        table.add_row(*map(shown, (f["id"], f["path"], f["plaintext_size"], f["plaintext_sha256"])))
    console.print(table)


# -- hub host ----------------------------------------------------------------------------------
@archive_app.command("rotate-key")
def rotate_key() -> None:
    """Create a new archive key and re-encrypt every stored header to it (bodies are not read)."""
    import getpass

    from ..audit.service import Actor
    from ..config import get_settings
    from ..hub import Hub
    from .keys import rotate

    hub = Hub.from_settings(get_settings())
    actor = Actor(id=None, label=f"cli:{getpass.getuser()}@{os.uname().nodename}")
    with Progress(TextColumn("re-encrypting headers"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  console=console) as progress:
        task = progress.add_task("rotate", total=None)
        for done, total in rotate(hub, actor):
            progress.update(task, completed=done, total=total)
    console.print("[green]rotated[/]: new uploads use the new key; old keys are retired")


@archive_app.command("rotate-passphrase")
def rotate_passphrase(
    new_passphrase_file: Annotated[Path, typer.Option(
        "--new-passphrase-file", exists=True, dir_okay=False, readable=True,
        help="A file holding the new passphrase (its first line; at least 16 characters).")],
) -> None:
    """Rewrite every archive key file under a new passphrase.

    Active and retired key files, atomically one by one. Run it with the current passphrase (or none) configured,
    then set STRONGROOM_ARCHIVE__KEY_PASSPHRASE to the new one and restart Strongroom. Interrupted, it completes
    when run again with the same file."""
    from ..config import get_settings
    from ..errors import DomainError
    from ..hub import Hub
    from ..identity.cli import _fail as _refuse
    from ..identity.cli import _operator
    from .keys import rotate_passphrase as rotate

    hub = Hub.from_settings(get_settings(), allow_weak_secrets=True)  # replacing a weak passphrase is its purpose
    lines = new_passphrase_file.read_text().splitlines()
    try:
        rewritten = rotate(hub, lines[0] if lines else "", _operator())
    except DomainError as exc:
        _refuse(exc)
    except c4gh.KeyFileError as exc:  # a key file under neither the passphrase in force nor the new one
        _fail(exc)
    console.print(f"[green]rewritten[/]: {rewritten} key file(s) under the new passphrase")
    console.print("  now set STRONGROOM_ARCHIVE__KEY_PASSPHRASE to it wherever Strongroom runs (your secret manager), "
                  "restart Strongroom, and destroy the file you passed")
