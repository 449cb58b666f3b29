"""A seeded hub with known counts for the metrics tests (and the browser test): datasets with known DICOM
facts (as the import records them), applications decided after known waits by applicants of several
countries and organisations, completed (and unfinished) downloads, landing-page view days, and a private,
unpublished dataset whose every figure must stay out of the public ones.

The expected figures are written out by hand in ``EXPECTED`` (not computed from the seed), so a wrong
query cannot agree with itself.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from dataclasses import dataclass, field

from strongroom.access.models import Application, ApplicationEvent
from strongroom.archive.downloads import record_end
from strongroom.archive.models import ArchiveFile, Dataset, DatasetFile, DatasetVersion
from strongroom.audit import service as audit
from strongroom.audit.service import Actor
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction, utcnow
from strongroom.identity.models import User
from strongroom.imaging.models import ImportBatch, ImportedInstance
from strongroom.projects import service as projects
from strongroom.projects.models import Membership
from strongroom.stats.models import LandingViews

END = dt.date.today() + dt.timedelta(days=365)
_ids = itertools.count(1)


@dataclass
class Scenario:
    datasets: dict[str, str] = field(default_factory=dict)  # name → dataset id
    slugs: dict[str, str] = field(default_factory=dict)
    users: dict[str, uuid.UUID] = field(default_factory=dict)
    now: dt.datetime = field(default_factory=utcnow)


# (modality, body part, subject, study, series, instances) per dataset; annotation files by path
FACTS = {
    "chest": [("CT", "CHEST", "P1", "S1", "X1", 4), ("CT", "CHEST", "P1", "S1", "X2", 4),
              ("CT", "CHEST", "P2", "S2", "X3", 4), ("CT", "CHEST", "P3", "S3", "X4", 4),
              ("CT", "CHEST", "P3", "S4", "X5", 4), ("SEG", "CHEST", "P3", "S4", "X6", 2)],
    "slides": [("SM", "BREAST", "Q1", "T1", "Y1", 2), ("SM", "BREAST", "Q1", "T1", "Y2", 2),
               ("SM", "BREAST", "Q2", "T2", "Y3", 2)],
    "brain": [("MR", "BRAIN", "R1", "U1", "Z1", 2), ("MR", "BRAIN", "R1", "U1", "Z2", 2),
              ("PT", "brain ", "R1", "U1", "Z3", 1)],
    "secret": [("MG", "KNEE", "K1", "V1", "W1", 10)],
}
FILES = {"slides": ["annotations/slide-1.geojson", "notes/readme.txt"], "chest": ["docs/protocol.pdf"]}
BYTES = {"chest": 1_000_000, "slides": 5_000_000, "brain": 2_000_000, "secret": 9_999_999}
TITLES = {"chest": "Chest CT screening", "slides": "Breast pathology slides", "brain": "Brain MR and PET",
          "secret": "Secret knee study"}

# applicants: username → (country on profile, affiliation, e-mail, member of the owning project)
APPLICANTS = {
    **{f"de{i}": ("DE", None, f"de{i}@charite.de", False) for i in range(1, 10)},
    "sven": (None, "member@med.uu.se", "sven@med.uu.se", False),  # the PI's organisation: not external
    "carol": (None, None, "carol@example.org", True),  # a member of the owning project: not external
    "fay": (None, None, "fay@inserm.fr", False),  # FR from the domain
    "ursula": ("US", None, "ursula@example.org", False),
}
# applications: (applicant, dataset, outcome, days to decision); outcome None = submitted, "draft" = never
APPLICATIONS = [
    *[(f"de{i}", "chest", "approved", d) for i, d in zip(range(1, 8), (1, 2, 3, 4, 5, 6, 10), strict=True)],
    ("sven", "chest", "approved", 2), ("carol", "chest", "approved", 2), ("fay", "chest", "approved", 3),
    ("ursula", "chest", "approved", 3), ("de8", "slides", "approved", 7),
    ("de9", "chest", "rejected", 1), ("de8", "chest", "rejected", 1), ("de1", "brain", "rejected", 1),
    ("fay", "brain", None, None), ("ursula", "brain", "draft", None),
    # the private dataset: none of these may count
    *[(f"de{i}", "secret", "approved", 1) for i in range(1, 8)],
]
# completed downloads: (dataset, user, bytes) — plus unfinished ones that must not count
DOWNLOADS = [("chest", "de1", 100_000)] * 2 + [("chest", "de2", 100_000)] * 2 + [("chest", "fay", 100_000)] * 2 \
    + [("slides", "de8", 50_000)] * 2 + [("secret", "de1", 1)] * 6
# (dataset, days ago, views, visitors)
VIEW_DAYS = [("slides", 40, 40, 30), ("chest", 40, 12, 9), ("secret", 40, 500, 400)]

EXPECTED = {
    # people's imaging as the public sees it (small_counts: "< 5", else rounded to 5); exact: 6, 7, 11, 33, 3
    "datasets": 3, "subjects": 5, "studies": 5, "scans": 10, "instances": 35, "annotations": "< 5",
    "files": 23 + 8 + 5, "bytes": 8_000_000, "modalities": 5, "organs": 3,
    "annotated": {"datasets": 2, "scans": 10}, "pathology": {"datasets": 1, "scans": "< 5"},
    "radiology": {"datasets": 2, "scans": 10},
    # 12 approved is withheld: 16 made − 12 approved would leave 4 rejected or pending (figures.protect_all)
    "applications": {"made": 16, "approved": "withheld", "rejected": "< 5",
                     # waits, sorted: 1 1 1 1 2 2 2 3 3 3 4 5 6 7 10 → nearest rank 50 % = 8th, 90 % = 14th
                     "decision_days": {"median": 3.0, "p90": 7.0}},
    "downloads": 8, "download_bytes": 700_000, "downloaders": "< 5",
    "countries_shared_with": 4, "external_sharing_events": 10,
    "countries": [{"country": "DE", "name": "Germany", "approved": "withheld"},  # 8: with the "< 5" beside it
                  {"country": "FR", "name": "France", "approved": "< 5"},
                  {"country": "SE", "name": "Sweden", "approved": "< 5"},
                  {"country": "US", "name": "United States", "approved": "< 5"}],
    # sorted by the value shown (the order of hidden sizes would tell them); exact scans/instances: CT 5/20,
    # SEG 0/2, SM 3/6, MR 2/4, PT 1/1
    "by_modality": [{"modality": "CT", "name": "Computed tomography", "datasets": 1, "scans": 5, "instances": 20},
                    {"modality": "SEG", "name": "Segmentation", "datasets": 1, "scans": 0, "instances": "< 5"},
                    {"modality": "SM", "name": "Slide microscopy (whole-slide imaging)", "datasets": 1,
                     "scans": "< 5", "instances": 5},
                    {"modality": "MR", "name": "Magnetic resonance", "datasets": 1, "scans": "< 5", "instances": "< 5"},
                    {"modality": "PT", "name": "Positron emission tomography", "datasets": 1, "scans": "< 5",
                     "instances": "< 5"}],
    "by_organ": [{"organ": "CHEST", "datasets": 1, "scans": 5}, {"organ": "BRAIN", "datasets": 1, "scans": "< 5"},
                 {"organ": "BREAST", "datasets": 1, "scans": "< 5"}],
}
PRIVATE_MARKERS = ("Secret knee study", "KNEE", "MG", "secret-knee")


def _user(session, username: str, country: str | None, affiliation: str | None, email: str) -> User:
    from strongroom.identity import service as identity

    user = identity.create_local_user(session, Actor.system("test"), username=username,
                                      password="correct horse battery staple", display_name=username.title(),
                                      email=email, affiliation=affiliation)
    user.country = country
    return user


def dataset(session, name: str, project, owner: User, now: dt.datetime, *, published: bool,
            slug: str | None = None) -> str:
    """A dataset with the facts of ``FACTS[name]``, its catalogue entry (``slug``, default ``name``)."""
    ds_id = f"SRD-{name.upper()}{next(_ids):04d}"
    session.add(Dataset(id=ds_id, project_id=project.id, title=TITLES[name], created_by=owner.id))
    # an older released version whose instances are not in the latest one: only the latest counts
    old_file = ArchiveFile(id=f"SRF-{ds_id}-OLD", project_id=project.id, uploader_id=owner.id, path="old.dcm",
                           upload_size=1, state="ready")
    old = DatasetVersion(dataset_id=ds_id, number=1, state="released", total_bytes=1, released_at=now)
    session.add_all([old_file, old])
    session.flush()
    version = DatasetVersion(dataset_id=ds_id, number=2, state="released", total_bytes=BYTES[name],
                             released_at=now)
    session.add(version)
    session.flush()
    session.add(DatasetFile(version_id=old.id, file_id=old_file.id))
    batch = ImportBatch(id=f"SRI-{ds_id}", project_id=project.id, source="bulk", origin="test", state="closed")
    session.add(batch)
    session.flush()
    session.add(ImportedInstance(project_id=project.id, batch_id=batch.id, file_id=old_file.id, state="published",
                                 sop_instance_uid=f"{ds_id}.old", modality="CT", body_part="LIVER",
                                 series_uid="old", study_uid="old", patient_pseudonym="old", size=1))
    n = 0
    for modality, body_part, subject, study, series, count in FACTS[name]:
        for _ in range(count):
            n += 1
            f = ArchiveFile(id=f"SRF-{ds_id}-{n:03d}", project_id=project.id, uploader_id=owner.id,
                            path=f"{series}/{n}.dcm", upload_size=100, state="ready")
            session.add(f)
            session.flush()
            session.add(DatasetFile(version_id=version.id, file_id=f.id))
            session.add(ImportedInstance(project_id=project.id, batch_id=batch.id, file_id=f.id, state="published",
                                         sop_instance_uid=f"{ds_id}.{n}", modality=modality, body_part=body_part,
                                         series_uid=f"{ds_id}.{series}", study_uid=f"{ds_id}.{study}",
                                         patient_pseudonym=f"{ds_id}.{subject}", size=100))
    for path in FILES.get(name, []):
        n += 1
        f = ArchiveFile(id=f"SRF-{ds_id}-{n:03d}", project_id=project.id, uploader_id=owner.id, path=path,
                        upload_size=100, state="ready")
        session.add(f)
        session.flush()
        session.add(DatasetFile(version_id=version.id, file_id=f.id))
    version.file_count = n
    session.add(CatalogEntry(dataset_id=ds_id, slug=slug or ("secret-knee" if name == "secret" else name),
                             title=TITLES[name],
                             published=published, published_at=now - dt.timedelta(days=60) if published else None,
                             created_by=owner.id, data_owner="Uppsala University"))
    return ds_id


def seed(hub) -> Scenario:
    """The scenario of ``EXPECTED``. Users are created without MFA (they never log in here)."""
    sc = Scenario()
    now = sc.now
    with transaction(hub.sessions) as s:
        olga = _user(s, "olga", "SE", "member@uu.se", "olga@uu.se")
        pete = _user(s, "pete", "NO", None, "pete@uio.no")
        sc.users = {"olga": olga.id, "pete": pete.id}
        for username, (country, affiliation, email, _) in APPLICANTS.items():
            sc.users[username] = _user(s, username, country, affiliation, email).id
        s.flush()
        lung = projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="olga", ethics_ref="E1",
                                       end_date=END)
        hidden = projects.create_project(s, Actor.system("t"), slug="hidden", name="Hidden", pi="pete",
                                         ethics_ref="E2", end_date=END)
        s.add(Membership(project_id=lung.id, user_id=sc.users["carol"], role="member"))
        for name in ("chest", "slides", "brain"):
            sc.datasets[name] = dataset(s, name, lung, olga, now, published=True)
            sc.slugs[name] = name
        sc.datasets["secret"] = dataset(s, "secret", hidden, pete, now, published=False)
        for i, (who, name, outcome, days) in enumerate(APPLICATIONS):
            app_id = f"SRA-T{i:04d}"
            submitted = now - dt.timedelta(days=30 + i)
            s.add(Application(id=app_id, applicant_id=sc.users[who], dataset_id=sc.datasets[name],
                              state=outcome or "submitted"))
            s.flush()
            events = [("created", submitted - dt.timedelta(hours=1),
                       {"dataset_id": sc.datasets[name], "form_version_id": 1})]
            if outcome != "draft":
                events.append(("submitted", submitted, {}))
            if outcome in ("approved", "rejected"):
                events.append((outcome, submitted + dt.timedelta(days=days),
                               {"ends": "2027-01-01"} if outcome == "approved" else {"reason": "no ethics approval"}))
            for seq, (type_, at, payload) in enumerate(events, 1):
                s.add(ApplicationEvent(application_id=app_id, seq=seq, type=type_, at=at, payload=payload,
                                       actor_id=sc.users[who] if type_ in ("created", "submitted") else olga.id))
        for name, days_ago, views, visitors in VIEW_DAYS:
            s.add(LandingViews(day=(now - dt.timedelta(days=days_ago)).date(), dataset_id=sc.datasets[name],
                               views=views, visitors=visitors))
        project_of = {name: (hidden if name == "secret" else lung).id for name in sc.datasets}
        files = {name: f"SRF-{ds}-001" for name, ds in sc.datasets.items()}
        # downloads that did not finish, and a started event: none of them is a download
        audit.record(s, Actor.system("t"), "archive.download.started", project_id=lung.id,
                     target=f"file:{files['chest']}", details={})
        audit.record(s, Actor.system("t"), "archive.download.aborted", outcome="failed", project_id=lung.id,
                     target=f"file:{files['chest']}", details={"bytes_sent": 5})
    with hub.sessions() as s:
        actors = {u.id: Actor(id=u.id, label=u.label) for u in s.query(User)}
    for name, who, size in DOWNLOADS:
        record_end(hub, actors[sc.users[who]], "archive.download.completed", project_id=project_of[name],
                   target=f"file:{files[name]}", started={"basis": "entitlement"}, sent=size, expected=size,
                   reason=None)
    return sc
