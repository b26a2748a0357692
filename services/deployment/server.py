"""Deployment process: migrate, adopt the replicas an earlier run left, serve gRPC."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from llmops.v1 import deployment_pb2, deployment_pb2_grpc
from shared.db import migrated_engine
from shared.server import RunningServer, Servicer, start_server
from shared.settings import Settings

from .catalog import RegistryCatalog
from .runtimes.base import ServingRuntime
from .service import DeploymentService
from .servicer import DeploymentServicer

SERVICE_NAME = deployment_pb2.DESCRIPTOR.services_by_name["DeploymentService"].full_name
MIGRATIONS = Path(__file__).parent / "migrations"


def prepare_database(settings: Settings) -> Engine:
    return migrated_engine(settings.database_url, service="deployment", migrations=MIGRATIONS)


def make_runtime(settings: Settings) -> ServingRuntime:
    if settings.serving_runtime == "kubernetes":
        from .runtimes.kubernetes import KubernetesRuntime
        return KubernetesRuntime(settings)
    from .runtimes.local import LocalRuntime
    return LocalRuntime(settings)


async def start(settings: Settings, *, engine: Engine, runtime: ServingRuntime,
                port: int | None = None) -> tuple[RunningServer, DeploymentService]:
    catalog = RegistryCatalog(f"{settings.host}:{settings.registry_port}")
    service = DeploymentService(engine=engine, catalog=catalog, runtime=runtime,
                                monitor_interval_s=settings.reconcile_interval_s)
    await service.start()
    running = await start_server(
        service="deployment",
        servicers=[Servicer(deployment_pb2_grpc.add_DeploymentServiceServicer_to_server,
                            DeploymentServicer(service), SERVICE_NAME)],
        address=f"{settings.host}:{settings.deployment_port if port is None else port}",
        service_token=settings.service_token,
    )
    return running, service
