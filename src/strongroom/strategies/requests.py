"""Data requests follow the eight steps (issue 20 §2): comply → selection → extract → pseudonymize → verify →
encrypt → terms → transfer.

A request belongs to the project that owns the data. It carries the researcher's **selection and parameters**
(copied from an access application for one of the project's datasets — its `selection`, `description`,
`variables`, `period_start`, `period_end` answers — or written by the project itself) and names the
**strategy version** the release is made with. The project's stewards (the `import` right) then:

1. upload the extract into the project (the archive's ordinary upload);
2. start a run of the named version on it (`runs.start`); a passing run's draft dataset is attached to the
   request by the run itself (`runs.attach_run_output`), a failing one blocks every later step;
3. release: the terms must be agreed (the application approved by its handlers, the existing flow), then the
   run's dataset version is released — only while it holds exactly the run's output and report (a draft can
   be edited by any member with the write right: what the applicant gets is what the run verified), and
   through the archive's release check (`provenance.release_check`) — and the applicant gets an entitlement
   to exactly that version, ending when their approval ends and revoked with it.

Each step's evidence is read from what the request links to (`steps`), never typed in by hand.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..access.models import AccessPolicy, Application, Entitlement
from ..archive import service as archive
from ..archive.accession import new_accession
from ..archive.models import ArchiveFile, Dataset, DatasetFile, DatasetVersion
from ..audit import service as audit
from ..config import Settings
from ..db import utcnow
from ..errors import Conflict, Invalid, NotFound
from ..identity.principal import Principal
from ..projects.models import Project
from ..projects.service import ProjectAccess
from . import runs, service
from .models import CLOSED, OPEN, PASSED, RELEASED, DataRequest, StrategyRun, StrategyVersion

PARAMETERS = ("variables", "period_start", "period_end")  # the structured part of a selection
MAX_SELECTION = 20_000


@dataclass(frozen=True)
class Step:
    name: str
    state: str  # done | failed | waiting (an earlier step is not done) | todo
    evidence: str = ""
    href: str = ""


def _clean_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(parameters) - set(PARAMETERS))
    if unknown:
        raise Invalid(f"unknown parameters {unknown}; the parameters are {list(PARAMETERS)}")
    cleaned: dict[str, Any] = {}
    variables = parameters.get("variables")
    if variables:
        items = variables.splitlines() if isinstance(variables, str) else variables
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise Invalid("variables: a list of column names (or one per line)")
        cleaned["variables"] = [v.strip()[:200] for v in items if v.strip()][:500]
    for key in ("period_start", "period_end"):
        if parameters.get(key):
            try:
                cleaned[key] = dt.date.fromisoformat(str(parameters[key])).isoformat()
            except ValueError:
                raise Invalid(f"{key}: a date (YYYY-MM-DD)") from None
    if cleaned.get("period_start") and cleaned.get("period_end") and cleaned["period_start"] > cleaned["period_end"]:
        raise Invalid("period_start is after period_end")
    return cleaned


def _application_of_project(session: Session, access: ProjectAccess, application_id: str) -> Application:
    app = session.get(Application, application_id)
    ds = session.get(Dataset, app.dataset_id) if app is not None else None
    if app is None or ds is None or ds.project_id != access.project.id or app.state == "draft":
        raise Invalid(f"no submitted application {application_id!r} for a dataset of this project")
    return app


def create(session: Session, principal: Principal, access: ProjectAccess, *, application_id: str | None = None,
           title: str = "", selection: str = "", parameters: dict[str, Any] | None = None,
           strategy_version: int | None = None) -> DataRequest:
    """A new request: from an application (its selection and parameters copied unless given) or the
    project's own; the strategy version named (default: the newest)."""
    access.require(service.EDIT_RIGHT)
    sv = service.get_version(session, access, strategy_version)
    params = dict(parameters or {})
    if application_id:
        app = _application_of_project(session, access, application_id)
        existing = session.scalar(select(DataRequest.id).where(DataRequest.application_id == app.id,
                                                               DataRequest.state != CLOSED))
        if existing:
            raise Conflict(f"application {app.id} already has data request {existing}", request=existing)
        from ..access.events import events_of, replay

        answers = replay(events_of(session, app.id)).answers
        if not selection.strip():
            selection = "\n\n".join(str(answers[k]) for k in ("selection", "description") if answers.get(k))
        if not params:
            params = {k: answers[k] for k in PARAMETERS if answers.get(k)}
        title = title.strip() or str(answers.get("study_name") or f"Application {app.id}")
    if not title.strip():
        raise Invalid("a data request needs a title")
    if not selection.strip():
        raise Invalid("a data request needs its selection (cohort, criteria, period)")
    if len(selection) > MAX_SELECTION:
        raise Invalid(f"the selection is at most {MAX_SELECTION} characters")
    r = DataRequest(id=new_accession("SRQ"), project_id=access.project.id, application_id=application_id or None,
                    title=title.strip()[:300], selection=selection.strip(), parameters=_clean_parameters(params),
                    strategy_version_id=sv.id, state=OPEN, created_by=principal.user.id)
    session.add(r)
    session.flush()
    audit.record(session, principal.actor, "data_request.created", project_id=access.project.id,
                 target=f"data-request:{r.id}",
                 details={"application": r.application_id, "strategy_version": sv.version, "sha256": sv.sha256})
    return r


