"""Experiment tables and keyword-only data access."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Index, exists, func, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, Session, SQLModel, col, select

from shared.audit import AuditRecordBase
from shared.errors import NotFound
from shared.timeutil import as_utc, utcnow

from .domain import Experiment, ExperimentFilter, ExperimentStatus, OutcomeRecord

metadata = SQLModel.metadata


class ExperimentRow(SQLModel, table=True):
    __tablename__ = "experiment_experiments"
    # At most one running experiment per endpoint, whatever races: the database decides. Per endpoint id, not
    # name: a deleted endpoint's experiment that is not stopped yet must not block one on its successor.
    __table_args__ = (Index("uq_experiment_running_endpoint_id", "endpoint_id", unique=True,
                            sqlite_where=text("status = 'running'"), postgresql_where=text("status = 'running'")),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    template_a_id: str = Field(max_length=36)
    template_b_id: str = Field(max_length=36)
    # The templates as they were approved for the experiment: a template version never changes.
    template_a_content: str
    template_b_content: str
    allocation: int
    metric: str = Field(max_length=32)
    endpoint: str = Field(max_length=63, index=True)
    # The endpoint it was created on (None: created before experiments were bound to one).
    endpoint_id: str | None = Field(default=None, max_length=36)
    model_type: str = Field(max_length=32)
    status: str = Field(max_length=16, index=True)
    winner_template_id: str = Field(default="", max_length=36)
    notes: str = Field(default="", max_length=4096)
    created_by: str = Field(max_length=256)
    concluded_by: str = Field(default="", max_length=256)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    concluded_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))

    def to_domain(self) -> Experiment:
        return Experiment(
            id=self.id, template_a_id=self.template_a_id, template_b_id=self.template_b_id,
            template_a_content=self.template_a_content, template_b_content=self.template_b_content,
            allocation=self.allocation, metric=self.metric, endpoint=self.endpoint, endpoint_id=self.endpoint_id or "",
            model_type=self.model_type,
            status=ExperimentStatus(self.status), winner_template_id=self.winner_template_id, notes=self.notes,
            created_by=self.created_by, created_at=as_utc(self.created_at), concluded_by=self.concluded_by,
            concluded_at=as_utc(self.concluded_at) if self.concluded_at else None)

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for audit records (the templates by id; their text is the registry's)."""
        return self.model_dump(mode="json", exclude={"template_a_content", "template_b_content"})


class OutcomeRow(SQLModel, table=True):
    __tablename__ = "experiment_outcomes"

    # The gateway's request id: a redelivered outcome finds its row taken and is not counted again.
    request_id: str = Field(primary_key=True, max_length=128)
    experiment_id: uuid.UUID = Field(index=True)
    variant: str = Field(max_length=1)
    template_id: str = Field(max_length=36)
    endpoint: str = Field(max_length=63)
    user_id: str = Field(max_length=256)
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    error: bool
    created_at: datetime = Field(sa_type=DateTime(timezone=True))
    recorded_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    feedback_score: float | None = None
    feedback_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class ExperimentAudit(AuditRecordBase, table=True):
    __tablename__ = "experiment_audit_records"


def get_row(*, session: Session, experiment_id: uuid.UUID) -> ExperimentRow:
    row = session.exec(select(ExperimentRow).where(ExperimentRow.id == experiment_id)).first()
    if row is None:
        raise NotFound(f"experiment {experiment_id} not found", reason="EXPERIMENT_NOT_FOUND")
    return row


def running_on(*, session: Session, endpoint_id: str) -> ExperimentRow | None:
    return session.exec(select(ExperimentRow).where(ExperimentRow.endpoint_id == endpoint_id,
                                                    ExperimentRow.status == ExperimentStatus.RUNNING)).first()


def running(*, session: Session) -> list[ExperimentRow]:
    return list(session.exec(select(ExperimentRow).where(ExperimentRow.status == ExperimentStatus.RUNNING)))


