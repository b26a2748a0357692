"""Experiment use cases. Every mutation and its audit record share one transaction;
outcomes are counted once per request id, however often they are delivered; an
experiment ends once (concluded, or stopped with its endpoint), whatever races."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import structlog
from prometheus_client import Counter
from sqlalchemy import Engine
from sqlmodel import Session

from llmops.v1 import audit_pb2
from shared import audit
from shared.db import transaction
from shared.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, Unavailable
from shared.identity import Identity

from . import repository as repo
from .catalog import EXPERIMENT_SERVICE, Catalog, EndpointEvent
from .domain import (
    MAX_NOTES, VARIANTS, Experiment, ExperimentFilter, ExperimentSpec, ExperimentStatus, OutcomeRecord,
    check_conclusion, check_fits_endpoint, check_takes_feedback, check_templates, check_wraps_prompt,
)
from .statistics import Analysis, Observations, analyze

log = structlog.get_logger()
INGESTED = Counter("llmops_experiment_outcomes_total", "Outcomes received, by what became of them.", ["result"])
WATCH_POLL_S = 2.0  # how soon a change made by another replica of this service reaches the watches
FEEDBACK_WAIT_S = 5.0  # outcomes arrive in batches: a score given right after the answer may beat its outcome
RESPONSE_ID_PREFIXES = ("chatcmpl-", "cmpl-")


@dataclass(frozen=True)
class StatisticsSettings:
    alpha: float = 0.05
    min_samples: int = 30
    tuning: float = 5000.0


@dataclass(frozen=True)
class FeedbackReceipt:
    request_id: str
    experiment_id: str
    variant: str
    template_id: str
    score: float


class ExperimentService:
    def __init__(self, engine: Engine, catalog: Catalog, *, statistics: StatisticsSettings = StatisticsSettings()
                 ) -> None:
        self._engine = engine
        self._catalog = catalog
        self._statistics = statistics
        self._changed = asyncio.Event()
        # Experiments never change their variants' templates: what ingestion checks outcomes against.
        self._variants: dict[uuid.UUID, dict[str, str]] = {}

    # experiments ------------------------------------------------------------------------------------------

    async def create(self, *, actor: Identity, spec: ExperimentSpec) -> Experiment:
        a, b = await asyncio.gather(self._catalog.template(spec.template_a_id, "templateAId", actor=actor),
                                    self._catalog.template(spec.template_b_id, "templateBId", actor=actor))
        endpoint = check_templates(spec, a, b)
        live = await self._catalog.endpoint(endpoint, actor=actor)
        check_fits_endpoint(a, endpoint, live.model_type)
        if a.model_type == "completion":
            check_wraps_prompt(a, "templateAId")
            check_wraps_prompt(b, "templateBId")
        row = repo.ExperimentRow(
            template_a_id=a.id, template_b_id=b.id, template_a_content=a.content, template_b_content=b.content,
            allocation=spec.allocation, metric=spec.metric, endpoint=endpoint, endpoint_id=live.id,
            model_type=a.model_type, status=ExperimentStatus.RUNNING, created_by=actor.user_id)
        experiment = await asyncio.to_thread(self._insert, actor, row)
        self._publish()
        return experiment

    def _insert(self, actor: Identity, row: repo.ExperimentRow) -> Experiment:
        conflict = f"endpoint {row.endpoint} already has a running experiment; conclude it first"
        with transaction(self._engine, conflict=conflict) as session:
            running = repo.running_on(session=session, endpoint_id=row.endpoint_id)
            if running is not None:
                raise AlreadyExists(f"endpoint {row.endpoint} already has a running experiment ({running.id}); "
                                    "conclude it first", reason="EXPERIMENT_RUNNING")
            session.add(row)
            session.flush()
            audit.record(session, repo.ExperimentAudit, actor=actor, action="CreateExperiment",
                         resource_type="experiment", resource_id=str(row.id), before=None, after=row.snapshot())
            return row.to_domain()

    async def get(self, *, experiment_id: uuid.UUID) -> tuple[Experiment, Analysis]:
        return await asyncio.to_thread(self._with_analysis, experiment_id)

    def _with_analysis(self, experiment_id: uuid.UUID) -> tuple[Experiment, Analysis]:
        with Session(self._engine) as session:
            experiment = repo.get_row(session=session, experiment_id=experiment_id).to_domain()
            rows = repo.outcomes_of(session=session, experiment_id=experiment_id)
        return experiment, self._analyze(experiment, rows)

    def _analyze(self, experiment: Experiment, rows: list[tuple]) -> Analysis:
        columns = list(zip(*rows)) if rows else [()] * 6
        variant, latency, tokens, error, user_id, feedback = (np.asarray(c) for c in columns)

        def observations(name: str, template_id: str) -> Observations:
            mine = variant == name
            scores = feedback[mine]
            rated = np.array([s for s in scores if s is not None], dtype=float)
            return Observations(variant=name, template_id=template_id, latency_ms=latency[mine].astype(float),
                                completion_tokens=tokens[mine].astype(float), error=error[mine].astype(bool),
                                user_id=user_id[mine].astype(str), feedback=rated)

        s = self._statistics
        return analyze(observations("A", experiment.template_a_id), observations("B", experiment.template_b_id),
                       metric=experiment.metric, allocation=experiment.allocation, alpha=s.alpha,
                       min_samples=s.min_samples, tuning=s.tuning)

    def list(self, *, filters: ExperimentFilter, offset: int, limit: int) -> list[Experiment]:
        with Session(self._engine) as session:
            return [r.to_domain() for r in repo.list_rows(session=session, filters=filters, offset=offset,
                                                          limit=limit)]

    async def conclude(self, *, actor: Identity, experiment_id: uuid.UUID, winner_template_id: str,
                       notes: str) -> tuple[Experiment, Analysis]:
        if len(notes) > MAX_NOTES:
            raise InvalidArgument(f"notes is longer than {MAX_NOTES} characters", reason="FIELD_TOO_LONG")
        await asyncio.to_thread(self._conclude, actor, experiment_id, winner_template_id, notes)
        self._publish()
        return await self.get(experiment_id=experiment_id)

    def _conclude(self, actor: Identity, experiment_id: uuid.UUID, winner_template_id: str, notes: str) -> None:
        with transaction(self._engine) as session:
            row = repo.get_row(session=session, experiment_id=experiment_id)
            before = row.snapshot()
            check_conclusion(row.to_domain(), winner_template_id)
            if not repo.end(session=session, row=row, status=ExperimentStatus.CONCLUDED,
                            winner_template_id=winner_template_id, notes=notes, concluded_by=actor.user_id):
                session.refresh(row)  # another conclusion (or the endpoint's deletion) got there first
                check_conclusion(row.to_domain(), winner_template_id)
            audit.record(session, repo.ExperimentAudit, actor=actor, action="ConcludeExperiment",
                         resource_type="experiment", resource_id=str(row.id), before=before, after=row.snapshot())

    async def audit_log(self, request: audit_pb2.ListAuditRecordsRequest) -> audit_pb2.ListAuditRecordsResponse:
        return await audit.list_page(self._engine, repo.ExperimentAudit, request, resource_types=("experiment",))

    # endpoints that go away ------------------------------------------------------------------------------

    async def follow_endpoints(self) -> None:
        """Stop the running experiments of deleted endpoints, forever: each deletion the deployment service's
        watch reports, and, on every (re)connection, those whose endpoint is missing from its snapshot, so
        that a deletion made while this service was down or disconnected is caught up when it is back."""
        backoff = 0.2
        while True:
            try:
                # Read before the watch opens: an experiment created since may be on an endpoint deployed
                # after the snapshot was taken, and must not be taken for one whose endpoint is gone.
                before = await asyncio.to_thread(self._running)
                async for event in self._catalog.endpoint_events():
                    if await asyncio.to_thread(self._reconcile, before, event):
                        self._publish()
                    backoff = 0.2
            except Unavailable as exc:
                log.info("endpoint watch interrupted; retrying", error=exc.message, retry_in_s=backoff)
            except Exception:  # noqa: BLE001 - a follower that dies would leave deleted endpoints' experiments running
                log.exception("endpoint watch failed; retrying", retry_in_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _running(self) -> list[Experiment]:
        with Session(self._engine) as session:
            return [r.to_domain() for r in repo.running(session=session)]

    def _reconcile(self, before: list[Experiment], event: EndpointEvent) -> bool:
        """Stop what the event says lost its endpoint; whether any experiment was stopped."""
        if event.kind == "delete":
            with Session(self._engine) as session:
                gone = [r.to_domain() for r in repo.running(session=session) if r.endpoint_id in event.endpoints]
        else:
            names = {name: endpoint_id for endpoint_id, name in event.endpoints.items()}
            with transaction(self._engine) as session:
                if bound := repo.bind_to_endpoints(session=session, live=names):
                    log.info("older experiments bound to the live endpoints of their names", count=bound)
            # An experiment from before binding is gone with its name; the others with their endpoint's id.
            gone = [e for e in before
                    if (e.endpoint_id not in event.endpoints if e.endpoint_id else e.endpoint not in names)]
        return sum(self._stop(e) for e in gone) > 0

    def _stop(self, experiment: Experiment) -> bool:
        """Stop it without a winner, unless it ended meanwhile (concluded, or stopped by another replica)."""
        with transaction(self._engine) as session:
            row = repo.get_row(session=session, experiment_id=experiment.id)
            before = row.snapshot()
            notes = f"stopped: endpoint {row.endpoint} ({row.endpoint_id or 'unbound'}) was deleted"
            if not repo.end(session=session, row=row, status=ExperimentStatus.STOPPED, notes=notes,
                            concluded_by=EXPERIMENT_SERVICE.user_id):
                return False
            audit.record(session, repo.ExperimentAudit, actor=EXPERIMENT_SERVICE, action="StopExperiment",
                         resource_type="experiment", resource_id=str(row.id), before=before, after=row.snapshot())
        log.info("experiment stopped: its endpoint was deleted", experiment=str(experiment.id),
                 endpoint=experiment.endpoint, notice=True)
        return True

    # what the router follows ------------------------------------------------------------------------------

    def _publish(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def watch(self) -> AsyncIterator[list[Experiment]]:
        """The experiments in force (see repository.in_force), again after every change: at once for
        changes made here, within WATCH_POLL_S for those made by another replica."""
        marker = None
        while True:
            changed = self._changed
            current = await asyncio.to_thread(self._marker)
            if current != marker:
                marker = current
                yield await asyncio.to_thread(self._in_force)
            try:
                async with asyncio.timeout(WATCH_POLL_S):
                    await changed.wait()
            except TimeoutError:
                pass

    def _marker(self) -> tuple[int, str]:
        with Session(self._engine) as session:
            return repo.change_marker(session=session)

    def _in_force(self) -> list[Experiment]:
        with Session(self._engine) as session:
            return [r.to_domain() for r in repo.in_force(session=session)]

    # outcomes and feedback ----------------------------------------------------------------------------------

    def ingest(self, outcomes: list[OutcomeRecord]) -> int:
        """Store the outcomes not seen before (by request id); drop those no experiment could have
        produced. Returns how many were new. Runs in a worker thread."""
        with transaction(self._engine) as session:
            valid = [o for o in outcomes if self._plausible(session, o)]
            new = repo.insert_outcomes(session=session, outcomes=valid)
        INGESTED.labels("new").inc(new)
        INGESTED.labels("duplicate").inc(len(valid) - new)
        if len(valid) < len(outcomes):
            INGESTED.labels("invalid").inc(len(outcomes) - len(valid))
            log.warning("outcomes dropped: no such experiment or variant", dropped=len(outcomes) - len(valid))
        return new

    def _plausible(self, session: Session, outcome: OutcomeRecord) -> bool:
        variants = self._variants.get(outcome.experiment_id)
        if variants is None:
            try:
                row = repo.get_row(session=session, experiment_id=outcome.experiment_id)
            except NotFound:
                return False
            variants = self._variants[outcome.experiment_id] = {"A": row.template_a_id, "B": row.template_b_id}
        return outcome.variant in VARIANTS and variants[outcome.variant] == outcome.template_id \
            and bool(outcome.request_id) and math.isfinite(outcome.latency_ms)

    async def feedback(self, *, actor: Identity, endpoint: str, request_id: str, score: float) -> FeedbackReceipt:
        """score is checked (domain.check_score) by the caller."""
        request_id = request_id.removeprefix(RESPONSE_ID_PREFIXES[0]).removeprefix(RESPONSE_ID_PREFIXES[1])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FEEDBACK_WAIT_S
        while (receipt := await asyncio.to_thread(self._feedback, actor, endpoint, request_id, score)) is None:
            if loop.time() >= deadline:
                raise NotFound(f"no request {request_id} of an experiment on endpoint {endpoint}: only answers "
                               "whose prompt an experiment chose take feedback", reason="OUTCOME_NOT_FOUND")
            await asyncio.sleep(0.2)
        return receipt

    def _feedback(self, actor: Identity, endpoint: str, request_id: str, score: float) -> FeedbackReceipt | None:
        with transaction(self._engine) as session:
            outcome = repo.get_outcome(session=session, request_id=request_id)
            if outcome is None or outcome.endpoint != endpoint:
                return None
            if outcome.user_id != actor.user_id:
                raise PermissionDenied(f"request {request_id} was made by another user; only they may rate it",
                                       reason="NOT_YOUR_REQUEST")
            if not repo.set_feedback(session=session, request_id=request_id, score=score):
                check_takes_feedback(repo.get_row(session=session, experiment_id=outcome.experiment_id).to_domain())
            return FeedbackReceipt(request_id=request_id, experiment_id=str(outcome.experiment_id),
                                   variant=outcome.variant, template_id=outcome.template_id, score=score)
