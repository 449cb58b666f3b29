"""Accession numbers: stable, unguessable, readable ids for files and datasets."""

from __future__ import annotations

import secrets

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_accession(prefix: str) -> str:
    """Stable, unguessable, readable ids: SRF-7K2M9QX4TD (files), SRD-… (datasets)."""
    return f"{prefix}-" + "".join(secrets.choice(_CROCKFORD) for _ in range(10))
