"""Admission by standing queue, CoDel's rule (Nichols and Jacobson, "Controlling Queue Delay",
2012): a replica takes every request while it runs fewer than its slots; a request that would wait
is refused only while the queue has stood above a target for a whole interval and still does.

The router models each replica as a FIFO of the requests it sent there, in dispatch order: the first
`slots` run, the others wait (in Triton's queue, or the model's). Per replica it measures
- the service time S: from the moment a request starts running in this model to its successful end,
  every successful request, exponentially weighted (each sample 0.2); S follows the load (a full batch
  runs each of its requests slower) and never freezes;
- the queueing time w of each request that goes from waiting to running: now - its dispatch.

Target = budget * S; interval = S. A sample w above the target sets the "above since" mark if it is
unset; a sample at or below it, or a queue that empties, clears it. A request that would wait (the
replica has `slots` in flight or more) is refused iff the mark is older than one interval and the
oldest waiting request has waited more than the target by now. No S yet, or budget 0: admitted; the
caller's in-flight limit (slots + router_queue_per_replica) bounds the queue then.

Why it cannot latch: nothing is refused below the slots, nor with nothing waiting; a refusal needs a
request that has waited longer than the target, read on the clock at the decision, not estimated;
and an estimate inflated by a moment of contention only raises the target and the interval (a
larger S), which makes a refusal less likely, while every successful request pulls S back. Only
successful requests teach S: one refused at once by the model is not the replica's service time."""

from __future__ import annotations

from dataclasses import dataclass, field

WEIGHT = 0.2  # of each new sample in the moving average S


@dataclass(eq=False)
class Ticket:
    """One request on a replica: when the router sent it, and when it started running in the model."""

    dispatched: float
    running_since: float | None = None


@dataclass
class _Replica:
    slots: int = 1
    budget: float = 0.0  # in service times; the target of the samples taken until the next request
    in_flight: list[Ticket] = field(default_factory=list)  # in dispatch order
    service_s: float | None = None  # S
    above_since: float | None = None  # when the queueing time last went above the target (None: it did not)

    def oldest_waiting(self) -> Ticket | None:
        return next((t for t in self.in_flight if t.running_since is None), None)

    def advance(self, now: float) -> None:
        """Start the waiting requests that the model now runs (the first `slots` in flight), taking
        their queueing times as samples; clear the mark once nothing waits."""
        for ticket in self.in_flight[:self.slots]:
            if ticket.running_since is not None:
                continue
            ticket.running_since = now
            waited = now - ticket.dispatched
            if self.service_s is None or waited <= self.budget * self.service_s:
                self.above_since = None
            elif self.above_since is None:
                self.above_since = now
        if self.oldest_waiting() is None:
            self.above_since = None


class Admission:
    """Per replica address: the requests in flight as the model runs them, the service time, the
    CoDel mark, and whether one more request is admitted now."""

    def __init__(self) -> None:
        self._replicas: dict[str, _Replica] = {}

    def started(self, address: str, *, slots: int, budget: float, now: float) -> Ticket:
        """A request goes to the replica, which runs `slots` at once under the route's `budget`."""
        replica = self._replicas.setdefault(address, _Replica())
        replica.slots, replica.budget = slots, budget
        ticket = Ticket(dispatched=now)
        replica.in_flight.append(ticket)
        replica.advance(now)
        return ticket

    def finished(self, address: str, ticket: Ticket, *, succeeded: bool, now: float) -> None:
        """A request ended, whether it ran or waited (cancelled in the queue)."""
        replica = self._replicas.get(address)
        if replica is None or ticket not in replica.in_flight:  # forgotten meanwhile
            return
        replica.in_flight.remove(ticket)
        if succeeded and ticket.running_since is not None:
            sample = now - ticket.running_since
            replica.service_s = sample if replica.service_s is None else replica.service_s + WEIGHT * (
                sample - replica.service_s)
        replica.advance(now)

    def admits(self, address: str, *, slots: int, budget: float, now: float) -> bool:
        """Whether a request sent now to a replica that runs `slots` at once is admitted under
        `budget` (in service times; 0: no check)."""
        replica = self._replicas.get(address)
        if replica is None or len(replica.in_flight) < slots or budget <= 0 or replica.service_s is None:
            return True
        oldest = replica.oldest_waiting()
        if oldest is None or replica.above_since is None:
            return True
        stood = now - replica.above_since > replica.service_s
        return not (stood and now - oldest.dispatched > budget * replica.service_s)

    def forget(self, address: str) -> None:
        """The replica left the route table: what was learned of it goes too."""
        self._replicas.pop(address, None)
