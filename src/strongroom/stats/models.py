"""Landing-page views, counted without keeping anyone's address.

``stats_landing_views`` is the record: one row per day and dataset with its views and unique visitors.
``stats_day_visitors`` holds only today's visitors of a page, each as a keyed hash of (address, browser)
under the day's salt, to count a visitor once a day and a double click once; ``stats_day_salts`` holds
the day's random half of that salt. Both are deleted when the day is over (``stats.prune`` and the first
view of the next day), after which nobody can tell who a row was, not even with the hub's secret.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base

Big = BigInteger().with_variant(Integer, "sqlite")


class LandingViews(Base):
    __tablename__ = "stats_landing_views"

    day: Mapped[dt.date] = mapped_column(primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True,
                                            index=True)
    views: Mapped[int] = mapped_column(Big, default=0)
    visitors: Mapped[int] = mapped_column(Big, default=0)


class DayVisitor(Base):
    """A visitor of one landing page today: a keyed hash, never an address. Gone with the day."""

    __tablename__ = "stats_day_visitors"

    day: Mapped[dt.date] = mapped_column(primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    visitor: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_at: Mapped[dt.datetime]


class DaySalt(Base):
    __tablename__ = "stats_day_salts"

    day: Mapped[dt.date] = mapped_column(primary_key=True)
    salt: Mapped[bytes] = mapped_column(LargeBinary)


__all__ = ["DaySalt", "DayVisitor", "LandingViews"]
