from __future__ import annotations

from llmops.v1 import deployment_pb2, experiment_pb2, inference_pb2, registry_pb2
from shared.server import RunningServer, start_server
from shared.settings import Settings

PUBLIC_SERVICES = [
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (registry_pb2, "RegistryService"),
        (deployment_pb2, "DeploymentService"),
        (experiment_pb2, "ExperimentService"),
        (inference_pb2, "InferenceService"),
    )
]


async def start(settings: Settings, *, port: int | None = None) -> RunningServer:
    return await start_server(
        service="reflection", servicers=[], reflected=PUBLIC_SERVICES,
        address=f"{settings.host}:{settings.reflection_port if port is None else port}",
    )
