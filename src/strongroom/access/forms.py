"""Typed application form fields and their validation (pure: no web or database imports)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from email_validator import EmailNotValidError, validate_email

# The request content from the seeds: what a researcher states when asking for imaging data.
DEFAULT_FORM: list[dict[str, Any]] = [
    {"id": "study_name", "type": "text", "label": "Study name", "required": True},
    {"id": "ethics", "type": "ethics", "label": "Ethics approval (registration number and decision)",
     "required": True},
    {"id": "description", "type": "longtext", "label": "Description of the data and parameters you need",
     "required": True},
    {"id": "selection", "type": "longtext", "label": "Selection criteria (patients, period, modalities)",
     "required": True},
    # Selection and parameters, structured (optional): carried into the owning project's data request.
    {"id": "variables", "type": "longtext", "label": "Variables (columns) you need, one per line", "required": False},
    {"id": "period_start", "type": "date", "label": "Data from (date)", "required": False},
    {"id": "period_end", "type": "date", "label": "Data until (date)", "required": False},
    {"id": "pseudonymization", "type": "option", "label": "Suggested pseudonymization strategy", "required": True,
     "options": ["Keyed pseudonyms, dates shifted per patient", "Keyed pseudonyms, dates kept",
                 "Anonymized (no link back)", "Other (describe in the description)"]},
    {"id": "purposes", "type": "multiselect", "label": "Intended use", "required": False,
     "options": ["AI model training", "AI model validation", "Method development", "Clinical research"]},
    {"id": "sharing_plan", "type": "longtext", "label": "Sharing plan (who else sees data or results)",
     "required": True},
    {"id": "contact", "type": "email", "label": "Contact e-mail for this application", "required": True},
    {"id": "start", "type": "date", "label": "Planned start", "required": False},
    {"id": "team", "type": "table", "label": "Team members with access", "required": False,
     "columns": ["name", "affiliation", "role"]},
]

DEFAULT_TERMS = """\
Data use agreement (version 1)

1. Use the data only for the study described in the approved application.
2. Do not attempt to re-identify any person, nor link the data with other data to that end.
3. Keep the data on approved, access-controlled systems; do not share it onward.
4. Cite the dataset as shown on its landing page in any publication.
5. Delete local copies when the entitlement ends, and report any incident to the hub at once.
"""


class FormError(ValueError):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def describe_errors(fields: list[dict[str, Any]], errors: dict[str, str]) -> dict[str, str]:
    """The same errors as sentences a person reads: the field's label, not its id
    ("Study name is required", not "study_name: required")."""
    labels = {f["id"]: str(f.get("label") or f["id"]) for f in fields}
    described = {}
    for fid, message in errors.items():
        label = labels.get(fid) or fid.replace("_", " ").capitalize()
        described[fid] = f"{label} is required" if message == "required" else f"{label}: {message}"
    return described


def validate_answers(fields: list[dict[str, Any]], answers: dict[str, Any], *, attachments: set[str],
                     complete: bool) -> dict[str, Any]:
    """Check answers against the form. ``complete`` additionally requires every required field.
    Returns the cleaned answers; raises FormError listing every problem by field id."""
    by_id = {f["id"]: f for f in fields}
    errors: dict[str, str] = {}
    cleaned: dict[str, Any] = {}
    for key in answers:
        if key not in by_id:
            errors[key] = "not a field of this form"
    for field in fields:
        fid, kind = field["id"], field["type"]
        value = answers.get(fid)
        empty = value in (None, "", [], {})
        if empty:
            if complete and field.get("required"):
                errors[fid] = "required"
            continue
        try:
            cleaned[fid] = _clean(kind, field, value, attachments)
        except ValueError as exc:
            errors[fid] = str(exc)
    if errors:
        raise FormError(errors)
    return cleaned


def _clean(kind: str, field: dict[str, Any], value: Any, attachments: set[str]) -> Any:
    if kind in ("text", "longtext"):
        if not isinstance(value, str):
            raise ValueError("must be text")
        limit = 1000 if kind == "text" else 20_000
        if len(value) > limit:
            raise ValueError(f"at most {limit} characters")
        return value.strip()
    if kind == "date":
        try:
            return dt.date.fromisoformat(str(value)).isoformat()
        except ValueError:
            raise ValueError("must be a date (YYYY-MM-DD)") from None
    if kind == "option":
        if value not in field.get("options", []):
            raise ValueError("not one of the options")
        return value
    if kind == "multiselect":
        if not isinstance(value, list) or not all(v in field.get("options", []) for v in value):
            raise ValueError("must be a list of the options")
        return sorted(set(value), key=field["options"].index)
    if kind == "email":
        try:
            return validate_email(str(value), check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise ValueError(str(exc)) from None
    if kind == "attachment":
        if value not in attachments:
            raise ValueError("no such attachment on this application")
        return value
    if kind == "ethics":
        if not isinstance(value, dict) or not str(value.get("number", "")).strip():
            raise ValueError("needs the approval's registration number")
        attachment = value.get("attachment")
        if attachment is not None and attachment not in attachments:
            raise ValueError("no such attachment on this application")
        return {"number": str(value["number"]).strip()[:200], "attachment": attachment}
    if kind == "table":
        columns = field.get("columns", [])
        if not isinstance(value, list) or len(value) > 200:
            raise ValueError("must be a list of rows (at most 200)")
        rows = []
        for row in value:
            if not isinstance(row, dict) or set(row) - set(columns):
                raise ValueError(f"each row has the columns {columns}")
            rows.append({c: str(row.get(c, ""))[:500] for c in columns})
        return rows
    raise ValueError(f"unknown field type {kind!r}")
