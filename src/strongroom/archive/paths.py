"""Archive file paths (pure: no web or database imports).

``is_archive_path``: the one rule a file's path passes to enter the archive — a local upload
(``uploads.py``) and a peer hub's sync manifest (``federation/manifest.py``) alike: 1 to 1024 characters, no
control characters (a trailing newline included: the rule once let one through), relative (no leading ``/``), no
``..`` component.

``safe_relative``: the name a stored path becomes on someone's disk (the entries of a version's ZIP), whatever
its source: never a ``..`` or ``.`` component, an empty one, a leading ``/``, a backslash or a drive letter.
"""

from __future__ import annotations

import re

PATH_RULE = "a relative path (1 to 1024 characters) without control characters or '..'"
_PATH_RE = re.compile(r"[^\x00-\x1f\x7f]{1,1024}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^([A-Za-z]):")


def is_archive_path(path: object) -> bool:
    """Whether ``path`` may name a file in the archive (``PATH_RULE``)."""
    return (isinstance(path, str) and bool(_PATH_RE.fullmatch(path)) and not path.startswith("/")
            and ".." not in path.split("/"))


def safe_relative(path: str) -> str:
    """``path`` as a relative POSIX path that stays inside the folder it is extracted into on any system:
    backslashes count as separators, control characters are dropped, components that are empty or only dots and
    spaces (``..``, ``.``, ``". ."``: Windows strips trailing dots and spaces) are left out, and a drive letter
    (``C:``) loses its colon. "" when nothing is left (the caller names the file otherwise)."""
    parts = []
    for part in _CONTROL.sub("", path).replace("\\", "/").split("/"):
        if not part.strip(". "):
            continue
        parts.append(_DRIVE.sub(r"\1_", part))
    return "/".join(parts)
