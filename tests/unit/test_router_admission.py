"""The router's admission by expected wait (services/router/admission.py), with the times given:
what it learns from the requests it sees, and when it sheds."""

from __future__ import annotations

from router.admission import Admission

A = "127.0.0.1:9001"


def learned(service_s: float, parallel: int) -> Admission:
    """An admission that saw parallel + 1 requests start together on the idle replica A, the first
    end service_s later and the others one every service_s / parallel after it: a replica that
    runs `parallel` at a time."""
    admission, count = Admission(), parallel + 1
    for others in range(count):
        admission.started(A, in_flight=others, now=0.0)
    for done in range(count):
        admission.finished(A, began=0.0, found_idle=done == 0, succeeded=True, in_flight=count - done - 1,
                           now=service_s + done * service_s / parallel)
    return admission


def busy_for(admission: Admission, seconds: float, in_flight: int) -> float:
    """The replica goes busy at 100 s with in_flight requests; the time `seconds` later."""
    for others in range(in_flight):
        admission.started(A, in_flight=others, now=100.0)
    return 100.0 + seconds


def test_a_one_at_a_time_replica_lets_one_request_wait_behind_the_one_running():
    admission = learned(service_s=1.0, parallel=1)
    now = busy_for(admission, 5.0, in_flight=2)
    assert admission.expected_wait_s(A, 1) == 0.5 and admission.admits(A, in_flight=1, budget=1, now=now)
    assert admission.expected_wait_s(A, 2) == 1.5 and not admission.admits(A, in_flight=2, budget=1, now=now)
    assert admission.admits(A, in_flight=2, budget=2, now=now)  # a model's own, larger budget
    assert admission.admits(A, in_flight=7, budget=0, now=now)  # 0: no bound


def test_a_replica_that_runs_four_at_a_time_takes_eight_with_a_budget_of_one():
    admission = learned(service_s=1.0, parallel=4)
    now = busy_for(admission, 5.0, in_flight=8)
    assert admission.expected_wait_s(A, 3) == 0.0  # a free slot: no wait
    assert admission.admits(A, in_flight=7, budget=1, now=now)
    assert not admission.admits(A, in_flight=8, budget=1, now=now)


def test_a_burst_on_an_idle_replica_is_taken_whole():
    admission = learned(service_s=1.0, parallel=1)
    now = busy_for(admission, 0.5, in_flight=6)  # busy for half a service time
    assert admission.expected_wait_s(A, 6) > 1.0 and admission.admits(A, in_flight=6, budget=1, now=now)
    assert not admission.admits(A, in_flight=6, budget=1, now=now + 1.0)  # the queue stood a service time


def test_what_it_has_not_measured_it_does_not_hold_against_a_replica():
    admission = Admission()
    now = busy_for(admission, 5.0, in_flight=7)
    assert admission.admits(A, in_flight=7, budget=1, now=now)  # no service time yet
    admission.finished(A, began=100.0, found_idle=True, succeeded=True, in_flight=6, now=101.0)
    assert admission.expected_wait_s(A, 6) == 0.0  # a service time, no completion interval yet
    assert admission.admits(A, in_flight=6, budget=1, now=now)


def test_a_failed_request_teaches_nothing():
    admission = learned(service_s=1.0, parallel=1)
    admission.started(A, in_flight=0, now=10.0)
    admission.started(A, in_flight=1, now=10.0)
    # Refused by the model in a millisecond: neither a service time nor a completion interval.
    admission.finished(A, began=10.0, found_idle=True, succeeded=False, in_flight=1, now=10.001)
    admission.finished(A, began=10.0, found_idle=False, succeeded=False, in_flight=0, now=10.002)
    assert admission.expected_wait_s(A, 1) == 0.5  # S and I as they were


def test_a_replica_that_left_the_table_is_forgotten():
    admission = learned(service_s=1.0, parallel=2)
    admission.forget(A)
    now = busy_for(admission, 5.0, in_flight=8)
    assert admission.expected_wait_s(A, 8) == 0.0 and admission.admits(A, in_flight=8, budget=1, now=now)
