"""Router process: follow the route table, serve inference over gRPC."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from llmops.v1 import inference_pb2, inference_pb2_grpc
from shared.server import RunningServer, Servicer, start_server
from shared.settings import Settings

from .backends import ReplicaPool
from .limits import RateLimiter
from .outcomes import OutcomeSink
from .routes import RouteTable, follow
from .service import InferenceService
from .servicer import InferenceServicer

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


@dataclass
class Router:
    running: RunningServer
    table: RouteTable
    outcomes: OutcomeSink
    pool: ReplicaPool
    limiter: RateLimiter
    watcher: asyncio.Task

    async def close(self) -> None:
        self.watcher.cancel()
        await self.outcomes.close()
        await self.limiter.close()
        await self.pool.close()


async def start(settings: Settings, *, port: int | None = None) -> Router:
    table, pool = RouteTable(), ReplicaPool()
    pool.follow_table(table)
    limiter = RateLimiter(settings.rate_limit_per_minute, settings.redis_url)
    outcomes = OutcomeSink(settings.redis_url)
    outcomes.start()
    watcher = asyncio.create_task(follow(table, address=f"{settings.host}:{settings.deployment_port}",
                                         environment=settings.environment, service_token=settings.service_token),
                                  name="route-watch")
    service = InferenceService(table=table, pool=pool, limiter=limiter, outcomes=outcomes,
                               timeout_s=settings.router_request_timeout_s,
                               max_output_tokens=settings.max_output_tokens,
                               queue_limit=settings.router_queue_per_replica)
    running = await start_server(
        service="router",
        servicers=[Servicer(inference_pb2_grpc.add_InferenceServiceServicer_to_server,
                            InferenceServicer(service), SERVICE_NAME)],
        address=f"{settings.host}:{settings.router_port if port is None else port}",
        service_token=settings.service_token,
    )
    return Router(running, table, outcomes, pool, limiter, watcher)
