"""The hub: settings plus the shared resources built from them, passed to every entry point."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from .audit.service import AUDIT_KEYS
from .config import Settings, get_settings
from .db import engine_for
from .hubsecret import Keyring, Retired, WeakSecret, load_retired, weakness
from .identity.secrets import configure_password_hashing


@dataclass
class Hub:
    settings: Settings
    sessions: sessionmaker[Session]
    secret: bytes
    retired: tuple[Retired, ...] = ()  # what is kept of the secrets before this one (hubsecret.py)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, allow_weak_secret: bool = False) -> Hub:
        """The hub of ``settings``. A weak hub secret is refused (``WeakSecret``); only the rotation that replaces
        it (``strongroom admin rotate-secret``) may open a hub holding one."""
        from .capabilities import registry

        registry().commit()  # every capability's hooks (read grants, MFA policy, …) are in place before a service runs
        settings = settings or get_settings()
        configure_password_hashing(**settings.security.password_hash.model_dump())
        secret, retired = settings.effective_secret_key(), load_retired(settings)
        if not allow_weak_secret and (problem := weakness(secret)):
            raise WeakSecret(f"{problem}: replace it with `strongroom admin rotate-secret` (it keeps the audit "
                             "trail verifiable; `openssl rand -hex 32` makes a good one)")
        sessions = sessionmaker(
            bind=engine_for(settings.effective_database_url),
            expire_on_commit=False,
            info={AUDIT_KEYS: Keyring.of(secret, retired)},
        )
        return cls(settings=settings, sessions=sessions, secret=secret, retired=retired)
