"""Audit records: who changed what, when, with the state before and after.
Each service has its own table (a subclass of AuditRecordBase) and writes the
record in the same transaction as the change, so neither exists without the other.
Each service also answers ListAuditRecords for its own table: filtered, newest
first, paginated by position (a record written meanwhile never shifts a page)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2
from sqlalchemy import JSON, DateTime, Engine, and_, or_
from sqlmodel import Field, Session, SQLModel, col, select

from llmops.v1 import audit_pb2

from . import pagination
from .errors import InvalidArgument
from .identity import MAX_USER_ID_LENGTH, Identity, current_request_id
from .timeutil import as_utc, to_timestamp, utcnow
from .validation import optional_one_of


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


# Listing ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AuditQuery:
    actor: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _time(value: str, field: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidArgument(f"{field} is not an RFC 3339 time (e.g. 2026-11-25T09:00:00Z): {value[:64]!r}",
                              reason="INVALID_TIME") from exc
    if parsed.tzinfo is None:
        raise InvalidArgument(f"{field} needs a time zone (e.g. 2026-11-25T09:00:00Z): {value[:64]!r}",
                              reason="INVALID_TIME")
    try:
        return as_utc(parsed)
    except OverflowError as exc:  # 0001-01-01T00:00:00+14:00 is in year 0 in UTC, which datetime cannot hold
        raise InvalidArgument(f"{field} is outside the years 1 to 9999 in UTC: {value[:64]!r}",
                              reason="INVALID_TIME") from exc


def _text(value: str, field: str, max_length: int = MAX_USER_ID_LENGTH) -> str | None:
    if len(value) > max_length:
        raise InvalidArgument(f"{field} is longer than {max_length} characters", reason="FIELD_TOO_LONG")
    return value or None


def query_from_request(request: audit_pb2.ListAuditRecordsRequest, *, resource_types: Iterable[str]) -> AuditQuery:
    query = AuditQuery(
        actor=_text(request.actor, "actor"),
        resource_type=optional_one_of(request.resource_type, "resourceType", sorted(resource_types)),
        resource_id=_text(request.resource_id, "resourceId"),
        action=_text(request.action, "action", 100),
        since=_time(request.since, "since"),
        until=_time(request.until, "until"),
    )
    if query.since and query.until and query.since >= query.until:
        raise InvalidArgument("since must be earlier than until", reason="INVALID_TIME_RANGE")
    return query


def list_records(engine: Engine, table: type[AuditRecordBase], query: AuditQuery, *,
                 after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[AuditRecordBase]:
    """Records matching query, newest first, starting after the (at, id) of the last one seen."""
    statement = select(table)
    for column, value in ((table.actor, query.actor), (table.resource_type, query.resource_type),
                          (table.resource_id, query.resource_id), (table.action, query.action)):
        if value is not None:
            statement = statement.where(col(column) == value)
    if query.since is not None:
        statement = statement.where(col(table.at) >= query.since)
    if query.until is not None:
        statement = statement.where(col(table.at) < query.until)
    if after is not None:
        at, record_id = after
        statement = statement.where(or_(col(table.at) < at, and_(col(table.at) == at, col(table.id) < record_id)))
    statement = statement.order_by(col(table.at).desc(), col(table.id).desc()).limit(limit)
    with Session(engine) as session:
        return list(session.exec(statement).all())


def _struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    struct = struct_pb2.Struct()
    json_format.ParseDict(value, struct)
    return struct


def record_to_proto(row: AuditRecordBase) -> audit_pb2.AuditRecord:
    return audit_pb2.AuditRecord(
        id=str(row.id), at=to_timestamp(row.at, whole_seconds=False), actor=row.actor, roles=row.roles,
        action=row.action, resource_type=row.resource_type, resource_id=row.resource_id, request_id=row.request_id,
        before=_struct(row.before), after=_struct(row.after))


async def list_page(engine: Engine, table: type[AuditRecordBase], request: audit_pb2.ListAuditRecordsRequest, *,
                    resource_types: Iterable[str]) -> audit_pb2.ListAuditRecordsResponse:
    """One page of ListAuditRecords, bounded in items and bytes like every list."""
    query = query_from_request(request, resource_types=resource_types)
    size = pagination.page_size(request.page_size)
    echo = {f: getattr(request, f) for f in ("actor", "resource_type", "resource_id", "action", "since", "until")}
    after = _cursor(pagination.decode_position(request.page_token, echo)) if request.page_token else None
    rows = await asyncio.to_thread(list_records, engine, table, query, after=after, limit=size + 1)
    page = [record_to_proto(row) for row in rows[:size]]
    fits = pagination.bounded(page)
    last = rows[fits - 1] if fits else None
    token = pagination.encode_token([as_utc(last.at).isoformat(), str(last.id)], echo) \
        if last is not None and len(rows) > fits else ""
    return audit_pb2.ListAuditRecordsResponse(records=page[:fits], next_page_token=token)


def _cursor(position: object) -> tuple[datetime, uuid.UUID]:
    """The (at, id) of a token's position; whatever else a forged token holds is a 400, not a 500
    (uuid.UUID(12345) is an AttributeError, a year-1 time at +14:00 an OverflowError)."""
    try:
        at, record_id = position  # type: ignore[misc]
        if not isinstance(at, str) or not isinstance(record_id, str):
            raise TypeError("the position is two strings")
        return as_utc(datetime.fromisoformat(at)), uuid.UUID(record_id)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument("pageToken is not a token this API issued", reason="INVALID_PAGE_TOKEN") from exc
