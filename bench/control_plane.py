"""The deployment service with many endpoints in its table, for `list endpoints`: python -m
bench.control_plane <sqlite-file> <port> <count>. The service, its database and its gRPC
server are the real ones; the rows are written straight into the tables (10,000 deploys would
start 10,000 Triton replicas), and no controller runs, so no runtime is needed."""

from __future__ import annotations

import asyncio
import sys
import types
import uuid
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))

from sqlmodel import Session  # noqa: E402

from deployment import repository as repo  # noqa: E402
from deployment.domain import ModelSnapshot  # noqa: E402
from deployment.server import SERVICE_NAME, prepare_database  # noqa: E402
from deployment.service import DeploymentService  # noqa: E402
from deployment.servicer import DeploymentServicer  # noqa: E402
from llmops.v1 import deployment_pb2_grpc  # noqa: E402
from shared.server import Servicer, run_until_signalled, start_server  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.timeutil import utcnow  # noqa: E402

MODEL = ModelSnapshot(id=str(uuid.uuid4()), name="bench-model", version="1", type="chat", runtime="echo",
                      artifact_uri="builtin://echo", metadata={})


def fill(engine, count: int) -> None:  # noqa: ANN001
    now = utcnow()
    with Session(engine) as session:
        for i in range(count):
            row = repo.EndpointRow(name=f"endpoint-{i:05d}", route=f"/llm-ops/v1/serve/endpoint-{i:05d}",
                                   environment=("dev", "stg", "prod")[i % 3], model_id=MODEL.id, status="healthy",
                                   revision=1, applied_revision=1, desired_replicas=1, ready_replicas=1,
                                   created_at=now - timedelta(seconds=i), updated_at=now)
            session.add(row)
            session.add(repo.RevisionRow(endpoint_id=row.id, revision=1, model=asdict(MODEL), min_replicas=1,
                                         max_replicas=1, cpu_target=70, reason="deploy", created_by="bench"))
        session.commit()


async def serve(database: Path, port: int, count: int) -> None:
    settings = Settings(database_url=f"sqlite:///{database}", service_token=None)
    engine = prepare_database(settings)
    fill(engine, count)  # before the port opens: the harness waits for the port
    service = DeploymentService(engine=engine, catalog=None, runtime=types.SimpleNamespace(on_change=None))
    running = await start_server(service="deployment", address=f"127.0.0.1:{port}", service_token=None,
                                 servicers=[Servicer(deployment_pb2_grpc.add_DeploymentServiceServicer_to_server,
                                                     DeploymentServicer(service), SERVICE_NAME)])
    await run_until_signalled(running, grace=1.0)  # as the services' own mains


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
