"""The hub: settings plus the shared resources built from them, passed to every entry point."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from .audit.service import AUDIT_KEYS
from .config import Settings, get_settings
from .db import engine_for
from .hubsecret import Keyring, Retired, load_retired, refuse_weak
from .identity.secrets import configure_password_hashing
from .paths import check_config_file, secure_var_dir

# The session.info entry holding the hub itself: code given only a session finds the hub's storage and keys
# through it (the strategies' release check reads the content of the files a version would release).
HUB_INFO = "hub"


@dataclass
class Hub:
    settings: Settings
    sessions: sessionmaker[Session]
    secret: bytes
    retired: tuple[Retired, ...] = ()  # what is kept of the secrets before this one (hubsecret.py)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, allow_weak_secrets: bool = False) -> Hub:
        """The hub of ``settings``. A weak hub secret or archive key passphrase is refused (``WeakSecret``); only
        the rotations that replace them (``admin rotate-secret``, ``archive rotate-passphrase``) open such a hub."""
        from .capabilities import registry

        registry().commit()  # every capability's hooks (read grants, MFA policy, …) are in place before a service runs
        settings = settings or get_settings()
        secure_var_dir(settings.var_dir)  # 0700: made so, or an older hub's tightened (with a warning)
        check_config_file()  # a warning when every user of the machine may read the secrets in it
        configure_password_hashing(**settings.security.password_hash.model_dump())
        secret, retired = settings.effective_secret_key(), load_retired(settings)
        if not allow_weak_secrets:
            refuse_weak(settings, secret)
        keyring = Keyring.of(secret, retired)
        sessions = sessionmaker(
            bind=engine_for(settings.effective_database_url),
            expire_on_commit=False,
            info={AUDIT_KEYS: keyring},
        )
        hub = cls(settings=settings, sessions=sessions, secret=secret, retired=retired)
        sessions.configure(info={AUDIT_KEYS: keyring, HUB_INFO: hub})
        return hub
