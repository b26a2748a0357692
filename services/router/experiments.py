"""Prompt A/B experiments as the router applies them: per endpoint, the experiment in
force (running, or the latest concluded one, whose winner everyone gets), kept in memory
from the experiment service's WatchExperiments stream like the route table, and sticky
assignment of a user to a variant. No request asks the experiment service anything.

An experiment is matched to a route by the id of the endpoint it was created on, not by
name: a new endpoint deployed under a deleted one's name is never taken over by the old
one's experiment, even while the experiment service (which stops that experiment) is down."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from dataclasses import dataclass, field

from pydantic import SecretStr

from llmops.v1 import experiment_pb2, experiment_pb2_grpc

from .watch import follow_watch, internal_call_metadata


def assign_variant(experiment_id: str, user_id: str, allocation: int) -> str:
    """Sticky: the same user gets the same variant of an experiment on every request and on every
    router replica: B when hash(experimentId, userId) mod 100 < allocation."""
    digest = hashlib.sha256(f"{experiment_id}:{user_id}".encode()).digest()
    return "B" if int.from_bytes(digest[:8], "big") % 100 < allocation else "A"


@dataclass(frozen=True)
class Assignment:
    experiment_id: str
    variant: str  # A | B
    template_id: str
    template: str  # the Jinja2 source
    running: bool  # False once concluded: the winner is served and no outcome is recorded


@dataclass(frozen=True)
class ActiveExperiment:
    id: str
    endpoint: str
    endpoint_id: str  # the endpoint it was created on: the only one it applies to
    kind: str  # chat | completion: the requests whose prompt it chooses
    allocation: int
    running: bool
    templates: dict[str, tuple[str, str]]  # variant -> (template id, source)
    winner: str  # the winning variant once concluded

    def assign(self, user_id: str) -> Assignment:
        variant = assign_variant(self.id, user_id, self.allocation) if self.running else self.winner
        template_id, source = self.templates[variant]
        return Assignment(self.id, variant, template_id, source, self.running)


def active_from_proto(active: experiment_pb2.ActiveExperiment) -> ActiveExperiment:
    e = active.experiment
    templates = {"A": (e.template_a_id, active.template_a_content), "B": (e.template_b_id, active.template_b_content)}
    winner = next((v for v, (template_id, _) in templates.items() if template_id == e.winner_template_id), "A")
    return ActiveExperiment(id=e.id, endpoint=e.endpoint, endpoint_id=e.endpoint_id, kind=e.model_type,
                            allocation=e.allocation, running=e.status == "running", templates=templates, winner=winner)


# Right after the router starts, a request waits this long at most for the first snapshot, so that a
# restarted router does not serve its first requests without the experiment running on their endpoint.
SYNC_GRACE_S = 2.0


@dataclass
class ExperimentTable:
    by_endpoint: dict[str, ActiveExperiment] = field(default_factory=dict)  # by endpoint id
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    created: float = field(default_factory=time.monotonic)

    async def wait_synced(self, grace_s: float = SYNC_GRACE_S) -> None:
        """Until the first snapshot, but never past grace_s after the table was made: an experiment
        service that is down at the router's start costs the first requests a wait, not every one."""
        left = self.created + grace_s - time.monotonic()
        if left > 0 and not self.synced.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.synced.wait()

    def assign(self, endpoint_id: str, user_id: str, kind: str) -> Assignment | None:
        """The prompt of a chat or completion request: only an experiment of that kind chooses it."""
        experiment = self.by_endpoint.get(endpoint_id)
        return experiment.assign(user_id) if experiment is not None and experiment.kind == kind else None

    def apply(self, event: experiment_pb2.WatchExperimentsResponse) -> None:
        applied = [active_from_proto(a) for a in event.experiments]
        if event.kind == "snapshot":
            self.by_endpoint = {e.endpoint_id: e for e in applied}
        else:
            self.by_endpoint.update({e.endpoint_id: e for e in applied})
        self.synced.set()


async def follow(table: ExperimentTable, *, address: str, service_token: SecretStr | None = None) -> None:
    """Keep table in step with the experiment service, forever, reconnecting with backoff."""
    metadata = internal_call_metadata(service_token)
    await follow_watch(address, lambda channel: experiment_pb2_grpc.ExperimentServiceStub(channel).WatchExperiments(
        experiment_pb2.WatchExperimentsRequest(), metadata=metadata), table.apply, what="experiment")
