"""Registry process: migrate, then serve gRPC until SIGTERM."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from llmops.v1 import registry_pb2, registry_pb2_grpc
from shared.db import migrated_engine
from shared.observability import configure_logging, serve_metrics
from shared.server import RunningServer, Servicer, run_until_signalled, start_server
from shared.settings import Settings, get_settings

from .service import RegistryService
from .servicer import RegistryServicer

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
MIGRATIONS = Path(__file__).parent / "migrations"


def prepare_database(settings: Settings) -> Engine:
    return migrated_engine(settings.database_url, service="registry", migrations=MIGRATIONS)


async def start(settings: Settings, *, engine: Engine, port: int | None = None) -> RunningServer:
    servicer = RegistryServicer(RegistryService(engine))
    return await start_server(
        service="registry",
        servicers=[Servicer(registry_pb2_grpc.add_RegistryServiceServicer_to_server, servicer, SERVICE_NAME)],
        address=f"{settings.host}:{settings.registry_port if port is None else port}",
        service_token=settings.service_token,
        credential_required=settings.service_credential_required,
    )


async def main() -> None:
    settings = get_settings()
    configure_logging(level=settings.log_level, json=settings.log_json)
    serve_metrics(settings.metrics_port, settings.metrics_address)
    engine = prepare_database(settings)
    running = await start(settings, engine=engine)
    await run_until_signalled(running, grace=settings.shutdown_grace_s, on_stop=engine.dispose)


