"""Registry use cases. Every mutation and its audit record share one transaction."""

from __future__ import annotations

import uuid

from sqlalchemy import Engine
from sqlmodel import Session

from llmops.v1 import audit_pb2
from shared import audit
from shared.db import transaction
from shared.identity import Identity
from shared.timeutil import utcnow

from . import repository as repo
from .domain import (
    Model, ModelFilter, ModelSpec, ModelStatus, PromptTemplate, TemplateFilter, TemplateSpec,
    check_initial_status, check_model_metadata, check_template, check_transition,
)


AUDITED_RESOURCES = ("model", "prompt_template")


class RegistryService:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create_model(self, *, actor: Identity, spec: ModelSpec) -> Model:
        check_initial_status(spec.status)
        metadata = check_model_metadata(spec.metadata)  # here, in a worker thread: it trial-renders the chat template
        with transaction(self._engine, conflict=f"model {spec.name} version {spec.version} already exists") as session:
            row = repo.add_model(session=session, row=repo.ModelRow(
                name=spec.name, version=spec.version, type=spec.type, runtime=spec.runtime,
                artifact_uri=spec.artifact_uri, owner_team=spec.owner_team, status=spec.status,
                meta=metadata, created_by=actor.user_id,
            ))
            audit.record(session, repo.RegistryAudit, actor=actor, action="CreateModel", resource_type="model",
                         resource_id=str(row.id), before=None, after=row.snapshot())
            return row.to_domain()

    async def audit_log(self, request: audit_pb2.ListAuditRecordsRequest) -> audit_pb2.ListAuditRecordsResponse:
        return await audit.list_page(self._engine, repo.RegistryAudit, request, resource_types=AUDITED_RESOURCES)

    def get_model(self, *, model_id: uuid.UUID) -> Model:
        with Session(self._engine) as session:
            return repo.get_model_row(session=session, model_id=model_id).to_domain()

    def list_models(self, *, filters: ModelFilter, offset: int, limit: int) -> list[Model]:
        with Session(self._engine) as session:
            rows = repo.list_models(session=session, filters=filters, offset=offset, limit=limit)
            return [r.to_domain() for r in rows]

    def update_model_status(self, *, actor: Identity, model_id: uuid.UUID, status: ModelStatus, notes: str) -> Model:
        with transaction(self._engine) as session:
            row = repo.get_model_row(session=session, model_id=model_id, for_update=True)
            before = row.snapshot()
            check_transition(row.to_domain(), status, actor=actor.user_id)
            row.status = status
            row.updated_at = utcnow()
            if status in (ModelStatus.APPROVED, ModelStatus.REJECTED):
                row.reviewed_by, row.review_notes = actor.user_id, notes
            session.add(row)
            session.flush()
            audit.record(session, repo.RegistryAudit, actor=actor, action="UpdateModelStatus", resource_type="model",
                         resource_id=str(row.id), before=before, after=row.snapshot())
            return row.to_domain()

    def create_template(self, *, actor: Identity, spec: TemplateSpec) -> PromptTemplate:
        check_template(spec.content)
        # Two creates of one name racing for a version: the unique constraint decides, the loser gets 409.
        with transaction(self._engine, conflict=f"prompt template {spec.name} changed concurrently; retry") as session:
            row = repo.add_template(session=session, row=repo.PromptTemplateRow(
                name=spec.name, version=repo.next_template_version(session=session, name=spec.name),
                content=spec.content, model_type=spec.model_type, endpoint=spec.endpoint,
                description=spec.description, created_by=actor.user_id,
            ))
            audit.record(session, repo.RegistryAudit, actor=actor, action="CreatePromptTemplate",
                         resource_type="prompt_template", resource_id=str(row.id), before=None,
                         after=row.model_dump(mode="json"))
            return row.to_domain()

    def get_template(self, *, template_id: uuid.UUID) -> PromptTemplate:
        with Session(self._engine) as session:
            return repo.get_template_row(session=session, template_id=template_id).to_domain()

    def list_templates(self, *, filters: TemplateFilter, offset: int, limit: int) -> list[PromptTemplate]:
        with Session(self._engine) as session:
            rows = repo.list_templates(session=session, filters=filters, offset=offset, limit=limit)
            return [r.to_domain() for r in rows]
