"""Deployment tables and keyword-only data access."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, UniqueConstraint, text
from sqlmodel import Field, Session, SQLModel, col, select

from shared.audit import AuditRecordBase
from shared.errors import NotFound
from shared.timeutil import as_utc, utcnow

from .domain import (
    Endpoint, EndpointFilter, EndpointStatus, Environment, ModelSnapshot, Revision, RevisionReason, ServingConfig,
)

metadata = SQLModel.metadata


class EndpointRow(SQLModel, table=True):
    __tablename__ = "deployment_endpoints"
    # A name is unique among the live endpoints of an environment; deleted ones free it.
    __table_args__ = (
        Index("uq_deployment_endpoints_live_name", "environment", "name", unique=True,
              sqlite_where=text("deleted_at IS NULL"), postgresql_where=text("deleted_at IS NULL")),
        # ListEndpoints' order: a page is read off this index instead of sorting every live row.
        Index("ix_deployment_endpoints_live_created", text("created_at DESC"), "id",
              sqlite_where=text("deleted_at IS NULL"), postgresql_where=text("deleted_at IS NULL")),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=63)
    route: str = Field(max_length=128)
    environment: str = Field(max_length=8, index=True)
    model_id: str = Field(max_length=36, index=True)
    status: str = Field(max_length=16, index=True)
    status_reason: str = Field(default="", max_length=2048)
    revision: int
    applied_revision: int = 0
    desired_replicas: int = 0
    ready_replicas: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    deleted_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))

    def snapshot(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class RevisionRow(SQLModel, table=True):
    __tablename__ = "deployment_revisions"
    __table_args__ = (UniqueConstraint("endpoint_id", "revision", name="uq_deployment_revisions_endpoint_revision"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    endpoint_id: uuid.UUID = Field(foreign_key="deployment_endpoints.id", index=True)
    revision: int
    parent_revision: int | None = None
    model: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    min_replicas: int
    max_replicas: int
    cpu_target: int
    reason: str = Field(max_length=16)
    created_by: str = Field(max_length=256)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))

    def config(self) -> ServingConfig:
        return ServingConfig(model=ModelSnapshot(**self.model), min_replicas=self.min_replicas,
                             max_replicas=self.max_replicas, cpu_target=self.cpu_target)

    def to_domain(self) -> Revision:
        return Revision(number=self.revision, parent=self.parent_revision, config=self.config(),
                        reason=RevisionReason(self.reason), created_by=self.created_by,
                        created_at=as_utc(self.created_at))


class DeploymentAudit(AuditRecordBase, table=True):
    __tablename__ = "deployment_audit_records"


def to_domain(row: EndpointRow, active: RevisionRow) -> Endpoint:
    return Endpoint(
        id=row.id, name=row.name, route=row.route, environment=Environment(row.environment), config=active.config(),
        status=EndpointStatus(row.status), status_reason=row.status_reason, revision=row.revision,
        applied_revision=row.applied_revision, desired_replicas=row.desired_replicas,
        ready_replicas=row.ready_replicas, created_at=as_utc(row.created_at), updated_at=as_utc(row.updated_at),
    )


def add_revision(*, session: Session, endpoint: EndpointRow, number: int, parent: int | None,
                 config: ServingConfig, reason: RevisionReason, actor: str) -> RevisionRow:
    row = RevisionRow(endpoint_id=endpoint.id, revision=number, parent_revision=parent, model=asdict(config.model),
                      min_replicas=config.min_replicas, max_replicas=config.max_replicas,
                      cpu_target=config.cpu_target, reason=reason, created_by=actor)
    session.add(row)
    session.flush()
    return row


def get_row(*, session: Session, endpoint_id: uuid.UUID, live: bool = True, for_update: bool = False) -> EndpointRow:
    statement = select(EndpointRow).where(EndpointRow.id == endpoint_id)
    if live:
        statement = statement.where(col(EndpointRow.deleted_at).is_(None))
    if for_update:
        statement = statement.with_for_update()
    row = session.exec(statement).first()
    if row is None:
        raise NotFound(f"serving endpoint {endpoint_id} not found", reason="ENDPOINT_NOT_FOUND")
    return row


def get_revision(*, session: Session, endpoint_id: uuid.UUID, number: int) -> RevisionRow:
    row = session.exec(select(RevisionRow).where(RevisionRow.endpoint_id == endpoint_id,
                                                 RevisionRow.revision == number)).first()
    if row is None:
        raise NotFound(f"revision {number} of endpoint {endpoint_id} not found", reason="REVISION_NOT_FOUND")
    return row


def latest_revision_number(*, session: Session, endpoint_id: uuid.UUID) -> int:
    rows = session.exec(select(RevisionRow.revision).where(RevisionRow.endpoint_id == endpoint_id)
                        .order_by(col(RevisionRow.revision).desc()).limit(1)).all()
    return rows[0] if rows else 0


def live_name_taken(*, session: Session, environment: str, name: str) -> bool:
    return session.exec(select(EndpointRow.id).where(
        EndpointRow.environment == environment, EndpointRow.name == name,
        col(EndpointRow.deleted_at).is_(None))).first() is not None


def list_rows(*, session: Session, filters: EndpointFilter, offset: int,
              limit: int) -> list[tuple[EndpointRow, RevisionRow]]:
    """A page of live endpoints, newest first, each with its active revision: one query, not one per row."""
    statement = select(EndpointRow, RevisionRow).join(RevisionRow, (RevisionRow.endpoint_id == EndpointRow.id)
                                                      & (RevisionRow.revision == EndpointRow.revision))
    statement = statement.where(col(EndpointRow.deleted_at).is_(None))
    if filters.environment:
        statement = statement.where(EndpointRow.environment == filters.environment)
    if filters.model_id:
        statement = statement.where(EndpointRow.model_id == filters.model_id)
    if filters.status:
        statement = statement.where(EndpointRow.status == filters.status)
    if filters.name:
        statement = statement.where(EndpointRow.name == filters.name)
    statement = statement.order_by(col(EndpointRow.created_at).desc(), col(EndpointRow.id)).offset(offset).limit(limit)
    return list(session.exec(statement))


def list_revisions(*, session: Session, endpoint_id: uuid.UUID, offset: int, limit: int) -> list[RevisionRow]:
    return list(session.exec(select(RevisionRow).where(RevisionRow.endpoint_id == endpoint_id)
                             .order_by(col(RevisionRow.revision).desc()).offset(offset).limit(limit)))
