"""Audit records: who changed what, when, with the state before and after.
Each service has its own table (a subclass of AuditRecordBase) and writes the
record in the same transaction as the change, so neither exists without the other."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime
from sqlmodel import Field, Session, SQLModel

from .identity import current_request_id
from .identity import Identity
from .timeutil import utcnow


class AuditRecordBase(SQLModel):
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True), index=True)
    actor: str
    roles: str
    action: str
    resource_type: str
    resource_id: str = Field(index=True)
    request_id: str = ""
    before: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    after: dict[str, Any] | None = Field(default=None, sa_type=JSON)


def record(
    session: Session,
    table: type[AuditRecordBase],
    *,
    actor: Identity,
    action: str,
    resource_type: str,
    resource_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    session.add(table(
        actor=actor.user_id,
        roles=",".join(sorted(actor.roles)),
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        request_id=current_request_id(),
        before=before,
        after=after,
    ))