def list_requests(session: Session, access: ProjectAccess, *, state: str | None = None) -> list[DataRequest]:
    access.require(service.READ_RIGHT)
    query = select(DataRequest).where(DataRequest.project_id == access.project.id)
    if state:
        query = query.where(DataRequest.state == state)
    return list(session.scalars(query.order_by(DataRequest.created_at.desc()).limit(500)))


def pending_applications(session: Session, access: ProjectAccess) -> list[Application]:
    """Submitted or approved applications for the project's datasets that have no data request yet."""
    access.require(service.EDIT_RIGHT)
    taken = select(DataRequest.application_id).where(DataRequest.application_id.is_not(None),
                                                     DataRequest.state != CLOSED)
    return list(session.scalars(
        select(Application).join(Dataset, Dataset.id == Application.dataset_id)
        .where(Dataset.project_id == access.project.id, Application.state.in_(("submitted", "approved")),
               Application.id.not_in(taken)).order_by(Application.updated_at.desc()).limit(200)))


def get(session: Session, access: ProjectAccess, request_id: str) -> DataRequest:
    access.require(service.READ_RIGHT)
    r = session.get(DataRequest, request_id)
    if r is None or r.project_id != access.project.id:
        raise NotFound("no such data request")
    return r


def _open(session: Session, access: ProjectAccess, request_id: str) -> DataRequest:
    access.require(service.EDIT_RIGHT)
    r = get(session, access, request_id)
    if r.state != OPEN:
        raise Conflict(f"data request {r.id} is {r.state}")
    return r


def start_run(session: Session, settings: Settings, principal: Principal, access: ProjectAccess, request_id: str,
              *, file_id: str) -> StrategyRun:
    """Steps 3-4: the extract (already uploaded into the project) and a run of the named version on it."""
    r = _open(session, access, request_id)
    sv = session.get(StrategyVersion, r.strategy_version_id)
    assert sv is not None
    run = runs.start(session, settings, principal, access, file_id=file_id, version=sv.version)
    r.run_id, r.dataset_id, r.dataset_version, r.updated_at = run.id, None, None, utcnow()
    audit.record(session, principal.actor, "data_request.run_started", project_id=access.project.id,
                 target=f"data-request:{r.id}", details={"run": str(run.id), "file": file_id})
    return run


def _terms(session: Session, r: DataRequest) -> tuple[Application | None, Entitlement | None]:
    """The application and the entitlement its approval granted (None: not approved or no longer active)."""
    if r.application_id is None:
        return None, None
    app = session.get(Application, r.application_id)
    if app is None or app.state != "approved":
        return app, None
    now = utcnow()
    ent = session.scalar(select(Entitlement).where(
        Entitlement.application_id == app.id, Entitlement.dataset_id == app.dataset_id,
        Entitlement.revoked_at.is_(None), Entitlement.ends_at > now).order_by(Entitlement.ends_at.desc()).limit(1))
    return app, ent


