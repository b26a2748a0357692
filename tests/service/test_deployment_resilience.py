"""The deployment service's background work survives errors, and its
in-memory maps stay bounded by what is live."""

from __future__ import annotations

import asyncio
import uuid

import requests

from deployment.events import EndpointEvent, EndpointEvents

from ..helpers import ADMIN, approved_model, assert_envelope, deploy, deploy_body, wait_status


def test_controller_survives_an_unexpected_error_and_converges(gateway, deployment, fake_runtime):
    # Not a RuntimeFailure nor NotFound: e.g. the database or the runtime's API hiccups once.
    fake_runtime.status_errors.append(ConnectionError("runtime API unreachable"))
    ep = assert_envelope(deploy(gateway, deploy_body(approved_model(gateway)["id"])), 200, "success")["data"]
    wait_status(gateway, ep["id"], "healthy", timeout=30)
    assert fake_runtime.status_errors == []  # the error was met, and the controller went on


def test_mutations_of_unknown_endpoints_leave_no_lock_behind(gateway, deployment):
    for _ in range(50):
        r = requests.patch(f"{gateway.api}/serving/endpoints/{uuid.uuid4()}", json={"maxReplicas": 2}, headers=ADMIN)
        assert r.status_code == 404
        r = requests.post(f"{gateway.api}/serving/endpoints/{uuid.uuid4()}/rollback", headers=ADMIN)
        assert r.status_code == 404
    assert len(deployment.service._locks) == 0


def test_deleted_endpoints_leave_no_controller_nor_monitor_state(gateway, deployment, loop_thread):
    model = approved_model(gateway)
    ids = []
    for _ in range(3):
        ep = assert_envelope(deploy(gateway, deploy_body(model["id"])), 200, "success")["data"]
        wait_status(gateway, ep["id"], "healthy")
        ids.append(ep["id"])
    loop_thread.run(deployment.service._monitor.check())
    monitored = set(deployment.service._monitor._last_replicas)
    assert {uuid.UUID(i) for i in ids} <= monitored
    for endpoint_id in ids:
        assert requests.delete(f"{gateway.api}/serving/endpoints/{endpoint_id}", headers=ADMIN).status_code == 200
    loop_thread.run(deployment.service._monitor.check())
    assert not {uuid.UUID(i) for i in ids} & set(deployment.service._monitor._last_replicas)
    assert not {uuid.UUID(i) for i in ids} & set(deployment.service._controllers._controllers)


async def test_a_slow_watcher_holds_one_pending_event_per_endpoint():
    events = EndpointEvents()
    ids = [str(uuid.uuid4()) for _ in range(3)]
    async with events.subscribe() as subscription:
        for _ in range(1000):
            for endpoint_id in ids:
                events.publish(EndpointEvent("upsert", endpoint_id))
        events.publish(EndpointEvent("delete", ids[0]))
        assert subscription.qsize() == 3
        received = [await subscription.get() for _ in range(3)]
        # Oldest change first; the newest event of an endpoint wins.
        assert received == [EndpointEvent("upsert", ids[1]), EndpointEvent("upsert", ids[2]),
                            EndpointEvent("delete", ids[0])]
        waiter = asyncio.create_task(subscription.get())
        await asyncio.sleep(0)
        assert not waiter.done()
        events.publish(EndpointEvent("upsert", ids[1]))
        assert await asyncio.wait_for(waiter, 5) == EndpointEvent("upsert", ids[1])
