"""The embedded demo: an administrator who is PI of a demo project, and a researcher.

Passwords are generated once into var/demo-credentials.json (mode 0600) and printed on every
`make run`, so the quick start always says how to log in.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from .audit import service as audit
from .audit.service import Actor
from .db import transaction
from .hub import Hub
from .identity import service as identity
from .identity.models import LocalCredential
from .paths import private_dir
from .projects import service as projects
from .projects.models import Project

DEMO_USERS = [
    ("admin", "Ada Admin", "admin@demo.strongroom.invalid", True),
    ("researcher", "Rita Researcher", "researcher@demo.strongroom.invalid", False),
]


def _credentials(hub: Hub) -> dict[str, str]:
    path = hub.settings.var_dir / "demo-credentials.json"
    if path.exists():
        return json.loads(path.read_text())
    creds = {username: secrets.token_urlsafe(12) for username, *_ in DEMO_USERS}
    private_dir(hub.settings.var_dir)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(creds, fh)
    return creds


def seed_demo(hub: Hub) -> list[str]:
    creds = _credentials(hub)
    actor = Actor.system("demo-seed")
    with transaction(hub.sessions) as session:
        for username, name, email, is_admin in DEMO_USERS:
            if session.scalar(select(LocalCredential).where(LocalCredential.username == username)) is None:
                identity.create_local_user(session, actor, username=username, password=creds[username],
                                           display_name=name, email=email, affiliation="Demo University",
                                           is_admin=is_admin)
        if session.scalar(select(Project).where(Project.slug == "demo")) is None:
            projects.create_project(
                session, actor, slug="demo", name="Demo: lung CT nodules", pi="admin",
                ethics_ref="DEMO-2026-001", project_class="project",
                end_date=dt.date.today() + dt.timedelta(days=3 * 365),
                description="A demonstration project on the embedded defaults.",
            )
            _open_demo_destination(session, actor)
    from .catalog.demo import seed_catalog_demo

    landing = seed_catalog_demo(hub)  # synthetic CT dataset: archived, released, published in the catalogue
    url = hub.settings.base_url
    return [
        "",
        f"[bold green]Strongroom is ready at {url}[/]",
        f"  admin (platform admin, PI of project 'demo'): [bold]admin[/] / [bold]{creds['admin']}[/]",
        f"  researcher:                                   [bold]researcher[/] / [bold]{creds['researcher']}[/]",
        "  At first login you enrol an authenticator app (TOTP); every data role needs MFA.",
        f"  Credentials are kept in {hub.settings.var_dir / 'demo-credentials.json'}",
        f"  Demo dataset landing page (public, no login): [bold]{landing}[/]",
        f"  Dataset catalogue: {url.rstrip('/')}/catalog   sitemap: {url.rstrip('/')}/sitemap.xml",
        f"  DICOM destination of project 'demo': AE [bold]{DEMO_AE}[/] at {hub.settings.imaging.dicom_host}:"
        f"{DEMO_DICOM_PORT}, allowed sender {DEMO_SENDER} from 127.0.0.1 (`strongroom dicom serve`)",
        f"    TCP_NODELAY=1 storescu -aet {DEMO_SENDER} -aec {DEMO_AE} 127.0.0.1 {DEMO_DICOM_PORT} FILES…",
        "    or: strongroom import dicom FOLDER_OR_ZIP --project demo",
        "",
    ]


DEMO_AE, DEMO_SENDER, DEMO_DICOM_PORT = "DEMO_AE", "DEMO_SCANNER", 11112


def _open_demo_destination(session: Session, actor: Actor) -> None:
    """The demo project opens its DICOM destination for one local sender (a real hub starts locked)."""
    from .imaging.settings import DeidProfileSetting
    from .projects.models import ProjectSetting

    project = session.scalar(select(Project).where(Project.slug == "demo"))
    assert project is not None
    for key, value in (("dicom_destination", {"ae_title": DEMO_AE, "port": DEMO_DICOM_PORT}),
                       ("dicom_senders", [{"ae_title": DEMO_SENDER, "address": "127.0.0.1"}]),
                       ("deid_profile", DeidProfileSetting(retain_longitudinal="modified").model_dump(mode="json"))):
        session.add(ProjectSetting(project_id=project.id, key=key, value=value, changed_by=project.pi_id))
        audit.record(session, actor, "project.setting.opened", project_id=project.id, target=f"setting:{key}",
                     details={"before": None, "after": value, "why": "demo"})