def end(*, session: Session, row: ExperimentRow, status: ExperimentStatus, **changes: Any) -> bool:
    """End a running experiment: one UPDATE ... WHERE status = 'running', so of concurrent ends exactly
    one changes the row, on SQLite too (where SELECT ... FOR UPDATE locks nothing). False when it had
    ended already; otherwise row is read again, in its new state."""
    at = utcnow()
    ended = session.execute(update(ExperimentRow).where(col(ExperimentRow.id) == row.id,
                                                        col(ExperimentRow.status) == ExperimentStatus.RUNNING)
                            .values(status=status, concluded_at=at, updated_at=at, **changes)
                            .execution_options(synchronize_session=False))
    if ended.rowcount != 1:
        return False
    session.refresh(row)
    return True


def list_rows(*, session: Session, filters: ExperimentFilter, offset: int, limit: int) -> list[ExperimentRow]:
    statement = select(ExperimentRow)
    if filters.status:
        statement = statement.where(ExperimentRow.status == filters.status)
    if filters.endpoint:
        statement = statement.where(ExperimentRow.endpoint == filters.endpoint)
    statement = statement.order_by(col(ExperimentRow.created_at).desc(), col(ExperimentRow.id))
    return list(session.exec(statement.offset(offset).limit(limit)))


def in_force(*, session: Session) -> list[ExperimentRow]:
    """What the router applies: every running experiment, and for each endpoint (by id) without one the
    latest concluded experiment (its winner's template is served to everyone). Stopped experiments, and
    those not bound to an endpoint yet, apply to none."""
    rows = session.exec(select(ExperimentRow).where(col(ExperimentRow.endpoint_id).is_not(None),
                                                    ExperimentRow.status != ExperimentStatus.STOPPED)
                        .order_by(col(ExperimentRow.created_at).desc())).all()
    chosen: dict[str, ExperimentRow] = {}
    for row in rows:
        current = chosen.get(row.endpoint_id)
        if current is None or (row.status == ExperimentStatus.RUNNING and current.status != ExperimentStatus.RUNNING):
            chosen[row.endpoint_id] = row
    return list(chosen.values())


def bind_to_endpoints(*, session: Session, live: dict[str, str]) -> int:
    """Bind the experiments created before binding existed to the live endpoint of their name
    (live: endpoint name -> id); how many were bound."""
    bound = 0
    for name, endpoint_id in live.items():
        bound += session.execute(update(ExperimentRow).where(col(ExperimentRow.endpoint_id).is_(None),
                                                             col(ExperimentRow.endpoint) == name)
                                 .values(endpoint_id=endpoint_id)).rowcount
    return bound


def change_marker(*, session: Session) -> tuple[int, str]:
    """Changes whenever an experiment is created or concluded, by any replica of the service."""
    count, latest = session.exec(select(func.count(), func.max(ExperimentRow.updated_at))).one()
    return count, str(latest)


def insert_outcomes(*, session: Session, outcomes: list[OutcomeRecord]) -> int:
    """Insert the outcomes whose request id is new; return how many were."""
    if not outcomes:
        return 0
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (dialect.insert(OutcomeRow.__table__)
                 .values([{**o.__dict__, "recorded_at": utcnow()} for o in outcomes])
                 .on_conflict_do_nothing(index_elements=["request_id"])
                 .returning(OutcomeRow.__table__.c.request_id))
    return len(session.execute(statement).all())


def outcomes_of(*, session: Session, experiment_id: uuid.UUID) -> list[tuple]:
    """(variant, latency_ms, completion_tokens, error, user_id, feedback_score) of each outcome."""
    statement = select(OutcomeRow.variant, OutcomeRow.latency_ms, OutcomeRow.completion_tokens, OutcomeRow.error,
                       OutcomeRow.user_id, OutcomeRow.feedback_score).where(OutcomeRow.experiment_id == experiment_id)
    return list(session.exec(statement).all())


def get_outcome(*, session: Session, request_id: str) -> OutcomeRow | None:
    return session.get(OutcomeRow, request_id)


def set_feedback(*, session: Session, request_id: str, score: float) -> bool:
    """Rate the request if its experiment is still running, checked in the UPDATE itself so that a
    conclusion committed meanwhile wins; False when it is not."""
    running = exists().where(col(ExperimentRow.id) == col(OutcomeRow.experiment_id),
                             col(ExperimentRow.status) == ExperimentStatus.RUNNING)
    return session.execute(update(OutcomeRow).where(col(OutcomeRow.request_id) == request_id, running)
                           .values(feedback_score=score, feedback_at=utcnow())).rowcount == 1

