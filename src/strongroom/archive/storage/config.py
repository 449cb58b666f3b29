"""The one storage configuration: the hub's ``[archive.storage]`` settings section, also used directly by
tests and tools, and the factory that builds a backend from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .base import DEFAULT_PART_SIZE, S3_MAX_PART_SIZE, S3_MIN_PART_SIZE
from .local import LocalStorage
from .s3 import S3Storage

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


class StorageSettings(BaseModel):
    """Where archived bodies and inbox uploads live: a local directory or any S3 service.

    ``kind="local"`` uses ``root`` (the hub defaults it to ``<var_dir>/objects``). ``kind="s3"`` uses the
    rest; empty keys fall back to boto3's usual credential chain. Every S3 request is bounded by
    ``connect_timeout`` / ``read_timeout`` (seconds) and retried up to ``max_attempts`` times;
    ``verify_tls`` is true, false (never in production) or the path of a CA bundle for a private CA."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local", "s3"] = "local"
    root: Path | None = None
    endpoint_url: str = ""
    bucket: str = "strongroom"
    access_key: SecretStr = SecretStr("")
    secret_key: SecretStr = SecretStr("")
    region: str = "us-east-1"
    part_size: int = Field(DEFAULT_PART_SIZE, ge=S3_MIN_PART_SIZE, le=S3_MAX_PART_SIZE)
    create_bucket: bool = True
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    verify_tls: bool | str = True

    @model_validator(mode="before")
    @classmethod
    def _known_settings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise ValueError(f"unknown storage setting(s) {', '.join(map(repr, unknown))}")
        return data

    @field_validator("verify_tls", mode="before")
    @classmethod
    def _bool_or_ca_bundle(cls, value: Any) -> Any:
        # Environment variables are strings: "false" must mean False, not a CA bundle named "false".
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE or word in _FALSE:
                return word in _TRUE
            if not word:
                raise ValueError("verify_tls is true, false or the path of a CA bundle")
        return value


def storage_from_settings(settings: StorageSettings | dict[str, Any], default_root: Path | None = None
                          ) -> LocalStorage | S3Storage:
    """Build the configured backend (no network I/O happens here)."""
    cfg = settings if isinstance(settings, StorageSettings) else StorageSettings.model_validate(settings)
    if cfg.kind == "s3":
        return S3Storage(cfg.endpoint_url, cfg.bucket, cfg.access_key.get_secret_value(),
                         cfg.secret_key.get_secret_value(), cfg.region, part_size=cfg.part_size,
                         create_bucket=cfg.create_bucket, connect_timeout=cfg.connect_timeout,
                         read_timeout=cfg.read_timeout, max_attempts=cfg.max_attempts, verify=cfg.verify_tls)
    root = cfg.root or default_root
    if root is None:
        raise ValueError("storage kind 'local' needs a root directory")
    return LocalStorage(root)
