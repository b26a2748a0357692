"""Registry tables and keyword-only data access."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, UniqueConstraint, func
from sqlmodel import Field, Session, SQLModel, col, select

from shared.audit import AuditRecordBase
from shared.errors import NotFound
from shared.timeutil import as_utc, utcnow

from .domain import Model, ModelFilter, ModelStatus, ModelType, PromptTemplate, Runtime, TemplateFilter

metadata = SQLModel.metadata


class ModelRow(SQLModel, table=True):
    __tablename__ = "registry_models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_registry_models_name_version"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=128)
    version: str = Field(max_length=64)
    type: str = Field(max_length=32, index=True)
    runtime: str = Field(max_length=32)
    artifact_uri: str = Field(max_length=1024)
    owner_team: str = Field(max_length=128, index=True)
    status: str = Field(max_length=32, index=True)
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))
    created_by: str = Field(max_length=256)
    reviewed_by: str = Field(default="", max_length=256)
    review_notes: str = Field(default="", max_length=4096)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))

    def to_domain(self) -> Model:
        return Model(
            id=self.id, name=self.name, version=self.version, type=ModelType(self.type),
            runtime=Runtime(self.runtime), artifact_uri=self.artifact_uri, owner_team=self.owner_team,
            metadata=dict(self.meta or {}), status=ModelStatus(self.status), created_by=self.created_by,
            reviewed_by=self.reviewed_by, review_notes=self.review_notes,
            created_at=as_utc(self.created_at), updated_at=as_utc(self.updated_at),
        )

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for audit records."""
        return self.model_dump(mode="json")


class PromptTemplateRow(SQLModel, table=True):
    __tablename__ = "registry_prompt_templates"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_registry_prompt_templates_name_version"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=128, index=True)
    version: int
    content: str
    model_type: str = Field(max_length=32)
    endpoint: str = Field(default="", max_length=63, index=True)
    description: str = Field(default="", max_length=4096)
    created_by: str = Field(max_length=256)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))

    def to_domain(self) -> PromptTemplate:
        return PromptTemplate(
            id=self.id, name=self.name, version=self.version, content=self.content,
            model_type=ModelType(self.model_type), endpoint=self.endpoint, description=self.description,
            created_by=self.created_by, created_at=as_utc(self.created_at),
        )


class RegistryAudit(AuditRecordBase, table=True):
    __tablename__ = "registry_audit_records"


def add_model(*, session: Session, row: ModelRow) -> ModelRow:
    session.add(row)
    session.flush()
    return row


def get_model_row(*, session: Session, model_id: uuid.UUID, for_update: bool = False) -> ModelRow:
    statement = select(ModelRow).where(ModelRow.id == model_id)
    if for_update:
        statement = statement.with_for_update()
    row = session.exec(statement).first()
    if row is None:
        raise NotFound(f"model {model_id} not found", reason="MODEL_NOT_FOUND")
    return row


def list_models(*, session: Session, filters: ModelFilter, offset: int, limit: int) -> list[ModelRow]:
    statement = select(ModelRow)
    if filters.type:
        statement = statement.where(ModelRow.type == filters.type)
    if filters.status:
        statement = statement.where(ModelRow.status == filters.status)
    if filters.owner_team:
        statement = statement.where(ModelRow.owner_team == filters.owner_team)
    statement = statement.order_by(col(ModelRow.created_at).desc(), col(ModelRow.id)).offset(offset).limit(limit)
    return list(session.exec(statement))


def next_template_version(*, session: Session, name: str) -> int:
    current = session.exec(select(func.max(PromptTemplateRow.version)).where(PromptTemplateRow.name == name)).one()
    return (current or 0) + 1


def add_template(*, session: Session, row: PromptTemplateRow) -> PromptTemplateRow:
    session.add(row)
    session.flush()
    return row


def get_template_row(*, session: Session, template_id: uuid.UUID) -> PromptTemplateRow:
    row = session.get(PromptTemplateRow, template_id)
    if row is None:
        raise NotFound(f"prompt template {template_id} not found", reason="TEMPLATE_NOT_FOUND")
    return row


def list_templates(*, session: Session, filters: TemplateFilter, offset: int, limit: int) -> list[PromptTemplateRow]:
    statement = select(PromptTemplateRow)
    if filters.name:
        statement = statement.where(PromptTemplateRow.name == filters.name)
    if filters.model_type:
        statement = statement.where(PromptTemplateRow.model_type == filters.model_type)
    if filters.endpoint:
        statement = statement.where(PromptTemplateRow.endpoint == filters.endpoint)
    statement = statement.order_by(col(PromptTemplateRow.name), col(PromptTemplateRow.version).desc())
    return list(session.exec(statement.offset(offset).limit(limit)))
