"""The hub's object storage, built once per process from settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .storage.base import Storage
from .storage.config import StorageSettings, storage_from_settings

if TYPE_CHECKING:
    from ..hub import Hub

_stores: dict[tuple[StorageSettings, Path], Storage] = {}


def storage_for(hub: Hub) -> Storage:
    return storage_from(hub.settings.archive.storage, hub.settings.var_dir)


def storage_from(cfg: StorageSettings, var_dir: Path) -> Storage:
    """The storage a settings section describes (also in worker processes, which have no Hub)."""
    cache_key = (cfg, var_dir)
    if cache_key not in _stores:
        _stores[cache_key] = storage_from_settings(cfg, default_root=var_dir / "objects")
    return _stores[cache_key]
