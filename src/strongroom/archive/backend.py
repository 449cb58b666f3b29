"""The hub's object storage, built once per process from settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .storage import LocalStorage, S3Storage, Storage

if TYPE_CHECKING:
    from ..config import StorageSettings
    from ..hub import Hub

_stores: dict[str, Storage] = {}


def storage_for(hub: Hub) -> Storage:
    return storage_from(hub.settings.archive.storage, hub.settings.var_dir)


def storage_from(cfg: StorageSettings, var_dir: Path) -> Storage:
    """The storage a settings section describes (also in worker processes, which have no Hub)."""
    cache_key = cfg.model_dump_json() + str(var_dir)
    if cache_key not in _stores:
        if cfg.kind == "s3":
            _stores[cache_key] = S3Storage(endpoint_url=cfg.endpoint_url, bucket=cfg.bucket,
                                           access_key=cfg.access_key.get_secret_value(),
                                           secret_key=cfg.secret_key.get_secret_value(), region=cfg.region)
        else:
            _stores[cache_key] = LocalStorage(cfg.root or var_dir / "objects")
    return _stores[cache_key]
