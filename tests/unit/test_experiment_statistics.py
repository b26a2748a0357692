"""The statistics of prompt A/B experiments: anytime-valid decisions, guardrail, split check, edge cases.

The A/A simulation is the reason the module exists: it peeks at every experiment 50 times, as
people reloading the status page do, and shows that the sequential test keeps its false-positive
rate under alpha while the naive fixed-horizon t-test, peeked at the same moments, does not.
Run with -s to see both rates.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
from gbstats.frequentist.tests import SequentialConfig, SequentialTwoSidedTTest
from gbstats.models.statistics import SampleMeanStatistic
from scipy import stats

from experiment.statistics import (
    METRICS, Analysis, Observations, analyze, compare_means, compare_proportions, sample_ratio,
)

# A warning from numpy or scipy is a bug here. An unraisable exception is not this module's: it is
# another test's garbage (a ResourceWarning from a __del__) that a collection during these tests met.
pytestmark = pytest.mark.filterwarnings("error", "default::pytest.PytestUnraisableExceptionWarning")

ALPHA = 0.05
MIN_SAMPLES = 30


def observations(variant: str, latency: np.ndarray, *, error: np.ndarray | None = None,
                 tokens: np.ndarray | None = None, feedback: np.ndarray | None = None,
                 user_id: np.ndarray | None = None) -> Observations:
    """By default every request comes from a user of its own (ints: the A/A simulation makes 25,000)."""
    n = len(latency)
    return Observations(
        variant=variant, template_id=f"template-{variant}", latency_ms=np.asarray(latency, dtype=float),
        completion_tokens=np.full(n, 100.0) if tokens is None else np.asarray(tokens, dtype=float),
        error=np.zeros(n, dtype=bool) if error is None else np.asarray(error, dtype=bool),
        user_id=np.arange(n) if user_id is None else np.asarray(user_id),
        feedback=np.array([]) if feedback is None else np.asarray(feedback, dtype=float))


def exact_errors(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """n requests of which exactly `count` failed, in random order."""
    error = np.zeros(n, dtype=bool)
    error[:count] = True
    return rng.permutation(error)


def latencies(rng: np.random.Generator, n: int, median_ms: float = 800.0) -> np.ndarray:
    return rng.lognormal(np.log(median_ms), 0.5, n)


def assert_all_finite(value: object, path: str = "analysis") -> None:
    """Every float in the result is a finite Python float, everything else a plain type protobuf takes."""
    if dataclasses.is_dataclass(value):
        for field in dataclasses.fields(value):
            assert_all_finite(getattr(value, field.name), f"{path}.{field.name}")
    elif type(value) is float:
        assert math.isfinite(value), f"{path} = {value}"
    else:
        assert value is None or type(value) in (int, bool, str), f"{path} is a {type(value).__name__}"


# --- The A/A simulation -----------------------------------------------------------------------

SIMULATIONS = 200
OBSERVATIONS = 1_000  # per simulated experiment, split 50/50 at random
CHECK_EVERY = 20


def test_peeking_at_an_aa_experiment_keeps_the_false_positive_rate_under_alpha():
    rng = np.random.default_rng(20240611)
    sequential_false_positives = naive_false_positives = 0
    for _ in range(SIMULATIONS):
        to_b = rng.random(OBSERVATIONS) < 0.5
        latency = latencies(rng, OBSERVATIONS)
        error = rng.random(OBSERVATIONS) < 0.02  # the guardrail is under the null too
        sequential_hit = naive_hit = False
        for seen in range(CHECK_EVERY, OBSERVATIONS + 1, CHECK_EVERY):
            in_b, lat, err = to_b[:seen], latency[:seen], error[:seen]
            analysis = analyze(observations("A", lat[~in_b], error=err[~in_b]),
                               observations("B", lat[in_b], error=err[in_b]),
                               metric="latency_ms", allocation=50, alpha=ALPHA, min_samples=MIN_SAMPLES)
            sequential_hit |= analysis.recommendation in ("A", "B")
            naive_hit |= _naive_welch_says_different(analysis)
        sequential_false_positives += sequential_hit
        naive_false_positives += naive_hit

    sequential_rate = sequential_false_positives / SIMULATIONS
    naive_rate = naive_false_positives / SIMULATIONS
    checks = OBSERVATIONS // CHECK_EVERY
    print(f"\nA/A, {SIMULATIONS} experiments x {OBSERVATIONS} observations, {checks} checks each: "
          f"false-positive rate sequential {sequential_rate:.1%}, naive peeked Welch t-test {naive_rate:.1%}")
    assert sequential_rate <= ALPHA
    assert naive_rate > ALPHA
    assert naive_rate >= 3 * sequential_rate


def _naive_welch_says_different(analysis: Analysis) -> bool:
    """The fixed-horizon p-value the same analysis reports, read as if it could be peeked at."""
    comparison = analysis.comparison
    return (min(analysis.a.samples, analysis.b.samples) >= MIN_SAMPLES and comparison is not None
            and comparison.p_value is not None and comparison.p_value < ALPHA)


# --- Known differences are detected -----------------------------------------------------------

def test_a_faster_challenger_wins_on_latency():
    rng = np.random.default_rng(1)
    a = observations("A", latencies(rng, 1000))
    b = observations("B", latencies(rng, 1000, median_ms=800 * 0.8))

    analysis = analyze(a, b, metric="latency_ms", allocation=50)

    assert analysis.recommendation == "B"
    comparison = analysis.comparison
    assert comparison.significant and comparison.difference < 0
    # gbstats computes B - A with the control first: the interval lies below zero.
    assert comparison.sequential_ci_low < comparison.difference < comparison.sequential_ci_high < 0
    # Anytime validity costs width: the sequential interval holds the fixed-horizon one.
    assert comparison.sequential_ci_low < comparison.ci_low < comparison.ci_high < comparison.sequential_ci_high
    assert "B is better on latency_ms" in analysis.reason and "anytime-valid interval" in analysis.reason
    assert_all_finite(analysis)


def test_fewer_completion_tokens_win():
    rng = np.random.default_rng(2)
    n = 1000
    a = observations("A", latencies(rng, n), tokens=rng.poisson(200, n))
    b = observations("B", latencies(rng, n), tokens=rng.poisson(180, n))

    analysis = analyze(a, b, metric="completion_tokens", allocation=50)

    assert analysis.recommendation == "B"
    assert analysis.comparison.difference < 0


def test_higher_feedback_wins():
    rng = np.random.default_rng(3)
    a = observations("A", latencies(rng, 1000), feedback=rng.normal(3.5, 1.0, 600))
    b = observations("B", latencies(rng, 1000), feedback=rng.normal(3.9, 1.0, 600))

    analysis = analyze(a, b, metric="feedback_score", allocation=50)

    assert analysis.recommendation == "B"
    assert analysis.a.samples == analysis.a.feedback_count == 600
    assert analysis.comparison.sequential_ci_low > 0


def test_lower_feedback_loses():
    rng = np.random.default_rng(4)
    a = observations("A", latencies(rng, 1000), feedback=rng.normal(3.9, 1.0, 600))
    b = observations("B", latencies(rng, 1000), feedback=rng.normal(3.5, 1.0, 600))

    assert analyze(a, b, metric="feedback_score", allocation=50).recommendation == "A"


def test_a_challenger_with_more_errors_loses_on_error_rate():
    rng = np.random.default_rng(5)
    n = 2000
    a = observations("A", latencies(rng, n), error=exact_errors(rng, n, 40))
    b = observations("B", latencies(rng, n), error=exact_errors(rng, n, 160))

    analysis = analyze(a, b, metric="error_rate", allocation=50)

    assert analysis.recommendation == "A"
    assert analysis.comparison.test == "two_proportion_z"
    assert analysis.comparison.difference == pytest.approx(0.06)
    assert analysis.comparison.significant
    assert "from 2.0% to 8.0%" in analysis.reason


# --- The split, the guardrail, too little data ------------------------------------------------

def test_a_skewed_split_blocks_the_recommendation():
    rng = np.random.default_rng(6)
    a = observations("A", latencies(rng, 600))
    b = observations("B", latencies(rng, 400, median_ms=800 * 0.8))

    analysis = analyze(a, b, metric="latency_ms", allocation=50)

    assert analysis.sample_ratio.mismatch
    assert analysis.sample_ratio.p_value < 0.001
    assert analysis.sample_ratio.observed_b_share == pytest.approx(0.4)
    assert (analysis.sample_ratio.a_users, analysis.sample_ratio.b_users) == (600, 400)
    assert analysis.comparison.significant  # B would win, were the split right
    assert analysis.recommendation == "keep running"
    assert "40.0% of the users (400 of 1,000)" in analysis.reason and "50%" in analysis.reason \
        and "split" in analysis.reason


def test_a_split_that_matches_the_allocation_is_no_mismatch():
    ratio = sample_ratio(805, 195, allocation=20, srm_alpha=0.001)
    assert not ratio.mismatch and ratio.expected_b_share == 0.2 and ratio.observed_b_share == 0.195


def test_the_error_rate_guardrail_beats_a_faster_challenger():
    rng = np.random.default_rng(7)
    n = 1000
    a = observations("A", latencies(rng, n), error=exact_errors(rng, n, 10))
    b = observations("B", latencies(rng, n, median_ms=800 * 0.8), error=exact_errors(rng, n, 150))

    analysis = analyze(a, b, metric="latency_ms", allocation=50)

    assert analysis.comparison.significant and analysis.comparison.difference < 0  # B is faster
    assert analysis.guardrail_breached
    assert analysis.recommendation == "A"
    assert "B raises the error rate from 1.0% to 15.0%" in analysis.reason


def test_the_guardrail_works_when_the_control_never_fails():
    # gbstats refuses a control with a 0% rate (zero variance, zero baseline); the module does not.
    rng = np.random.default_rng(8)
    n = 1000
    a = observations("A", latencies(rng, n))
    b = observations("B", latencies(rng, n), error=exact_errors(rng, n, 80))

    analysis = analyze(a, b, metric="latency_ms", allocation=50)

    assert analysis.guardrail.sequential_p_value < ALPHA
    assert analysis.guardrail.sequential_ci_low > 0
    assert analysis.guardrail_breached and analysis.recommendation == "A"


def test_a_challenger_that_fails_almost_every_request_loses_on_the_guardrail():
    # Too few successful requests of B to compare latency: the guardrail decides before the sample count.
    rng = np.random.default_rng(9)
    n = 200
    a = observations("A", latencies(rng, n))
    b = observations("B", latencies(rng, n), error=exact_errors(rng, n, n - 10))

    analysis = analyze(a, b, metric="latency_ms", allocation=50)

    assert analysis.b.samples == 10 and analysis.guardrail_breached
    assert analysis.recommendation == "A" and "B raises the error rate" in analysis.reason


def test_too_little_data_says_how_much_there_is_and_how_much_is_needed():
    rng = np.random.default_rng(9)
    a = observations("A", latencies(rng, 10))
    b = observations("B", latencies(rng, 12, median_ms=400))

    analysis = analyze(a, b, metric="latency_ms", allocation=50)

    assert analysis.recommendation == "keep running"
    assert "10" in analysis.reason and "12" in analysis.reason and "30" in analysis.reason


def test_no_difference_says_keep_running_with_the_interval():
    rng = np.random.default_rng(10)
    analysis = analyze(observations("A", latencies(rng, 300)), observations("B", latencies(rng, 300)),
                       metric="latency_ms", allocation=50)
    assert analysis.recommendation == "keep running"
    assert "No difference detected yet" in analysis.reason and "anytime-valid interval" in analysis.reason


# --- The libraries agree with themselves -------------------------------------------------------

def test_the_two_proportion_z_test_is_the_uncorrected_chi_square_test():
    comparison = compare_proportions(30, 1000, 52, 1100, measure="error_rate", alpha=ALPHA, tuning=5000)
    table = [[30, 970], [52, 1048]]
    assert comparison.p_value == pytest.approx(stats.chi2_contingency(table, correction=False).pvalue)


def test_welch_from_moments_is_scipys_welch():
    rng = np.random.default_rng(11)
    constant = np.full(80, 100.0)
    pairs = [(rng.lognormal(6, 0.5, 40), rng.lognormal(6.1, 0.8, 300)), (rng.normal(0, 1, 2), rng.normal(0, 3, 3)),
             (constant, rng.normal(95, 10, 120)), (rng.normal(95, 10, 120), constant)]
    for a, b in pairs:
        comparison = compare_means(a, b, measure="latency_ms", alpha=ALPHA, tuning=5000)
        with warnings.catch_warnings():  # ttest_ind warns about precision loss on the constant arm
            warnings.simplefilter("ignore", RuntimeWarning)
            welch = stats.ttest_ind(b, a, equal_var=False)
        interval = welch.confidence_interval(1 - ALPHA)
        assert comparison.p_value == pytest.approx(welch.pvalue, rel=1e-9)
        assert (comparison.ci_low, comparison.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-9)
        assert comparison.sequential_p_value is not None


def test_the_sequential_test_is_gbstats_on_the_same_numbers():
    rng = np.random.default_rng(18)
    a, b = rng.normal(100, 20, 400), rng.normal(104, 25, 500)
    comparison = compare_means(a, b, measure="latency_ms", alpha=ALPHA, tuning=5000)
    gbstats = SequentialTwoSidedTTest(
        SampleMeanStatistic(n=a.size, sum=a.sum(), sum_squares=a @ a),
        SampleMeanStatistic(n=b.size, sum=b.sum(), sum_squares=b @ b),
        SequentialConfig(difference_type="absolute", alpha=ALPHA, sequential_tuning_parameter=5000),
    ).compute_result()
    assert gbstats.error_message is None
    assert comparison.sequential_p_value == pytest.approx(gbstats.p_value, rel=1e-9)
    assert [comparison.sequential_ci_low, comparison.sequential_ci_high] == pytest.approx(gbstats.ci, rel=1e-9)


def test_the_sequential_p_value_and_interval_agree():
    rng = np.random.default_rng(12)
    for _ in range(200):
        n_a, n_b = rng.integers(30, 3000, size=2)
        a, b = rng.normal(0, 1, n_a), rng.normal(rng.normal(0, 0.15), 1, n_b)
        c = compare_means(a, b, measure="latency_ms", alpha=ALPHA, tuning=5000)
        assert c.significant == (c.sequential_ci_low > 0 or c.sequential_ci_high < 0)


# --- Edge cases: no exception, nothing infinite ------------------------------------------------

def _edge_cases() -> dict[str, tuple[Observations, Observations, str, int]]:
    rng = np.random.default_rng(13)
    empty = observations("A", np.array([]))
    hundred = observations("A", latencies(rng, 100))
    return {
        "allocation 0, all traffic on A": (hundred, dataclasses.replace(empty, variant="B"), "latency_ms", 0),
        "allocation 0, B got traffic": (hundred, observations("B", latencies(rng, 5)), "latency_ms", 0),
        "allocation 100, all traffic on B": (empty, observations("B", latencies(rng, 100)), "latency_ms", 100),
        "both empty": (empty, dataclasses.replace(empty, variant="B"), "feedback_score", 50),
        "tokens constant and equal": (observations("A", latencies(rng, 100), tokens=np.full(100, 128)),
                                      observations("B", latencies(rng, 100), tokens=np.full(100, 128)),
                                      "completion_tokens", 50),
        "tokens constant and different": (observations("A", latencies(rng, 100), tokens=np.full(100, 100)),
                                          observations("B", latencies(rng, 100), tokens=np.full(100, 120)),
                                          "completion_tokens", 50),
        "no errors anywhere": (hundred, observations("B", latencies(rng, 100)), "error_rate", 50),
        "B always fails": (hundred, observations("B", latencies(rng, 100), error=np.ones(100, dtype=bool)),
                           "error_rate", 50),
        "one request each": (observations("A", [500.0]), observations("B", [700.0]), "latency_ms", 50),
        "missing latencies": (observations("A", np.where(rng.random(100) < 0.3, np.nan, latencies(rng, 100))),
                              observations("B", latencies(rng, 100)), "latency_ms", 50),
        "a huge effect": (observations("A", rng.normal(1000, 1, 5000)), observations("B", rng.normal(10, 1, 5000)),
                          "latency_ms", 50),
        # Stored before scores were bounded: squares and sums of them overflowed (a 500 on every look).
        "scores at the ends of the float range": (
            observations("A", latencies(rng, 50), feedback=[1e160, -1.7e308, 3.0, 4.0]),
            observations("B", latencies(rng, 50), feedback=[1.7e308, 1.7e308, -2.0, 1.0]), "feedback_score", 50),
    }


@pytest.mark.parametrize("case", list(_edge_cases()))
def test_edge_cases_give_finite_numbers(case):
    a, b, metric, allocation = _edge_cases()[case]
    analysis = analyze(a, b, metric=metric, allocation=allocation)
    assert_all_finite(analysis)
    assert analysis.recommendation in ("A", "B", "keep running") and analysis.reason


def test_allocation_0_and_100_check_the_empty_arm():
    rng = np.random.default_rng(14)
    a, b = observations("A", latencies(rng, 100)), observations("B", latencies(rng, 3))
    assert not analyze(a, dataclasses.replace(b, latency_ms=np.array([]), completion_tokens=np.array([]),
                                              error=np.array([], dtype=bool), user_id=np.array([], dtype=str)),
                       metric="latency_ms", allocation=0).sample_ratio.mismatch
    stray = analyze(a, b, metric="latency_ms", allocation=0).sample_ratio
    assert stray.mismatch and stray.p_value == 0.0
    assert analyze(a, b, metric="latency_ms", allocation=100).sample_ratio.mismatch


def test_zero_variance_is_not_significant_and_says_so():
    rng = np.random.default_rng(15)
    a = observations("A", latencies(rng, 100), tokens=np.full(100, 100))
    b = observations("B", latencies(rng, 100), tokens=np.full(100, 120))

    analysis = analyze(a, b, metric="completion_tokens", allocation=50)

    assert analysis.comparison.difference == 20.0
    assert not analysis.comparison.significant and analysis.comparison.sequential_p_value is None
    assert analysis.recommendation == "keep running" and "does not vary" in analysis.reason


def test_a_huge_effect_gives_p_zero_not_an_overflow():
    rng = np.random.default_rng(16)
    comparison = compare_means(rng.normal(1000, 1, 5000), rng.normal(10, 1, 5000), measure="latency_ms",
                               alpha=ALPHA, tuning=5000)
    assert comparison.sequential_p_value == 0.0 and comparison.significant


def test_observations_of_any_magnitude_are_tested_alike_in_their_own_unit():
    """The tests run on the observations scaled by a power of two: p-values do not move, differences
    and intervals come back in the observations' unit."""
    rng = np.random.default_rng(18)
    a, b = rng.normal(5, 1, 400), rng.normal(5.3, 1, 400)
    unit = 2.0 ** 900  # b's squares would be 1e542: beyond the float range
    plain = compare_means(a, b, measure="feedback_score", alpha=ALPHA, tuning=5000)
    scaled = compare_means(a * unit, b * unit, measure="feedback_score", alpha=ALPHA, tuning=5000)
    assert (scaled.p_value, scaled.sequential_p_value, scaled.significant) == pytest.approx(
        (plain.p_value, plain.sequential_p_value, plain.significant), rel=1e-12)
    for field in ("difference", "ci_low", "ci_high", "sequential_ci_low", "sequential_ci_high"):
        assert getattr(scaled, field) == pytest.approx(getattr(plain, field) * unit, rel=1e-12), field


def test_bad_arguments_are_refused():
    rng = np.random.default_rng(17)
    a, b = observations("A", latencies(rng, 10)), observations("B", latencies(rng, 10))
    with pytest.raises(ValueError, match="metric"):
        analyze(a, b, metric="throughput", allocation=50)
    with pytest.raises(ValueError, match="allocation"):
        analyze(a, b, metric="latency_ms", allocation=101)
    with pytest.raises(ValueError, match="one entry per request"):
        analyze(dataclasses.replace(a, error=np.zeros(3, dtype=bool)), b, metric="latency_ms", allocation=50)


def test_every_metric_has_a_direction():
    assert set(METRICS.values()) <= {"lower", "higher"}
    assert METRICS == {"latency_ms": "lower", "completion_tokens": "lower", "error_rate": "lower",
                       "feedback_score": "higher"}
