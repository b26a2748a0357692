"""Deployment process: migrate, adopt the replicas an earlier run left, serve gRPC."""

from __future__ import annotations

from pathlib import Path

from grpc_health.v1 import health, health_pb2
from sqlalchemy import Engine

from llmops.v1 import deployment_pb2, deployment_pb2_grpc
from shared.db import migrated_engine
from shared.server import RunningServer, Servicer, start_server
from shared.settings import Settings

from .catalog import RegistryCatalog
from .leader import LeaseElector, LeaseTimings
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


def make_elector(settings: Settings) -> LeaseElector | None:
    """With the kubernetes runtime the replicas elect the one that acts; the local runtime acts alone."""
    if settings.serving_runtime != "kubernetes":
        return None
    from kubernetes import client as k8s

    from .runtimes.k8s_names import platform_namespace
    from .runtimes.kubernetes import kubernetes_api_client
    return LeaseElector(k8s.CoordinationV1Api(kubernetes_api_client(settings)), name=settings.leader_lease_name,
                        namespace=platform_namespace(settings), identity=settings.pod_name,
                        timings=LeaseTimings(settings.leader_lease_duration_s, settings.leader_renew_deadline_s,
                                             settings.leader_retry_period_s))


class LeaderReadiness:
    """DeploymentService's health follows leadership (the kubelet's readiness probe asks for that name),
    so its Kubernetes Service sends every call and watch to the leader; the overall health ("", the
    liveness probe's) stays SERVING, so a follower is not restarted."""

    def __init__(self, servicer: health.aio.HealthServicer) -> None:
        self._health = servicer

    async def lead(self) -> None:
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    async def follow(self) -> None:
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)


async def start(settings: Settings, *, engine: Engine, runtime: ServingRuntime, port: int | None = None,
                elector: LeaseElector | None = None) -> tuple[RunningServer, DeploymentService]:
    catalog = RegistryCatalog(settings.address_of("registry"), service_token=settings.service_token)
    elector = elector or make_elector(settings)
    service = DeploymentService(engine=engine, catalog=catalog, runtime=runtime,
                                monitor_interval_s=settings.reconcile_interval_s, elector=elector,
                                environments=settings.environments)
    await service.start()
    running = await start_server(
        service="deployment",
        servicers=[Servicer(deployment_pb2_grpc.add_DeploymentServiceServicer_to_server,
                            DeploymentServicer(service), SERVICE_NAME)],
        address=f"{settings.host}:{settings.deployment_port if port is None else port}",
        service_token=settings.service_token,
        credential_required=settings.service_credential_required,
    )
    if elector is not None:
        await elector.add_listener(LeaderReadiness(running.health))
    return running, service
