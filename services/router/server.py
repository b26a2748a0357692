"""Router process: follow the route table, serve inference over gRPC."""

from __future__ import annotations

import asyncio
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from llmops.v1 import inference_pb2, inference_pb2_grpc
from shared.server import RunningServer, Servicer, start_server
from shared.settings import Settings

from .backends import ReplicaChannel, ReplicaPool
from .limits import RateLimiter
from .experiments import ExperimentTable
from .experiments import follow as follow_experiments
from .outcomes import OutcomeJournal, OutcomeSink, grpc_delivery, redis_delivery
from .routes import RouteTable, follow
from .service import InferenceService
from .servicer import InferenceServicer, OpenAIServicer

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
OPENAI_SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["OpenAIService"].full_name


@dataclass
class Router:
    running: RunningServer
    table: RouteTable
    outcomes: OutcomeSink
    pool: ReplicaPool
    limiter: RateLimiter
    watchers: list[asyncio.Task]
    experiments: ExperimentTable

    async def close(self) -> None:
        for watcher in self.watchers:
            watcher.cancel()
        await self.outcomes.close()
        await self.limiter.close()
        await self.pool.close()


def outcome_sink(settings: Settings, port: int) -> OutcomeSink:
    """Outcomes journaled beside this router (one journal per port) and delivered to Redis when
    configured, else to the experiment service."""
    journal = OutcomeJournal(Path(settings.outcome_journal_dir) / f"outcomes-{port or os.getpid()}.log")
    if settings.redis_url:
        deliver, close = redis_delivery(settings.redis_url)
    else:
        deliver, close = grpc_delivery(settings.address_of("experiment"), settings.service_token)
    return OutcomeSink(journal, deliver, close)


async def start(settings: Settings, *, port: int | None = None) -> Router:
    port = settings.router_port if port is None else port
    table = RouteTable(environments=tuple(settings.environments), default_environment=settings.environment)
    pool = ReplicaPool(client_factory=functools.partial(ReplicaChannel, replica_key=settings.replica_key()))
    experiments = ExperimentTable()
    pool.follow_table(table)
    limiter = RateLimiter(settings.rate_limit_per_minute, settings.redis_url)
    outcomes = outcome_sink(settings, port)
    outcomes.start()
    watchers = [
        asyncio.create_task(follow(table, address=settings.address_of("deployment"),
                                   service_token=settings.service_token), name="route-watch"),
        asyncio.create_task(follow_experiments(experiments, address=settings.address_of("experiment"),
                                               service_token=settings.service_token), name="experiment-watch"),
    ]
    service = InferenceService(table=table, pool=pool, limiter=limiter, outcomes=outcomes,
                               timeout_s=settings.router_request_timeout_s,
                               max_output_tokens=settings.max_output_tokens,
                               queue_limit=settings.router_queue_per_replica, queue_budget=settings.router_queue_budget,
                               experiments=experiments)
    running = await start_server(
        service="router",
        servicers=[Servicer(inference_pb2_grpc.add_InferenceServiceServicer_to_server,
                            InferenceServicer(service), SERVICE_NAME),
                   Servicer(inference_pb2_grpc.add_OpenAIServiceServicer_to_server,
                            OpenAIServicer(service), OPENAI_SERVICE_NAME)],
        address=f"{settings.host}:{port}",
        service_token=settings.service_token,
        credential_required=settings.service_credential_required,
    )
    return Router(running, table, outcomes, pool, limiter, watchers, experiments)
