"""Admission by expected wait: a replica that has been busy for a while takes a request only
while the wait expected ahead of it stays within a budget, so that under overload the
admitted requests keep close to their unloaded latency and the rest are answered 503 at
once, instead of every request waiting out a growing queue.

What the router measures, per replica, from the requests it sends:
- the service time S: the latency of a request that found the replica idle (nothing else in
  flight from this router), so no queue is in it; under sustained overload no request finds
  it idle, and S stays what it was unloaded;
- the completion interval I: the time between two completions while the replica stayed busy.

A replica that finishes one request every I runs about P = S / I at a time (Little's law). A
request that arrives with N >= P in flight waits for N - P + 1 completions, the first of them
half an interval away on average: about (N + 0.5 - P) * I = (N + 0.5) * I - S. It is admitted
while that is at most `budget` * S. For a replica that runs one at a time, budget 1 lets one
request wait behind the one running (0.5 S expected) and not two (1.5 S): the admitted
latency stays within 2 S, and the decision is half an interval away from the noise of I.

Bursts are not overload: a replica that went from idle to busy less than S ago takes whatever
comes (up to the router's in-flight limit per replica), as CoDel tolerates a queue that does
not stand longer than its interval. Only successful requests teach the estimates: a request
refused at once by the model is not the replica's service time. Estimates are exponentially
weighted (each sample 0.2), so a model whose requests get longer moves S within a few idle
starts."""

from __future__ import annotations

from dataclasses import dataclass

WEIGHT = 0.2  # of each new sample in the moving averages


@dataclass
class _Replica:
    service_s: float | None = None  # S
    interval_s: float | None = None  # I
    busy_since: float = 0.0  # when it last went from idle to busy
    last_completion: float | None = None  # during the current busy period


def _average(current: float | None, sample: float) -> float:
    return sample if current is None else current + WEIGHT * (sample - current)


class Admission:
    """Per replica address: the service time and completion interval, and whether one more
    request is admitted now within a budget (in service times; 0: no check); the caller counts
    what is in flight.

    Conservative at one moment: I is measured at the load the replica had. A replica that runs
    several at a time and gets a step of new load is held to about twice the concurrency it
    had, and that doubles each service time while the load lasts (as TCP's slow start)."""

    def __init__(self) -> None:
        self._replicas: dict[str, _Replica] = {}

    def started(self, address: str, *, in_flight: int, now: float) -> None:
        """A request goes to the replica, which had `in_flight` others."""
        replica = self._replicas.setdefault(address, _Replica())
        if not in_flight:
            replica.busy_since, replica.last_completion = now, None

    def finished(self, address: str, *, began: float, found_idle: bool, succeeded: bool, in_flight: int,
                 now: float) -> None:
        """A request ended; `in_flight` others are still on the replica."""
        replica = self._replicas.get(address)
        if replica is None:  # forgotten meanwhile
            return
        if succeeded:
            if found_idle:
                replica.service_s = _average(replica.service_s, now - began)
            if replica.last_completion is not None:
                replica.interval_s = _average(replica.interval_s, now - replica.last_completion)
        replica.last_completion = now if in_flight else None

    def expected_wait_s(self, address: str, in_flight: int) -> float:
        """How long a request sent now is expected to wait for the replica (0 when unknown)."""
        replica = self._replicas.get(address)
        if replica is None or replica.service_s is None or replica.interval_s is None:
            return 0.0
        return max(0.0, (in_flight + 0.5) * replica.interval_s - replica.service_s)

    def admits(self, address: str, *, in_flight: int, budget: float, now: float) -> bool:
        replica = self._replicas.get(address)
        if budget <= 0 or not in_flight or replica is None or replica.service_s is None:
            return True
        if now - replica.busy_since < replica.service_s:
            return True  # a burst, not (yet) a standing queue
        return self.expected_wait_s(address, in_flight) <= budget * replica.service_s

    def forget(self, address: str) -> None:
        """The replica left the route table: what was learned of it goes too."""
        self._replicas.pop(address, None)
