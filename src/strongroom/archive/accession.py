"""Accession numbers: stable, unguessable, readable ids for files and datasets."""

from __future__ import annotations

import secrets

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Each random byte to one of the 32 symbols by its low 5 bits: 256 = 8 x 32, so every symbol is equally likely
# (as secrets.choice per character, in one call to the system's random source instead of ten).
_SYMBOL = bytes(ord(_CROCKFORD[b % 32]) for b in range(256))


def new_accession(prefix: str) -> str:
    """Stable, unguessable, readable ids: SRF-7K2M9QX4TD (files), SRD-… (datasets)."""
    return f"{prefix}-" + secrets.token_bytes(10).translate(_SYMBOL).decode("ascii")
