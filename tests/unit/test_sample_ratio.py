"""The sample-ratio-mismatch check counts distinct users, the unit of assignment, not requests.

Assignment is sticky per user, so a user who sends k requests is one draw of the split, not k.
Counted per request, a healthy experiment whose 50 users send 10 requests each is flagged about
one time in three (the chi-square statistic grows k-fold), and held at "keep running".
No process, no database: users are assigned by the router's own function.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import numpy as np
import pytest

from experiment.converters import experiment_to_proto
from experiment.domain import Experiment, ExperimentStatus
from experiment.statistics import Observations, analyze, sample_ratio
from router.experiments import assign_variant

SRM_ALPHA = 0.001  # analyze's default: a mismatch below p = 0.001


def observations(variant: str, requests_by_user: dict[str, int], *, rng: np.random.Generator,
                 median_ms: float = 800.0) -> Observations:
    """Each user's requests, with lognormal latencies and no errors."""
    user_id = np.array([user for user, k in requests_by_user.items() for _ in range(k)], dtype=str)
    n = user_id.size
    return Observations(variant=variant, template_id=f"template-{variant}",
                        latency_ms=rng.lognormal(np.log(median_ms), 0.5, n), completion_tokens=np.full(n, 100.0),
                        error=np.zeros(n, dtype=bool), user_id=user_id, feedback=np.array([]))


def sticky_traffic(experiment_id: str, users: int, requests_each: int, allocation: int, *,
                   rng: np.random.Generator) -> tuple[Observations, Observations]:
    """`users` users, each assigned by the router's hash and sending `requests_each` requests."""
    by_variant: dict[str, dict[str, int]] = {"A": {}, "B": {}}
    for i in range(users):
        user = f"user-{i}"
        by_variant[assign_variant(experiment_id, user, allocation)][user] = requests_each
    return observations("A", by_variant["A"], rng=rng), observations("B", by_variant["B"], rng=rng)


# An experiment id for which the router puts 30 of user-0..user-49 on B at allocation 50: a split
# a fair coin gives about once in six experiments (p = 0.16), and ten requests a user make it
# 300 against 200 requests, which a per-request check calls a mismatch (p < 0.0001).
THIRTY_ON_B = "aab354cb-db88-5f6f-8b3c-b24c5e9aa172"


def test_fifty_users_of_ten_requests_each_are_no_mismatch():
    a, b = sticky_traffic(THIRTY_ON_B, users=50, requests_each=10, allocation=50, rng=np.random.default_rng(1))

    analysis = analyze(a, b, metric="latency_ms", allocation=50)

    assert (analysis.a.users, analysis.b.users) == (20, 30)  # what the router's hash did with these users
    assert (analysis.a.requests, analysis.b.requests) == (200, 300)  # each user counted once, not ten times
    ratio = analysis.sample_ratio
    assert (ratio.a_users, ratio.b_users, ratio.observed_b_share) == (20, 30, 0.6)
    assert ratio.p_value == pytest.approx(0.1573, abs=1e-4)  # chi-square of 20/30 against 25/25
    assert not ratio.mismatch
    assert "mismatch" not in analysis.reason
    assert analysis.recommendation == "keep running" and "No difference detected yet" in analysis.reason


def test_healthy_experiments_of_repeat_users_are_flagged_about_as_often_as_srm_alpha_says():
    """300 A/A experiments of 50 users with 10 requests each: the check may flag 0.1% of them (for
    50 users the exact binomial rate is 0.094%); counted per request, it flags about a third."""
    rng = np.random.default_rng(2)
    flagged = 0
    for i in range(300):
        experiment_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"experiment-{i}"))
        a, b = sticky_traffic(experiment_id, users=50, requests_each=10, allocation=50, rng=rng)
        flagged += analyze(a, b, metric="latency_ms", allocation=50).sample_ratio.mismatch
    assert flagged <= 3, f"{flagged} of 300 healthy experiments flagged"


def test_a_real_60_40_split_of_users_is_flagged_even_when_requests_split_evenly():
    # 600 users on A, 400 on B: B's users send three requests each, A's two, so the requests split
    # 1,200 / 1,200 and only the users show that B gets too few of them.
    rng = np.random.default_rng(3)
    a = observations("A", {f"a-user-{i}": 2 for i in range(600)}, rng=rng)
    b = observations("B", {f"b-user-{i}": 3 for i in range(400)}, rng=rng, median_ms=800 * 0.8)

    analysis = analyze(a, b, metric="latency_ms", allocation=50)

    assert (analysis.a.requests, analysis.b.requests) == (1200, 1200)
    ratio = analysis.sample_ratio
    assert (ratio.a_users, ratio.b_users, ratio.observed_b_share) == (600, 400, 0.4)
    assert ratio.mismatch and ratio.p_value < 1e-9
    assert analysis.comparison.significant  # B would win on latency, were the split right
    assert analysis.recommendation == "keep running"
    assert analysis.reason.startswith("Sample-ratio mismatch: B got 40.0% of the users (400 of 1,000) but should "
                                      "get 50%"), analysis.reason


def test_a_user_counts_once_however_many_requests():
    rng = np.random.default_rng(4)
    a = observations("A", {"ann": 1, "bob": 50}, rng=rng)
    b = observations("B", {"cid": 7}, rng=rng)

    analysis = analyze(a, b, metric="latency_ms", allocation=50)

    assert (analysis.a.users, analysis.a.requests, analysis.b.users, analysis.b.requests) == (2, 51, 1, 7)
    assert (analysis.sample_ratio.a_users, analysis.sample_ratio.b_users) == (2, 1)


@pytest.mark.parametrize("a_users,b_users,allocation,mismatch", [
    (805, 195, 20, False),
    (600, 400, 50, True),
    (20, 30, 50, False),
    (200, 300, 50, True),  # the same shares with ten times the users is real evidence
    (100, 0, 0, False),
    (100, 1, 0, True),  # a user on B, which gets nobody
    (0, 0, 50, False),
])
def test_sample_ratio_tests_the_users_split(a_users, b_users, allocation, mismatch):
    ratio = sample_ratio(a_users, b_users, allocation=allocation, srm_alpha=SRM_ALPHA)
    assert ratio.mismatch is mismatch
    assert (ratio.a_users, ratio.b_users, ratio.expected_b_share) == (a_users, b_users, allocation / 100)
    assert ratio.observed_b_share == (b_users / (a_users + b_users) if a_users + b_users else None)


def test_the_variant_stats_say_how_many_users():
    rng = np.random.default_rng(5)
    a, b = sticky_traffic(THIRTY_ON_B, users=50, requests_each=10, allocation=50, rng=rng)
    at = datetime(2025, 1, 15, 10, 30, tzinfo=timezone.utc)
    experiment = Experiment(
        id=uuid.UUID(THIRTY_ON_B), template_a_id="template-A", template_b_id="template-B", template_a_content="a",
        template_b_content="b", allocation=50, metric="latency_ms", endpoint="chat", endpoint_id="e1",
        model_type="chat", status=ExperimentStatus.RUNNING, winner_template_id="", notes="", created_by="rita",
        created_at=at, concluded_by="", concluded_at=None)

    message = experiment_to_proto(experiment, analyze(a, b, metric="latency_ms", allocation=50))

    assert [(v.variant, v.users, v.count) for v in message.variants] == [("A", 20, 200), ("B", 30, 300)]
    assert message.significance.observed_b_share == 0.6
    assert not message.significance.sample_ratio_mismatch
