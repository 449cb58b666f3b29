"""The throwaway capability's one table (never created: the test only sees it in the metadata)."""

from __future__ import annotations

from sqlalchemy.orm import Mapped, mapped_column

from strongroom.db import Base


class CapdemoThing(Base):
    __tablename__ = "capdemo_things"
    id: Mapped[int] = mapped_column(primary_key=True)
