"""Experiment process: migrate, then serve gRPC, follow the deployment service's
endpoint watch (to stop the experiments of deleted endpoints) and read the outcome
stream when Redis is configured, until SIGTERM."""

from __future__ import annotations

import asyncio
import socket
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from llmops.v1 import experiment_pb2, experiment_pb2_grpc
from shared.db import migrated_engine
from shared.observability import configure_logging, serve_metrics
from shared.server import RunningServer, Servicer, run_until_signalled, start_server
from shared.settings import Settings, get_settings

from .catalog import Catalog
from .ingest import RedisOutcomeConsumer
from .service import ExperimentService, StatisticsSettings
from .servicer import ExperimentServicer

SERVICE_NAME = experiment_pb2.DESCRIPTOR.services_by_name["ExperimentService"].full_name
MIGRATIONS = Path(__file__).parent / "migrations"


def prepare_database(settings: Settings) -> Engine:
    return migrated_engine(settings.database_url, service="experiment", migrations=MIGRATIONS)


@dataclass
class RunningExperimentService:
    running: RunningServer
    service: ExperimentService
    catalog: Catalog
    consumer: RedisOutcomeConsumer | None
    consuming: asyncio.Task | None
    following: asyncio.Task

    async def stop(self, grace: float) -> None:
        await self.running.stop(grace)
        await self.close()

    async def close(self) -> None:
        """What runs beside the server: the endpoint watch, the stream consumer and the clients of other services."""
        self.following.cancel()
        with suppress(asyncio.CancelledError):
            await self.following
        if self.consuming is not None:
            self.consuming.cancel()
            with suppress(asyncio.CancelledError):
                await self.consuming
            await self.consumer.close()
        await self.catalog.close()


async def start(settings: Settings, *, engine: Engine, port: int | None = None) -> RunningExperimentService:
    catalog = Catalog(registry_address=settings.address_of("registry"),
                      deployment_address=settings.address_of("deployment"),
                      environment=settings.environment, service_token=settings.service_token)
    service = ExperimentService(engine, catalog, statistics=StatisticsSettings(
        alpha=settings.experiment_alpha, min_samples=settings.experiment_min_samples,
        tuning=settings.experiment_sequential_tuning))
    running = await start_server(
        service="experiment",
        servicers=[Servicer(experiment_pb2_grpc.add_ExperimentServiceServicer_to_server,
                            ExperimentServicer(service), SERVICE_NAME)],
        address=f"{settings.host}:{settings.experiment_port if port is None else port}",
        service_token=settings.service_token,
        credential_required=settings.service_credential_required,
    )
    consumer = consuming = None
    if settings.redis_url:
        # A stable name per host and port: a restarted service reads what it had left unacknowledged.
        consumer = RedisOutcomeConsumer(settings.redis_url, consumer=f"{socket.gethostname()}:{running.port}",
                                        ingest=service.ingest)
        consuming = asyncio.create_task(consumer.run(), name="outcome-stream")
    following = asyncio.create_task(service.follow_endpoints(), name="endpoint-watch")
    return RunningExperimentService(running, service, catalog, consumer, consuming, following)


async def main() -> None:
    settings = get_settings()
    configure_logging(level=settings.log_level, json=settings.log_json)
    serve_metrics(settings.metrics_port, settings.metrics_address)
    engine = prepare_database(settings)
    started = await start(settings, engine=engine)

    async def close() -> None:
        await started.close()
        engine.dispose()

    await run_until_signalled(started.running, grace=settings.shutdown_grace_s, on_stop=close)
