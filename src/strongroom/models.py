"""Imports every capability's tables so metadata (and Alembic) sees the whole schema."""

from __future__ import annotations


def load_all() -> None:
    from .access import models as _access  # noqa: F401
    from .archive import models as _archive  # noqa: F401
    from .audit import models as _audit  # noqa: F401
    from .catalog import models as _catalog  # noqa: F401
    from .identity import models as _identity  # noqa: F401
    from .imaging import models as _imaging  # noqa: F401
    from .jobs import models as _jobs  # noqa: F401
    from .notify import models as _notify  # noqa: F401
    from .projects import models as _projects  # noqa: F401
    from .strategies import models as _strategies  # noqa: F401
