"""The hub's object storage, built once per process from settings."""

from __future__ import annotations

from ..hub import Hub
from .storage import LocalStorage, S3Storage, Storage

_stores: dict[str, Storage] = {}


def storage_for(hub: Hub) -> Storage:
    cfg = hub.settings.archive.storage
    cache_key = cfg.model_dump_json() + str(hub.settings.var_dir)
    if cache_key not in _stores:
        if cfg.kind == "s3":
            _stores[cache_key] = S3Storage(endpoint_url=cfg.endpoint_url, bucket=cfg.bucket,
                                           access_key=cfg.access_key.get_secret_value(),
                                           secret_key=cfg.secret_key.get_secret_value(), region=cfg.region)
        else:
            _stores[cache_key] = LocalStorage(cfg.root or hub.settings.var_dir / "objects")
    return _stores[cache_key]
