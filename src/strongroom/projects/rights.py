"""Rights a project member can hold, the built-in roles, and which rights a PI may delegate."""

from __future__ import annotations

RIGHTS: dict[str, str] = {
    "read-data": "see and download the project's data",
    "write-data": "upload data into the project",
    "publish": "release dataset versions and publish their catalogue entries (the public landing page, the DOI)",
    "import": "import data from outside (DICOM, bulk import) into the project",
    "export": "export data out of the project to an approved destination",
    "manage-members": "add and remove members and change their roles",
    "manage-settings": "open or close the project's security settings",
    "view-audit": "read the project's audit log",
    "reidentify": "look up the original identifier behind a pseudonym (fresh MFA, a reason, audited)",
}

# Re-identification is held by no role, the PI's included: the PI hands it to a named member
# (a key custodian), so the people analysing the data are not the ones who can re-identify it.
EXPLICIT_ONLY = ("reidentify",)

# Rights the PI may hand to individual members on top of their role.
DELEGABLE = ("import", "export", "publish", "manage-members", "manage-settings", "view-audit", "reidentify")

BUILTIN_ROLES: dict[str, tuple[str, list[str]]] = {
    "pi": ("Principal investigator: answers for the project, holds every right but re-identification",
           sorted(set(RIGHTS) - set(EXPLICIT_ONLY))),
    "steward": ("Data steward: curates and imports the project's data",
                ["read-data", "write-data", "import", "publish", "view-audit"]),
    # a researcher uploads and assembles datasets; what the public and approved users see is the steward's or
    # the PI's to release (``publish``)
    "member": ("Researcher working on the project's data", ["read-data", "write-data"]),
}