def release(session: Session, principal: Principal, access: ProjectAccess, request_id: str) -> DatasetVersion:
    """Steps 7-8: with the terms agreed, release the run's version (the archive's release check applies) and
    give the applicant access to exactly that version."""
    r = _open(session, access, request_id)
    run = session.get(StrategyRun, r.run_id) if r.run_id else None
    if run is None or run.state != PASSED or r.dataset_id is None or r.dataset_version is None:
        state = run.state if run is not None else "not started"
        raise Conflict(f"nothing verified to release: the request's run is {state}; a passing run comes first")
    app, granted = _terms(session, r)
    if r.application_id is not None and granted is None:
        raise Conflict(f"the terms are not agreed: application {r.application_id} is "
                       f"{app.state if app else 'gone'} — its handlers approve it first (step 7)")
    _exactly_what_the_run_verified(session, r, run)
    version = archive.release_version(session, principal, r.dataset_id, r.dataset_version)
    if app is not None and granted is not None:
        source = session.get(AccessPolicy, app.dataset_id)
        if source is not None and session.get(AccessPolicy, r.dataset_id) is None:
            # the released data is used on the source dataset's terms (in-platform or download alike)
            session.add(AccessPolicy(dataset_id=r.dataset_id, form_name=source.form_name,
                                     terms_name=source.terms_name, workflow=source.workflow, quorum=source.quorum,
                                     max_days=source.max_days, applicant_download=source.applicant_download))
        session.add(Entitlement(user_id=app.applicant_id, dataset_id=r.dataset_id, version=version.number,
                                application_id=app.id, starts_at=utcnow(), ends_at=granted.ends_at))
    r.state, r.updated_at = RELEASED, utcnow()
    audit.record(session, principal.actor, "data_request.released", project_id=access.project.id,
                 target=f"data-request:{r.id}",
                 details={"dataset": r.dataset_id, "version": version.number, "run": str(run.id),
                          **({"application": app.id, "applicant": str(app.applicant_id)} if app else {})})
    return version


def _exactly_what_the_run_verified(session: Session, r: DataRequest, run: StrategyRun) -> None:
    """The version the applicant gets holds exactly the request's run's output and report, and the run applied
    the strategy version the request names: a file anyone added to the draft since the run (a member with the
    write right may edit a draft), or one taken out, refuses the release. The version's row is locked first,
    so no edit lands between this check and the release (`edit_draft` locks it too)."""
    if run.strategy_version_id != r.strategy_version_id or run.dataset_id != r.dataset_id:
        raise Conflict(f"run {run.id} is not a run of this request's strategy version on its dataset: start a "
                       "new run from the request")
    version = session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == r.dataset_id,
                                                          DatasetVersion.number == r.dataset_version)
                             .with_for_update().execution_options(populate_existing=True))
    if version is None:
        raise Conflict(f"dataset {r.dataset_id} has no version {r.dataset_version} any more: start a new run")
    held = set(session.scalars(select(DatasetFile.file_id).where(DatasetFile.version_id == version.id)))
    verified = {run.output_file_id, run.report_file_id}
    added, missing = sorted(held - verified), sorted(f for f in verified - held if f)
    if added or missing:
        paths = {file_id: path for file_id, path in session.execute(
            select(ArchiveFile.id, ArchiveFile.path).where(ArchiveFile.id.in_(added[:10])))}
        named = ", ".join(f"{paths.get(f, f)} ({f})" for f in added[:10]) + (" …" if len(added) > 10 else "")
        changes = ([f"added since: {named}"] if added else []) + ([f"taken out: {', '.join(missing)}"] if missing
                                                                  else [])
        raise Conflict(f"dataset {r.dataset_id} v{r.dataset_version} no longer holds exactly what run {run.id} "
                       f"verified (its output and report): {'; '.join(changes)}. A data request releases only its "
                       f"run's verified files: put the draft back as the run made it, or start a new run.",
                       added=added[:10], missing=missing)


def close(session: Session, principal: Principal, access: ProjectAccess, request_id: str, reason: str
          ) -> DataRequest:
    r = _open(session, access, request_id)
    if not reason.strip():
        raise Invalid("closing a data request needs a reason")
    r.state, r.updated_at = CLOSED, utcnow()
    audit.record(session, principal.actor, "data_request.closed", project_id=access.project.id,
                 target=f"data-request:{r.id}", details={"reason": reason.strip()[:2000]})
    return r


