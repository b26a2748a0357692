"""Deployment use cases.

Mutations only record the desired revision (serialised per endpoint, one
transaction with its audit record) and wake the endpoint's controller
(controller.py); the controller applies it through the runtime (blue/green)
and reports status.
So a PATCH never waits on Triton, and a newer revision simply supersedes an
older one that is still rolling out.

With an elector (the kubernetes runtime, several replicas of this service) only
the leader runs controllers and the health monitor; a follower records mutations
and serves reads, and converges every live endpoint once it leads (leader.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import structlog
from prometheus_client import Gauge
from sqlalchemy import Engine
from sqlmodel import Session

from llmops.v1 import audit_pb2
from shared import audit
from shared.db import transaction
from shared.errors import AlreadyExists, InvalidArgument, NotFound
from shared.identity import Identity
from shared.timeutil import utcnow

from . import repository as repo
from .domain import (
    ConfigChange, Endpoint, EndpointFilter, EndpointStatus, Environment, ModelSnapshot, Revision, RevisionReason,
    ServingConfig, apply_change, check_bounds, check_servable, endpoint_name_from_route, rollback_target,
)
from .controller import Controllers, HealthMonitor
from .events import EndpointEvent, EndpointEvents
from .leader import LeaseElector
from .locks import KeyedLocks
from .runtimes.base import RuntimeStatus, ServingRuntime


log = structlog.get_logger()

READY_REPLICAS = Gauge("llmops_endpoint_ready_replicas", "Ready replicas of each live endpoint, as its runtime last "
                       "reported them.", ["endpoint", "environment"])
DESIRED_REPLICAS = Gauge("llmops_endpoint_desired_replicas", "Replicas each live endpoint should have now (between "
                         "its min and max, as the autoscaler decided).", ["endpoint", "environment"])


class ModelCatalog(Protocol):
    async def get_model(self, model_id: str, *, actor: Identity) -> tuple[ModelSnapshot, str]: ...


@dataclass(frozen=True)
class DeployRequest:
    model_id: str
    environment: Environment
    route: str
    min_replicas: int
    max_replicas: int
    cpu_target: int


@dataclass(frozen=True)
class RoutedEndpoint:
    endpoint: Endpoint
    runtime: RuntimeStatus


class DeploymentService:
    def __init__(self, *, engine: Engine, catalog: ModelCatalog, runtime: ServingRuntime,
                 monitor_interval_s: float = 2.0, elector: LeaseElector | None = None,
                 environments: Sequence[str] = tuple(Environment)) -> None:
        self._engine = engine
        self._environments = tuple(environments)  # those the gateway and router serve: deploys go nowhere else
        self._catalog = catalog
        self._runtime = runtime
        self._locks = KeyedLocks()
        self._controllers = Controllers(self, runtime)
        self._monitor = HealthMonitor(self, runtime, monitor_interval_s)
        self.events = EndpointEvents()
        self._elector = elector
        self._monitor_interval_s = monitor_interval_s
        self._mirror: asyncio.Task | None = None
        self.mirror_rounds = 0  # looks at the table so far (the mirror loop's)
        self.leading = False
        runtime.on_change = self.publish

    # lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._runtime.start()
        if self._elector is None:
            await self.lead()
            return
        await self._elector.add_listener(self)
        self._elector.start()
        self._mirror = asyncio.create_task(self._mirror_loop(), name="endpoint-mirror")

    async def lead(self) -> None:
        """Act: converge every live endpoint (whichever replica recorded its revision) and monitor them."""
        self.leading = True
        for endpoint in await self.live_endpoints():
            self._controllers.wake(endpoint.id)
        self._monitor.start()

    async def follow(self) -> None:
        """Stop acting (another replica leads): applies in flight are cancelled, the new leader redoes them."""
        self.leading = False  # from here the mirror loop wakes no controller
        await self._monitor.close()
        await self._controllers.close()
        for gauge in (READY_REPLICAS, DESIRED_REPLICAS):  # the leader reports them now: none stale from here
            gauge.clear()

    async def _mirror_loop(self) -> None:
        """What another replica wrote to the table, each interval: route events for it (the leader writes
        each endpoint's status, a follower the mutations it took), so a router that watches this replica
        learns it; and, while this replica leads, a controller for each revision not applied yet (recorded
        by another replica, or before a failover)."""
        seen: dict[uuid.UUID, tuple] | None = None  # None: the first round only looks
        while True:
            await asyncio.sleep(self._monitor_interval_s)
            try:
                live = await self.live_endpoints()
            except Exception:  # noqa: BLE001 - a database hiccup: the next round retries
                log.exception("endpoint mirror failed")
                continue
            self.mirror_rounds += 1
            for endpoint in live:
                if endpoint.applied_revision != endpoint.revision:
                    self._wake(endpoint.id)  # only while leading
            endpoints = {e.id: (e.status, e.revision, e.applied_revision) for e in live}
            if seen is None:
                seen = endpoints
                continue
            for endpoint_id, state in endpoints.items():
                if seen.get(endpoint_id) != state:
                    self.publish(endpoint_id)
            for endpoint_id in seen.keys() - endpoints.keys():
                self.events.publish(EndpointEvent("delete", str(endpoint_id)))
            seen = endpoints

    async def close(self) -> None:
        if self._mirror is not None:
            self._mirror.cancel()
            await asyncio.gather(self._mirror, return_exceptions=True)
        if self._elector is not None:
            await self._elector.close()
        await self._monitor.close()
        await self._controllers.close()
        await self._runtime.close()

    # use cases -----------------------------------------------------------------------------------------------

    async def deploy(self, *, actor: Identity, request: DeployRequest) -> Endpoint:
        if request.environment not in self._environments:  # it would be healthy, and nothing would route to it
            raise InvalidArgument(f"environment {request.environment} is not served by this platform; it serves "
                                  f"{', '.join(self._environments)} (LLMOPS_ENVIRONMENTS)",
                                  reason="ENVIRONMENT_NOT_SERVED", param="environment")
        name = endpoint_name_from_route(request.route)
        check_bounds(request.min_replicas, request.max_replicas, request.cpu_target)
        model = await self._approved_model(request.model_id, actor)
        config = ServingConfig(model=model, min_replicas=request.min_replicas, max_replicas=request.max_replicas,
                               cpu_target=request.cpu_target)
        endpoint = await asyncio.to_thread(self._create, actor, request, name, config)
        _rollout_started(endpoint, RevisionReason.DEPLOY)
        self._wake(endpoint.id)
        self.publish(endpoint.id)
        return endpoint

    async def update(self, *, actor: Identity, endpoint_id: uuid.UUID, change: ConfigChange) -> Endpoint:
        model = await self._approved_model(change.model_id, actor) if change.model_id else None
        async with self._locks.hold(endpoint_id):
            endpoint = await asyncio.to_thread(self._append_revision, actor, endpoint_id, change, model)
        _rollout_started(endpoint, RevisionReason.UPDATE)
        self._wake(endpoint_id)
        self.publish(endpoint_id)
        return endpoint

    async def rollback(self, *, actor: Identity, endpoint_id: uuid.UUID) -> Endpoint:
        async with self._locks.hold(endpoint_id):
            endpoint = await asyncio.to_thread(self._rollback, actor, endpoint_id)
        _rollout_started(endpoint, RevisionReason.ROLLBACK)
        self._wake(endpoint_id)
        self.publish(endpoint_id)
        return endpoint

    async def delete(self, *, actor: Identity, endpoint_id: uuid.UUID) -> Endpoint:
        async with self._locks.hold(endpoint_id):
            endpoint = await asyncio.to_thread(self._delete, actor, endpoint_id)
        # Replicas stop before the answer, so "deleted" means nothing runs any more.
        await self._controllers.retire(endpoint_id)
        log.info("endpoint deleted", endpoint=str(endpoint_id), name=endpoint.name,
                 environment=str(endpoint.environment), notice=True)
        for gauge in (READY_REPLICAS, DESIRED_REPLICAS):  # once nothing reports on it any more
            gauge.remove(endpoint.name, endpoint.environment)
        self.events.publish(EndpointEvent("delete", str(endpoint_id)))
        return endpoint

    async def get(self, *, endpoint_id: uuid.UUID) -> Endpoint:
        return await asyncio.to_thread(self._get, endpoint_id)

    def list(self, *, filters: EndpointFilter, offset: int, limit: int) -> list[Endpoint]:
        with Session(self._engine) as session:
            return [repo.to_domain(row, active) for row, active in
                    repo.list_rows(session=session, filters=filters, offset=offset, limit=limit)]

    def list_revisions(self, *, endpoint_id: uuid.UUID, offset: int, limit: int) -> list[Revision]:
        with Session(self._engine) as session:
            repo.get_row(session=session, endpoint_id=endpoint_id, live=False)
            rows = repo.list_revisions(session=session, endpoint_id=endpoint_id, offset=offset, limit=limit)
            return [r.to_domain() for r in rows]

    async def audit_log(self, request: audit_pb2.ListAuditRecordsRequest) -> audit_pb2.ListAuditRecordsResponse:
        return await audit.list_page(self._engine, repo.DeploymentAudit, request, resource_types=("endpoint",))

    async def routed(self, endpoint_id: uuid.UUID) -> RoutedEndpoint | None:
        try:
            endpoint = await self.get(endpoint_id=endpoint_id)
        except NotFound:  # deleted meanwhile
            return None
        return RoutedEndpoint(endpoint, await self._runtime.status(str(endpoint_id)))

    async def watch(self, *, environment: str | None) -> AsyncIterator[tuple[str, list[RoutedEndpoint | str]]]:
        """("snapshot", [RoutedEndpoint...]) first, then ("upsert", [RoutedEndpoint]) / ("delete", [id])."""
        async with self.events.subscribe() as queue:
            snapshot = []
            for endpoint in await self.live_endpoints():
                if environment in (None, endpoint.environment):
                    snapshot.append(RoutedEndpoint(endpoint, await self._runtime.status(str(endpoint.id))))
            yield "snapshot", snapshot
            while True:
                event = await queue.get()
                if event.kind == "delete":
                    yield "delete", [event.endpoint_id]
                    continue
                routed = await self.routed(uuid.UUID(event.endpoint_id))
                if routed and environment in (None, routed.endpoint.environment):
                    yield "upsert", [routed]

    # what the controllers and the monitor use (EndpointStore) -----------------------------------------------

    async def live_endpoints(self) -> list[Endpoint]:
        return await asyncio.to_thread(self._live_endpoints)

    async def record_status(self, endpoint_id: uuid.UUID, *, expected_revision: int, status: EndpointStatus | None,
                            reason: str, runtime: RuntimeStatus, applied: int | None = None) -> bool:
        return await asyncio.to_thread(self._record_status, endpoint_id, expected_revision=expected_revision,
                                       status=status, reason=reason, runtime=runtime, applied=applied)

    def publish(self, endpoint_id: uuid.UUID | str) -> None:
        self.events.publish(EndpointEvent("upsert", str(endpoint_id)))

    # transactions (worker threads) ----------------------------------------------------------------------------

    def _create(self, actor: Identity, request: DeployRequest, name: str, config: ServingConfig) -> Endpoint:
        conflict = f"route {request.route} is already served in {request.environment}"
        with transaction(self._engine, conflict=conflict) as session:
            if repo.live_name_taken(session=session, environment=request.environment, name=name):
                raise AlreadyExists(conflict, reason="ROUTE_TAKEN")
            row = repo.EndpointRow(name=name, route=request.route, environment=request.environment,
                                   model_id=config.model.id, status=EndpointStatus.DEPLOYING, revision=1,
                                   desired_replicas=config.min_replicas)
            session.add(row)
            session.flush()
            revision = repo.add_revision(session=session, endpoint=row, number=1, parent=None, config=config,
                                         reason=RevisionReason.DEPLOY, actor=actor.user_id)
            audit.record(session, repo.DeploymentAudit, actor=actor, action="DeployEndpoint",
                         resource_type="endpoint", resource_id=str(row.id), before=None,
                         after={**row.snapshot(), "config": asdict(config)})
            return repo.to_domain(row, revision)

    def _append_revision(self, actor: Identity, endpoint_id: uuid.UUID, change: ConfigChange,
                         model: ModelSnapshot | None) -> Endpoint:
        with transaction(self._engine) as session:
            row = repo.get_row(session=session, endpoint_id=endpoint_id, for_update=True)
            active = repo.get_revision(session=session, endpoint_id=endpoint_id, number=row.revision)
            config = apply_change(active.config(), change, model)
            return self._activate(session, actor, row, active, config, RevisionReason.UPDATE,
                                  parent=row.revision, status=EndpointStatus.DEPLOYING, action="UpdateEndpoint")

    def _rollback(self, actor: Identity, endpoint_id: uuid.UUID) -> Endpoint:
        with transaction(self._engine) as session:
            row = repo.get_row(session=session, endpoint_id=endpoint_id, for_update=True)
            active = repo.get_revision(session=session, endpoint_id=endpoint_id, number=row.revision)
            target = repo.get_revision(session=session, endpoint_id=endpoint_id,
                                       number=rollback_target(active.to_domain()))
            # The rollback is a new revision with the target's config, and the target's parent:
            # rolling back again goes one step further back, not forth.
            return self._activate(session, actor, row, active, target.config(), RevisionReason.ROLLBACK,
                                  parent=target.parent_revision, status=EndpointStatus.ROLLBACK,
                                  action="RollbackEndpoint")

    def _activate(self, session: Session, actor: Identity, row: repo.EndpointRow, active: repo.RevisionRow,
                  config: ServingConfig, reason: RevisionReason, *, parent: int | None, status: EndpointStatus,
                  action: str) -> Endpoint:
        before = {**row.snapshot(), "config": asdict(active.config())}
        number = repo.latest_revision_number(session=session, endpoint_id=row.id) + 1
        revision = repo.add_revision(session=session, endpoint=row, number=number, parent=parent, config=config,
                                     reason=reason, actor=actor.user_id)
        row.revision, row.model_id, row.status, row.status_reason = number, config.model.id, status, ""
        row.desired_replicas = min(max(row.desired_replicas, config.min_replicas), config.max_replicas)
        row.updated_at = utcnow()
        session.add(row)
        session.flush()
        audit.record(session, repo.DeploymentAudit, actor=actor, action=action, resource_type="endpoint",
                     resource_id=str(row.id), before=before, after={**row.snapshot(), "config": asdict(config)})
        return repo.to_domain(row, revision)

    def _delete(self, actor: Identity, endpoint_id: uuid.UUID) -> Endpoint:
        with transaction(self._engine) as session:
            row = repo.get_row(session=session, endpoint_id=endpoint_id, for_update=True)
            before = row.snapshot()
            row.status, row.deleted_at, row.updated_at = EndpointStatus.DELETED, utcnow(), utcnow()
            row.desired_replicas = row.ready_replicas = 0
            session.add(row)
            session.flush()
            audit.record(session, repo.DeploymentAudit, actor=actor, action="DeleteEndpoint",
                         resource_type="endpoint", resource_id=str(row.id), before=before, after=row.snapshot())
            return repo.to_domain(row, repo.get_revision(session=session, endpoint_id=row.id, number=row.revision))

    def _get(self, endpoint_id: uuid.UUID, *, live: bool = True) -> Endpoint:
        with Session(self._engine) as session:
            row = repo.get_row(session=session, endpoint_id=endpoint_id, live=live)
            return repo.to_domain(row, repo.get_revision(session=session, endpoint_id=row.id, number=row.revision))

    def _live_endpoints(self) -> list[Endpoint]:
        result, offset = [], 0
        while page := self.list(filters=EndpointFilter(), offset=offset, limit=500):
            result += page
            offset += len(page)
        return result

    def _record_status(self, endpoint_id: uuid.UUID, *, expected_revision: int, status: EndpointStatus | None,
                       reason: str, runtime: RuntimeStatus, applied: int | None = None) -> bool:
        """Store what the runtime reports, unless a newer mutation got there first. True if it changed."""
        with transaction(self._engine) as session:
            try:
                row = repo.get_row(session=session, endpoint_id=endpoint_id, for_update=True)
            except NotFound:  # deleted meanwhile
                return False
            # What runs now, whichever revision it is (the monitor reports every live endpoint each round).
            READY_REPLICAS.labels(row.name, row.environment).set(runtime.ready_replicas)
            DESIRED_REPLICAS.labels(row.name, row.environment).set(runtime.desired_replicas)
            if row.revision != expected_revision:
                return False
            new = dict(status=status or row.status, status_reason=reason,
                       desired_replicas=runtime.desired_replicas, ready_replicas=runtime.ready_replicas,
                       applied_revision=row.applied_revision if applied is None else applied)
            if all(getattr(row, k) == v for k, v in new.items()):
                return False
            previous = row.status
            for key, value in new.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
            session.add(row)
            changed = {"endpoint": str(endpoint_id), "name": row.name, "environment": str(row.environment),
                       "revision": row.revision, "status": str(row.status), "previous": str(previous)}
        if changed["status"] != changed["previous"]:  # once committed: what a person running it follows
            problem = changed["status"] in (EndpointStatus.FAILED, EndpointStatus.DEGRADED)
            (log.warning if problem else log.info)(
                "endpoint status changed", **changed, **({"reason": reason} if reason else {}),
                ready_replicas=runtime.ready_replicas, desired_replicas=runtime.desired_replicas, notice=True)
        return True

    # helpers -------------------------------------------------------------------------------------------------

    def _wake(self, endpoint_id: uuid.UUID) -> None:
        if self.leading:  # a follower only records: the leader's mirror loop picks the revision up
            self._controllers.wake(endpoint_id)

    async def _approved_model(self, model_id: str, actor: Identity) -> ModelSnapshot:
        model, status = await self._catalog.get_model(model_id, actor=actor)
        check_servable(model, approved=status == "approved", status=status)
        return model


def _rollout_started(endpoint: Endpoint, reason: RevisionReason) -> None:
    model = endpoint.config.model
    log.info("rollout started", endpoint=str(endpoint.id), name=endpoint.name, environment=str(endpoint.environment),
             revision=endpoint.revision, reason=str(reason), model=f"{model.name} {model.version}",
             replicas=f"{endpoint.config.min_replicas}-{endpoint.config.max_replicas}", notice=True)
