"""SFTP API: my SSH public keys (registering one needs a fresh second factor)."""

from __future__ import annotations

import datetime as dt
import uuid

from fastapi import APIRouter
from pydantic import Field

from ..deps import DataRead, DataWrite, Db, HubDep
from ..openapi import errors
from ..schemas import Body, Out
from . import service

router = APIRouter(prefix="/api/v1", tags=["sftp"])


class SshKeyOut(Out):
    id: uuid.UUID
    fingerprint: str = Field(description="SHA256 fingerprint, as `ssh-keygen -lf` shows it")
    algorithm: str
    public_key: str
    comment: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None


class NewSshKey(Body):
    public_key: str = Field(min_length=1, max_length=16000,
                            description="one OpenSSH public key line, e.g. the contents of ~/.ssh/id_ed25519.pub")
    comment: str | None = Field(None, max_length=200, description="a name for the key (default: the key's comment)")


@router.get("/me/ssh-keys", response_model=list[SshKeyOut], summary="My SSH public keys (SFTP logins)")
def my_ssh_keys(db: Db, principal: DataRead) -> list[SshKeyOut]:
    return [SshKeyOut.model_validate(k) for k in service.list_keys(db, principal)]


@router.post("/me/ssh-keys", response_model=SshKeyOut, status_code=201, responses=errors(409),
             summary="Register an SSH public key for SFTP (needs a multi-factor login within the last minutes)")
def add_ssh_key(db: Db, hub: HubDep, principal: DataWrite, body: NewSshKey) -> SshKeyOut:
    key = service.add_key(db, principal, body.public_key, comment=body.comment,
                          fresh_minutes=hub.settings.security.fresh_mfa_minutes)
    return SshKeyOut.model_validate(key)


@router.delete("/me/ssh-keys/{key_id}", status_code=204, summary="Remove one of my SSH keys")
def remove_ssh_key(db: Db, principal: DataRead, key_id: uuid.UUID) -> None:
    service.remove_key(db, principal, key_id)
