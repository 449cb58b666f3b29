"""The demo dataset behind `make run`: synthetic chest CT slices (computer-generated, nobody's data),
archived through the real pipeline, released, and published in the catalogue with sample images,
DUO codes, terms and the hub's own application form. Every step is idempotent."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from ..access import policies as access_policies
from ..access.models import AccessPolicy
from ..archive import service as archive
from ..archive.backend import storage_for
from ..archive.keys import ensure_key
from ..archive.models import READY, ArchiveFile, Dataset, DatasetVersion
from ..db import transaction, utcnow
from ..hub import Hub
from ..identity import service as identity
from ..identity.principal import SCOPES, Principal
from ..projects import service as projects
from . import entries, images, png
from .fields import EntryFields

DEMO_SLUG = "synthetic-chest-ct-demo"
DEMO_TITLE = "Synthetic chest CT with lung nodules (demo)"
DEMO_DIR = "synthetic-chest-ct"
CASES, SLICES = 3, 2
DATA_OWNER = "Strongroom Demo Imaging Consortium"


def _principal(session, username: str) -> Principal:
    user = identity.find_user(session, username)
    if user is None:
        raise RuntimeError(f"the demo needs the user {username!r}")
    return Principal(user=user, via="session", mfa_at=utcnow(), scopes=frozenset(SCOPES) - {"admin"},
                     credential_id="demo-seed")


def _slices() -> dict[str, bytes]:
    return {f"{DEMO_DIR}/case-{case:03d}/slice-{k:03d}.png": png.synthetic_ct_slice(100 * case + k,
                                                                                  z=0.3 + 0.4 * k / SLICES)
            for case in range(1, CASES + 1) for k in range(1, SLICES + 1)}


def _fields(dataset_id: str) -> EntryFields:
    return EntryFields(
        slug=DEMO_SLUG,
        title=DEMO_TITLE,
        description=(
            "Axial chest CT slices of computer-generated phantoms: a body outline, both lungs with vessels, "
            "the spine and one solid lung nodule per case, with realistic noise. No person was ever scanned — "
            "every pixel comes from a formula — so the dataset is safe to show and to try the whole "
            "find → apply → approve → download flow of the hub with.\n\n"
            f"Each of the {CASES} synthetic cases has {SLICES} slices (256 × 256 pixels, 8-bit PNG) and a known "
            "nodule position and size, which makes it a small, honest test set for detection pipelines."),
        why_apply=(
            "Try the hub end to end before you ask for real patient data: apply, get approved by the data "
            "owner, and download re-encrypted files to your own key — in a few minutes."),
        data_owner=DATA_OWNER,
        modalities=["CT"],
        organs=["Lung", "Chest"],
        keywords=["synthetic data", "lung nodules", "phantom", "demo"],
        variables=["Chest CT images", "Lung nodule position and diameter"],
        subjects=CASES, studies=CASES, series=CASES, annotations=CASES,
        time_start=dt.date(2026, 1, 1), time_end=dt.date(2026, 6, 30),
        terms_title="Demo data use agreement",
        terms_text=(
            "1. The data are synthetic and are provided for trying the hub and for method testing only.\n\n"
            "2. Do not try to re-identify anyone: there is no one to find, and the same rule applies to every "
            "real dataset in this hub.\n\n"
            "3. Cite the dataset as shown on its landing page when you use it in a publication.\n\n"
            "4. Access ends on the date the data owner sets when approving; renew with a new application."),
        access_conditions=(
            "Any researcher with an account at the hub may apply. Describe your study and its ethics "
            "approval; the demo consortium's data access committee decides, usually within a day."),
        duo_codes=["DUO:0000006", "DUO:0000021", "DUO:0000019", "DUO:0000046"],
        how_to_cite=(f"{DATA_OWNER} (2026). {DEMO_TITLE}, version 1. Strongroom dataset catalogue, "
                     f"accession {dataset_id}."),
        contact_email="data-access@demo.example.org",
        apply_mode="hub",
    )


def seed_catalog_demo(hub: Hub, *, project_slug: str = "demo", steward: str = "admin") -> str:
    """Make sure the demo dataset exists, is archived, released and published; return its URL."""
    ensure_key(hub)
    storage = storage_for(hub)
    slices = _slices()
    # 1. upload the synthetic files that are not there yet (plaintext → crypt4gh → inbox)
    with transaction(hub.sessions) as session:
        principal = _principal(session, steward)
        access = projects.open_project(session, principal, project_slug)
        have = {f.path: f for f in session.scalars(select(ArchiveFile).where(
            ArchiveFile.project_id == access.project.id, ArchiveFile.path.in_(list(slices)),
            ArchiveFile.state != "failed"))}
        for path, data in slices.items():
            if path not in have:
                archive.receive_small_plaintext(hub, session, principal, access, storage, path=path, data=data)
    # 2. ingest them now (outside any transaction), so the demo is complete before the server starts
    with hub.sessions() as session:
        pending = list(session.scalars(select(ArchiveFile.id).where(
            ArchiveFile.path.in_(list(slices)), ArchiveFile.state.in_(("uploaded", "ingested", "verified")))))
    for file_id in pending:
        archive.ingest(hub, storage, file_id)
    # 3. dataset, released version, catalogue entry with images, published
    with transaction(hub.sessions) as session:
        principal = _principal(session, steward)
        access = projects.open_project(session, principal, project_slug)
        ds = session.scalar(select(Dataset).where(Dataset.project_id == access.project.id,
                                                  Dataset.title == DEMO_TITLE))
        if ds is None:
            ready = list(session.scalars(select(ArchiveFile.id).where(
                ArchiveFile.project_id == access.project.id, ArchiveFile.path.in_(list(slices)),
                ArchiveFile.state == READY).order_by(ArchiveFile.path)))
            ds = archive.create_dataset(session, principal, access, title=DEMO_TITLE, files=ready,
                                        description="Synthetic chest CT phantoms for trying the hub.")
        if entries.latest_released(session, ds.id) is None:
            draft = session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id)
                                   .order_by(DatasetVersion.number.desc()).limit(1))
            if draft is not None and draft.state == "draft" and draft.file_count:
                archive.release_version(session, principal, ds.id, draft.number)
        entry = entries.entry_for(session, ds.id)
        if entry is None:
            entry = entries.save_entry(session, principal, ds.id, _fields(ds.id))
        if not images.images_of(session, entry):
            for case in range(1, CASES + 1):
                images.add_image(session, principal, ds.id, slices[f"{DEMO_DIR}/case-{case:03d}/slice-001.png"],
                                  f"Synthetic axial chest CT, case {case}: lungs, spine and one nodule")
        if not entry.published:
            entries.publish(session, principal, ds.id)
        if session.get(AccessPolicy, ds.id) is None:
            # Applicants are in-platform only unless the owner says otherwise; the demo lets approved
            # researchers download, so the quick start's "download from Datasets you may use" works.
            access_policies.set_applicant_download(session, principal, ds.id, True)
        slug = entry.slug
    return f"{hub.settings.base_url.rstrip('/')}/catalog/{slug}"
