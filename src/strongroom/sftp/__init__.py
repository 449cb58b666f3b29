"""SFTP front door to project storage: SSH public keys on the account page, and ``strongroom sftp serve``,
an asyncssh server whose per-user view lists the user's projects, their datasets (read-only, decrypted in
memory when the project allows downloads) and upload areas (crypt4gh-encrypted as the bytes stream in,
within the project's quota, resumable). See docs/sftp.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_models("strongroom.sftp.models")
    config.add_api_router("strongroom.sftp.api:router")
    config.add_web_router("strongroom.sftp.web:router")
    config.add_templates(Path(__file__).parent / "templates")
    config.add_cli("strongroom.sftp.cli:app", name="sftp")  # on the hub host
    # SSH keys go with the sessions and tokens whenever identity withdraws a user's access (password change,
    # MFA reset, deactivation): a key opens data without a second factor, so it must not outlive them.
    config.add_hook("strongroom.identity.service:CREDENTIAL_REVOKERS", "strongroom.sftp.service:withdraw_keys")
