"""A serving runtime double for control-plane tests (no Triton): replicas are
ready at once, and a test can make the next apply fail."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from deployment.runtimes.base import Health, ReplicaState, RuntimeFailure, RuntimeStatus, ServingSpec


class FakeRuntime:
    def __init__(self) -> None:
        self.specs: dict[str, ServingSpec] = {}
        self.applied: list[tuple[str, int]] = []
        # Endpoint name -> the failure its next apply raises. By name, not "the next apply": one runtime
        # serves every test of a database, and another endpoint's controller may apply first.
        self.fail_next: dict[str, str] = {}
        self.status_errors: list[Exception] = []  # raised by the next status() calls, one each
        self.apply_delay_s = 0.0
        self.on_change: Callable[[str], None] | None = None

    async def start(self) -> None:
        pass

    async def apply(self, spec: ServingSpec) -> None:
        await asyncio.sleep(self.apply_delay_s)
        if spec.name in self.fail_next:
            raise RuntimeFailure(self.fail_next.pop(spec.name))
        self.specs[spec.endpoint_id] = spec
        self.applied.append((spec.endpoint_id, spec.revision))

    async def remove(self, endpoint_id: str) -> None:
        self.specs.pop(endpoint_id, None)

    async def status(self, endpoint_id: str) -> RuntimeStatus:
        if self.status_errors:
            raise self.status_errors.pop(0)
        spec = self.specs.get(endpoint_id)
        if spec is None:
            return RuntimeStatus(health=Health.DEPLOYING, reason="", desired_replicas=0, ready_replicas=0)
        replicas = tuple(ReplicaState(id=f"fake-{i}", grpc_address=f"127.0.0.1:{9000 + i}", ready=True,
                                      revision=spec.revision) for i in range(spec.min_replicas))
        return RuntimeStatus(health=Health.HEALTHY, reason="", desired_replicas=spec.min_replicas,
                             ready_replicas=spec.min_replicas, triton_model="llm", replicas=replicas)

    async def close(self) -> None:
        pass
