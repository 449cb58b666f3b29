"""Imports every capability's tables so metadata (and Alembic) sees the whole schema."""

from __future__ import annotations


def load_all() -> None:
    """The model modules every capability declares (``config.add_models`` in its ``includeme``)."""
    from .capabilities import registry

    registry().load_models()
