"""Shared pieces of the import tests: a project ready for imports, corpora on disk, reading back what
the archive holds (decrypted with the hub's keys, as a download would be)."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pydicom
import pydicom.data
from sqlalchemy import select

from strongroom.archive import c4gh
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import ensure_key, hub_keys
from strongroom.archive.models import ArchiveFile
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.hub import Hub
from strongroom.imaging import synthetic
from strongroom.imaging.models import ImportedInstance
from strongroom.projects import service as projects
from strongroom.projects.models import ProjectSetting

END = dt.date.today() + dt.timedelta(days=365)


def pydicom_bundled_files(pattern: str = "*") -> list[str]:
    """pydicom's own test files, listed from its package directory: ``pydicom.data.get_testdata_files``
    would also try to download more from the internet (tests talk to loopback only)."""
    data = Path(pydicom.data.__file__).parent
    return sorted(str(f) for folder in ("test_files", "charset_files") for f in (data / folder).rglob(pattern)
                  if f.is_file())


def make_project(hub: Hub, slug: str = "lung", pi: str = "alice", *, profile: dict | None = None,
                 destination: dict | None = None, senders: list[dict] | None = None) -> None:
    ensure_key(hub)
    with transaction(hub.sessions) as s:
        project = projects.create_project(s, Actor.system("t"), slug=slug, name=slug.title(), pi=pi,
                                          ethics_ref="E1", end_date=END)
        # settings written directly: the API path (fresh MFA, audit) has its own tests
        for key, value in (("deid_profile", profile), ("dicom_destination", destination),
                           ("dicom_senders", senders)):
            if value is not None:
                s.add(ProjectSetting(project_id=project.id, key=key, value=value, changed_by=project.pi_id))


def write_corpus(folder: Path, patients: int = 2, studies: int = 2, series: int = 1, instances: int = 3,
                 **kw: object) -> dict[str, bytes]:
    """Files named by their position; returns name → original bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for (p, st, se, i), data in synthetic.corpus(patients, studies, series, instances, rows=64, columns=64, **kw):
        name = f"p{p}-st{st}-se{se}-{i}.dcm"
        (folder / name).write_bytes(data)
        files[name] = data
    return files


def ultrasound(patient: int = 7) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(synthetic.make_ct(patient, 0, 1, 1, rows=32, columns=32)))
    ds.Modality = "US"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def instances(hub: Hub, state: str | None = None) -> list[ImportedInstance]:
    with hub.sessions() as s:
        stmt = select(ImportedInstance).order_by(ImportedInstance.id)
        if state:
            stmt = stmt.where(ImportedInstance.state == state)
        return list(s.scalars(stmt))


def archived_bytes(hub: Hub, file_id: str) -> bytes:
    """The plaintext of an archived file, decrypted with the hub's keys."""
    with hub.sessions() as s:
        f = s.get(ArchiveFile, file_id)
        keys = hub_keys(hub, s)
        assert f is not None and f.header is not None and f.body_key
        header, body_key = f.header, f.body_key
    with storage_for(hub).open_reader(body_key) as body:
        return b"".join(c4gh.decrypt_stream(io.BytesIO(header + body.read()), keys.secrets))
