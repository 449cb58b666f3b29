"""Read grants the access capability adds to the archive's check (`archive.service.GRANT_PROVIDERS`),
registered by the access capability's ``includeme`` (entitlements first, then visas):

- **entitlement** (here): the caller holds an active entitlement (`Entitlement.active(now)`) to a
  released or deprecated version that contains the file (``version`` None = any such version).
- **visa** (`visas.visa_grant`): the request carried a GA4GH visa from a trusted issuer, verified
  by `visas_api.PassportMiddleware` before the request's transaction began, naming a dataset
  (or the version) published with the file.

The entitled (and visa holders) may also see the dataset itself and list the files of the versions
their grant names (`archive.service.DATASET_READERS`: a grant to version N opens version N only).
In-platform plaintext stays for project members. Whether an approved applicant may also download to
their own machine is the dataset's access policy (``AccessPolicy.applicant_download``, locked by
default), carried on the grant as ``may_download``.

All are read fresh on every request, so expiry and revocation take effect on the next one, and
both need a multi-factor login, like every other way to read data.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from ..archive.authz import VersionGrant
from ..archive.models import ArchiveFile, Dataset, DatasetFile, DatasetVersion
from ..archive.service import ReadGrant
from ..db import utcnow
from ..identity.principal import Principal
from .models import AccessPolicy, Entitlement

PUBLISHED = ("released", "deprecated")


def entitlement_grant(session: Session, principal: Principal, f: ArchiveFile) -> ReadGrant | None:
    if not principal.has_mfa:
        return None
    now = utcnow()
    rows = session.scalars(
        select(Entitlement)
        .join(DatasetVersion, DatasetVersion.dataset_id == Entitlement.dataset_id)
        .join(DatasetFile, DatasetFile.version_id == DatasetVersion.id)
        .where(Entitlement.user_id == principal.user.id, DatasetFile.file_id == f.id,
               DatasetVersion.state.in_(PUBLISHED), Entitlement.revoked_at.is_(None),
               Entitlement.starts_at <= now, Entitlement.ends_at > now,
               or_(Entitlement.version.is_(None), Entitlement.version == DatasetVersion.number))
        .limit(5))
    active = [ent for ent in rows if ent.active(now)]
    if not active:
        return None
    # Several entitlements may reach the file: one whose dataset allows downloads wins.
    ent = max(active, key=lambda e: applicant_download(session, e.dataset_id))
    return ReadGrant("entitlement", None, detail=str(ent.id),
                     may_download=applicant_download(session, ent.dataset_id))


def applicant_download(session: Session, dataset_id: str) -> bool:
    """The dataset's access policy: may approved applicants download to their own machines?
    No policy row means the locked default: in-platform use only."""
    policy = session.get(AccessPolicy, dataset_id)
    return bool(policy and policy.applicant_download)


def entitlement_reader(session: Session, principal: Principal, ds: Dataset) -> VersionGrant | None:
    """`archive.service.DATASET_READERS` entry: the entitled may see the dataset and list the files of the
    versions they are entitled to — every published one without ``version``, else exactly the named ones."""
    if not principal.has_mfa:
        return None
    now = utcnow()
    rows = session.scalars(select(Entitlement).where(
        Entitlement.user_id == principal.user.id, Entitlement.dataset_id == ds.id,
        Entitlement.revoked_at.is_(None), Entitlement.starts_at <= now, Entitlement.ends_at > now))
    numbers = [e.version for e in rows if e.active(now)]
    if not numbers:
        return None
    if None in numbers:
        return VersionGrant()
    return VersionGrant(frozenset(n for n in numbers if n is not None))


def dataset_download_policy(session: Session, ds: Dataset) -> bool:
    return applicant_download(session, ds.id)