def steps(session: Session, project: Project, r: DataRequest) -> list[Step]:
    """The eight steps with their evidence; a step after one not done waits, a failed one blocks the rest."""
    slug = project.slug
    sv = session.get(StrategyVersion, r.strategy_version_id)
    assert sv is not None
    run = session.get(StrategyRun, r.run_id) if r.run_id else None
    extract = session.get(ArchiveFile, run.input_file_id) if run is not None else None
    app, granted = _terms(session, r)
    out: list[tuple[str, bool | None, str, str]] = []  # name, done (None: failed), evidence, href
    if app is not None:
        from ..access.events import events_of, replay

        ethics = (replay(events_of(session, app.id)).answers.get("ethics") or {}).get("number", "")
        out.append(("comply", bool(ethics), f"application {app.id} ({app.state}); ethics approval {ethics or '—'}; "
                    f"project ethics {project.ethics_ref}", f"/applications/{app.id}"))
    else:
        out.append(("comply", True, f"the project's own request; project ethics {project.ethics_ref}", ""))
    params = ", ".join(f"{k}: {', '.join(v) if isinstance(v, list) else v}" for k, v in r.parameters.items())
    out.append(("selection", True, f"{len(r.selection)} characters{'; ' + params if params else ''}; strategy "
                f"{sv.name} v{sv.version} (sha256 {sv.sha256})", f"/projects/{slug}/strategy/versions/{sv.version}"))
    out.append(("extract", extract is not None,
                f"{extract.path} ({extract.id}, sha256 {extract.plaintext_sha256})" if extract else "", ""))
    run_href = f"/projects/{slug}/strategy/runs/{run.id}/report.html" if run is not None else ""
    if run is None:
        out.append(("pseudonymize", False, "", ""))
        out.append(("verify", False, "", ""))
    else:
        applied = run.state in (PASSED, "failed")
        out.append(("pseudonymize", True if applied else (None if run.state == "error" else False),
                    f"run {run.id}: {run.state}" + (f" ({run.error})" if run.error else ""), ""))
        failed = [c["name"] for c in (run.report or {}).get("checks", []) if not c.get("passed")]
        out.append(("verify", True if run.state == PASSED else (None if run.state == "failed" else False),
                    f"report: {run.rows_in} rows in, {run.rows_out} out"
                    + (f"; failed: {', '.join(failed)}" if failed else "") if run.report else "",
                    run_href if run.report else ""))
    out.append(("encrypt", r.dataset_id is not None,
                f"dataset {r.dataset_id} v{r.dataset_version}: output {run.output_file_id} and report "
                f"{run.report_file_id}, encrypted to the hub key" if r.dataset_id and run else "",
                f"/datasets/{r.dataset_id}?version={r.dataset_version}" if r.dataset_id else ""))
    if r.application_id is None:
        out.append(("terms", True, "the project's own request: its own terms", ""))
    else:
        out.append(("terms", granted is not None,
                    f"application {r.application_id} approved until {granted.ends_at.date().isoformat()}"
                    if granted is not None else f"application {r.application_id}: {app.state if app else '—'}",
                    f"/applications/{r.application_id}"))
    out.append(("transfer", r.state == RELEASED,
                f"dataset {r.dataset_id} v{r.dataset_version} released"
                + (" and the applicant's access to it granted" if r.application_id else "")
                if r.state == RELEASED else "", ""))
    result, blocked = [], False
    for name, done, evidence, href in out:
        state = "waiting" if blocked and not done else ("done" if done else ("failed" if done is None else "todo"))
        blocked = blocked or not done
        result.append(Step(name, state, evidence, href))
    return result


def for_application(session: Session, application_id: str) -> list[tuple[DataRequest, list[Step]]]:
    """For the application's page (its applicant, handlers and deciders): its data requests and their steps."""
    found = []
    for r in session.scalars(select(DataRequest).where(DataRequest.application_id == application_id)
                             .order_by(DataRequest.created_at)):
        project = session.get(Project, r.project_id)
        assert project is not None
        found.append((r, steps(session, project, r)))
    return found
