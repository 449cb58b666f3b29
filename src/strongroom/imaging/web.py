"""Imaging pages: the project's DICOM destination and de-identification profile (locked by default,
changes need fresh MFA and are audited), import status, quarantine review and re-identification."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..archive.backend import storage_for
from ..deps import CsrfChecked, Db, HubDep, PostedForm, WebPrincipal
from ..errors import Invalid
from ..projects import service as projects
from ..schemas import INT64_MAX, Int64, whole_number
from ..web.templating import redirect_with, templates
from . import keystore, service
from .deid import OPTIONS
from .settings import PROFILE_FLAGS, DeidProfileSetting

router = APIRouter()

_OPTION_TEXT = {
    "retain_patient_characteristics": ("Retain Patient Characteristics",
                                       "sex, age, size, weight… (not names or dates of birth)"),
    "retain_device_identity": ("Retain Device Identity", "scanner serial numbers, station names"),
    "retain_institution_identity": ("Retain Institution Identity", "hospital and department"),
    "retain_uids": ("Retain UIDs", "original study/series/instance UIDs (links to the PACS)"),
    "retain_safe_private": ("Retain Safe Private", "private attributes listed as safe, by private creator"),
    "clean_descriptors": ("Clean Descriptors", "keep descriptions, with identifiers scrubbed"),
    "clean_structured_content": ("Clean Structured Content", "keep SR content, scrubbed"),
    "clean_graphics": ("Clean Graphics", "keep annotations, scrubbed"),
    "text_allow_list": ("Allow-listed text only", "strict Clean Descriptors: every description, code meaning "
                        "and comment outside a short keep-list is scrubbed or removed"),
}
# (label, CID 7050 code from the engine, what it keeps) per option flag
OPTION_LABELS = {flag: (label, OPTIONS.get(flag, OPTIONS["clean_descriptors"])[1], hint)
                 for flag, (label, hint) in _OPTION_TEXT.items()}


def _page(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str, *,
          status_code: int = 200, **extra: Any) -> Response:
    access = projects.open_project(db, principal, slug)
    access.require("import")
    project_id = access.project.id
    days = service.recent_days(db, access)
    ctx = {
        "access": access, "project": access.project,
        "destination": projects.get_setting(db, project_id, "dicom_destination"),
        "senders": projects.get_setting(db, project_id, "dicom_senders"),
        "profile": service.profile_setting(db, project_id),
        "profile_locked": projects.get_setting(db, project_id, "deid_profile") == DeidProfileSetting().model_dump(
            mode="json"),
        "options": OPTION_LABELS, "option_flags": PROFILE_FLAGS,
        "facts": service.overview(db, access), "batches": service.batches(db, access, limit=30),
        "quarantined": service.quarantined(db, access), "days": days, "max_day": max([n for _, n in days] + [1]),
        "dicom_host": hub.settings.imaging.dicom_host, "acknowledge": hub.settings.imaging.acknowledge,
        "error": None, "originals": None,
        "can_reidentify": "reidentify" in access.rights,
    }
    ctx["pixel_rules_json"] = json.dumps(ctx["profile"].model_dump(mode="json")["pixel_rules"])
    ctx.update(extra)
    return templates.TemplateResponse(request, "imaging_project.html", ctx, status_code=status_code)


@router.get("/projects/{slug}/imaging")
def imaging_page(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str) -> Response:
    return _page(request, db, hub, principal, slug)


def _change(request: Request, db: Db, hub: HubDep, principal: WebPrincipal, slug: str, key: str,
            value: Any, anchor: str, done: str) -> Response:
    access = projects.open_project(db, principal, slug)
    try:
        projects.change_setting(db, principal, access, key, value,
                                fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    except Invalid as exc:
        errors = exc.extra.get("errors")
        messages = [str(e.get("msg", "")).removeprefix("Value error, ")
                    for e in (errors if isinstance(errors, list) else [])]
        detail = "; ".join(messages) or exc.detail
        db.rollback()
        return _page(request, db, hub, principal, slug, status_code=422, error=detail)
    return redirect_with(request, f"/projects/{slug}/imaging#{anchor}", done)


@router.post("/projects/{slug}/imaging/destination", dependencies=[CsrfChecked])
def set_destination(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal,
                    slug: str) -> Response:
    """Open the destination (AE title + port) or close it again (``close``)."""
    form = posted.form
    if "close" in form:
        value = None
    else:
        port = str(form.get("port", "")).strip()
        value = {"ae_title": str(form.get("ae_title", "")).strip(), "port": whole_number(port, "port") if port else -1}
    return _change(request, db, hub, principal, slug, "dicom_destination", value, "destination",
                   "DICOM destination closed." if value is None else
                   f"DICOM destination open: AE title {value['ae_title']}, port {value['port']}.")


@router.post("/projects/{slug}/imaging/profile", dependencies=[CsrfChecked])
def set_profile(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal,
                slug: str) -> Response:
    """The PS3.15 options; pixel rules as JSON (a list of {name, rectangles, manufacturer, model, …})."""
    form = posted.form
    if "reset" in form:
        value: dict[str, Any] = DeidProfileSetting().model_dump(mode="json")
    else:
        raw_rules = str(form.get("pixel_rules", "")).strip() or "[]"
        try:
            rules = json.loads(raw_rules)
        except json.JSONDecodeError as exc:
            return _page(request, db, hub, principal, slug, status_code=422,
                         error=f"pixel rules: not valid JSON ({exc.msg} at line {exc.lineno})")
        except ValueError:  # an integer of thousands of digits, which int() refuses
            return _page(request, db, hub, principal, slug, status_code=422, error="pixel rules: a number is too long")
        value = {"retain_longitudinal": str(form.get("retain_longitudinal", "remove")),
                 **{flag: form.get(flag) == "on" for flag in PROFILE_FLAGS}, "pixel_rules": rules}
    return _change(request, db, hub, principal, slug, "deid_profile", value, "profile",
                   "De-identification profile reset to the default." if "reset" in form
                   else "De-identification profile saved.")


@router.post("/projects/{slug}/imaging/quarantine", dependencies=[CsrfChecked])
def review_quarantine(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal,
                      slug: str) -> Response:
    form = posted.form
    access = projects.open_project(db, principal, slug)
    try:
        ids = [whole_number(str(v), "instance", minimum=1, maximum=INT64_MAX) for v in form.getlist("instance")]
        service.review(db, storage_for(hub), principal, access, ids, decision=str(form.get("decision", "")),
                       note=str(form.get("note", "")))
    except Invalid as exc:
        db.rollback()
        return _page(request, db, hub, principal, slug, status_code=422, error=exc.detail)
    decision = str(form.get("decision", ""))
    return redirect_with(request, f"/projects/{slug}/imaging#quarantine",
                         f"{len(ids)} quarantined instance{'' if len(ids) == 1 else 's'} "
                         f"{'released' if decision == 'approve' else 'discarded'}.")


@router.post("/projects/{slug}/imaging/reidentify", dependencies=[CsrfChecked])
def reidentify(request: Request, posted: PostedForm, db: Db, hub: HubDep, principal: WebPrincipal,
               slug: str) -> Response:
    form = posted.form
    access = projects.open_project(db, principal, slug)
    pseudonym = str(form.get("pseudonym", ""))
    try:
        found = keystore.reidentify(db, hub.settings, principal, access, pseudonym,
                                    reason=str(form.get("reason", "")),
                                    fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    except Invalid as exc:
        db.rollback()
        return _page(request, db, hub, principal, slug, status_code=422, error=exc.detail)
    db.commit()  # the lookup is audited even when nothing is found
    # Not found: the page says so where the originals would be (an alert).
    notice = {"kind": "ok", "text": "Original identifiers found; this look-up is in the audit log."} if found \
        else None
    return _page(request, db, hub, principal, slug, originals=found, looked_up=pseudonym.strip(),
                 status_code=200 if found else 404, notice=notice)


@router.get("/projects/{slug}/imaging/imports/{batch_id}")
def import_page(request: Request, db: Db, principal: WebPrincipal, slug: str, batch_id: str) -> Response:
    access = projects.open_project(db, principal, slug)
    batch = service.batch(db, access, batch_id)
    rows = service.batch_instances(db, access, batch_id)
    return templates.TemplateResponse(request, "imaging_import.html", {
        "access": access, "project": access.project, "batch": batch, "instances": rows})


@router.get("/projects/{slug}/imaging/instances/{instance_id}")
def instance_page(request: Request, db: Db, principal: WebPrincipal, slug: str, instance_id: Int64) -> Response:
    access = projects.open_project(db, principal, slug)
    inst, entries = service.action_log(db, access, instance_id)
    return templates.TemplateResponse(request, "imaging_instance.html", {
        "access": access, "project": access.project, "instance": inst, "actions": entries})
