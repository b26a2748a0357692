"""The statistics of a prompt A/B experiment: A (the control) against B (the challenger).

The experiment service calls `analyze` on the raw outcomes each time someone GETs the
experiment, and people reload that page as often as they like. A fixed-horizon test that is
checked at every reload declares a winner in an A/A experiment far more often than its alpha
promises (tests/unit/test_experiment_statistics.py measures how much more), so every decision here
comes from an anytime-valid test instead: the asymptotic confidence sequence of Waudby-Smith
et al. (2023) as GrowthBook's engine implements it (gbstats `SequentialTwoSidedTTest`). Its
p-value and interval stay valid however often, and whenever, they are looked at.

The fixed-horizon results (Welch's t-test for means, a two-proportion z-test for the error
rate) are reported too, because they are the familiar numbers, but no decision uses them. A
chi-square sample-ratio test checks the split itself: if B does not get its share of the
users, assignment or logging is broken and no comparison can be trusted. It counts distinct
users, not requests, because the user is what is assigned (sticky, by hash of experiment and
user): one user's k requests are one draw of the split, not k, and counting them k times would
flag healthy experiments whose users send many requests. The error rate is a guardrail whatever
the experiment's metric: a faster B that fails more often loses.

Pure functions, no I/O. Every float in the result is finite or None, since it goes into
protobuf and JSON. Means, percentiles and the tests run on the observations divided by a
power of two near their largest magnitude (exact in binary floating point, so the results are
the same numbers) and are scaled back: squares and sums of any finite observations, even the
1e160 a client once stored as a feedback score, cannot overflow, and a result that would
exceed the float range comes out as None.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from gbstats.frequentist.tests import SequentialConfig, SequentialTwoSidedTTest
from gbstats.models.statistics import ProportionStatistic, SampleMeanStatistic
from scipy import special, stats

METRICS: dict[str, str] = {  # metric -> which direction is better
    "latency_ms": "lower",
    "completion_tokens": "lower",  # fewer tokens, cheaper
    "error_rate": "lower",
    "feedback_score": "higher",
}

KEEP_RUNNING = "keep running"


@dataclass(frozen=True, eq=False)  # eq would compare numpy arrays, which has no single truth value
class Observations:
    """One variant's outcomes, arrays aligned per request (feedback: one entry per rated request)."""

    variant: str  # "A" | "B"
    template_id: str
    latency_ms: np.ndarray  # float per request
    completion_tokens: np.ndarray  # int/float per request
    error: np.ndarray  # bool per request
    user_id: np.ndarray  # who sent each request: the unit of assignment, which the split check counts
    feedback: np.ndarray  # float per rated request


@dataclass(frozen=True)
class VariantSummary:
    variant: str
    template_id: str
    requests: int
    users: int  # distinct users among the requests
    errors: int
    error_rate: float  # 0.0 without requests
    samples: int  # observations of the experiment's metric
    mean: float | None  # of the metric's observations
    p50: float | None
    p95: float | None
    mean_feedback: float | None
    feedback_count: int


@dataclass(frozen=True)
class Comparison:
    """B against A on one measure."""

    measure: str  # the metric name, or "error_rate" for the guardrail
    test: str  # "welch_t" | "two_proportion_z"
    difference: float | None  # mean(B) - mean(A)
    ci_low: float | None  # fixed-horizon, 1 - alpha
    ci_high: float | None
    p_value: float | None
    sequential_ci_low: float | None  # anytime-valid, 1 - alpha
    sequential_ci_high: float | None
    sequential_p_value: float | None
    significant: bool  # sequential_p_value < alpha: the only thing decisions use


@dataclass(frozen=True)
class SampleRatio:
    """The split of distinct users between the variants against the allocation."""

    expected_b_share: float
    observed_b_share: float | None  # None without users
    a_users: int
    b_users: int
    p_value: float
    mismatch: bool


@dataclass(frozen=True)
class Analysis:
    a: VariantSummary
    b: VariantSummary
    metric: str
    comparison: Comparison | None  # on the metric; None when too little data to compute
    guardrail: Comparison | None  # error rate, whatever the metric
    guardrail_breached: bool  # B's error rate significantly (sequentially) higher than A's
    sample_ratio: SampleRatio
    recommendation: str  # "A" | "B" | "keep running"
    reason: str  # one sentence a user can act on, with the numbers
    alpha: float


def analyze(a: Observations, b: Observations, *, metric: str, allocation: int, alpha: float = 0.05,
            min_samples: int = 30, tuning: float = 5000.0, srm_alpha: float = 0.001) -> Analysis:
    """Compare B with A on `metric` and recommend a variant, or to keep running.

    allocation is the percent of traffic sent to B; tuning is gbstats' sequential tuning
    parameter, the total sample size at which the confidence sequence is tightest.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if isinstance(allocation, bool) or not isinstance(allocation, int) or not 0 <= allocation <= 100:
        raise ValueError(f"allocation must be an int from 0 to 100 (percent of traffic to B), not {allocation!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha!r}")
    for observations in (a, b):
        _check_aligned(observations)

    values_a, values_b = metric_values(a, metric), metric_values(b, metric)
    summary_a, summary_b = _summarize(a, values_a), _summarize(b, values_b)
    if metric == "error_rate":
        comparison = compare_proportions(summary_a.errors, summary_a.requests, summary_b.errors, summary_b.requests,
                                         measure=metric, alpha=alpha, tuning=tuning)
    else:
        comparison = compare_means(values_a, values_b, measure=metric, alpha=alpha, tuning=tuning)
    guardrail = compare_proportions(summary_a.errors, summary_a.requests, summary_b.errors, summary_b.requests,
                                    measure="error_rate", alpha=alpha, tuning=tuning)
    guardrail_breached = (guardrail is not None and guardrail.significant and guardrail.difference is not None
                          and guardrail.difference > 0
                          and min(summary_a.requests, summary_b.requests) >= min_samples)
    ratio = sample_ratio(summary_a.users, summary_b.users, allocation=allocation, srm_alpha=srm_alpha)
    recommendation, reason = _recommend(summary_a, summary_b, metric=metric, comparison=comparison,
                                        guardrail_breached=guardrail_breached, ratio=ratio, alpha=alpha,
                                        min_samples=min_samples)
    return Analysis(a=summary_a, b=summary_b, metric=metric, comparison=comparison, guardrail=guardrail,
                    guardrail_breached=guardrail_breached, sample_ratio=ratio, recommendation=recommendation,
                    reason=reason, alpha=alpha)


def metric_values(observations: Observations, metric: str) -> np.ndarray:
    """One variant's observations of `metric`, as floats.

    latency_ms and completion_tokens over the successful requests, error_rate over all requests
    (1 for an error), feedback_score over the rated requests.
    """
    errors = np.asarray(observations.error, dtype=bool)
    if metric == "error_rate":
        return errors.astype(float)
    if metric == "feedback_score":
        values = np.asarray(observations.feedback, dtype=float)
    else:
        values = np.asarray(getattr(observations, metric), dtype=float)[~errors]
    return values[np.isfinite(values)]


def compare_means(a: np.ndarray, b: np.ndarray, *, measure: str, alpha: float, tuning: float) -> Comparison | None:
    """mean(b) - mean(a): Welch's t-test at a fixed horizon and gbstats' sequential test."""
    if a.size < 2 or b.size < 2:
        return None
    unit = _unit(a, b)
    if unit != 1.0:  # p-values do not change with the unit; differences and intervals scale with it
        scaled = compare_means(a / unit, b / unit, measure=measure, alpha=alpha, tuning=tuning)
        return dataclasses.replace(scaled, **{k: _finite_times(getattr(scaled, k), unit) for k in (
            "difference", "ci_low", "ci_high", "sequential_ci_low", "sequential_ci_high")})
    n_a, n_b = int(a.size), int(b.size)
    mean_a, mean_b = float(a.mean()), float(b.mean())
    variance_a, variance_b = _variance(a), _variance(b)
    difference = mean_b - mean_a
    if variance_a == 0 and variance_b == 0:
        return _comparison(measure, "welch_t", difference, fixed=(None, None, None), sequential=None, alpha=alpha)
    fixed = _welch_t(n_a, mean_a, variance_a, n_b, mean_b, variance_b, alpha)
    sequential = _sequential(_sample_mean(n_a, mean_a, variance_a), _sample_mean(n_b, mean_b, variance_b),
                             alpha=alpha, tuning=tuning)
    return _comparison(measure, "welch_t", difference, fixed=fixed, sequential=sequential, alpha=alpha)


def compare_proportions(a_events: int, a_n: int, b_events: int, b_n: int, *, measure: str, alpha: float,
                        tuning: float) -> Comparison | None:
    """rate(b) - rate(a): a two-proportion z-test at a fixed horizon and gbstats' sequential test.

    The z-test's p-value uses the pooled rate (the null hypothesis says the rates are equal),
    its interval the unpooled standard error (it describes the difference as it is).
    """
    if a_n == 0 or b_n == 0:
        return None
    rate_a, rate_b = a_events / a_n, b_events / b_n
    difference = rate_b - rate_a
    pooled = (a_events + b_events) / (a_n + b_n)
    null_se = math.sqrt(pooled * (1 - pooled) * (1 / a_n + 1 / b_n))
    se = math.sqrt(rate_a * (1 - rate_a) / a_n + rate_b * (1 - rate_b) / b_n)
    p_value = float(2 * special.ndtr(-abs(difference) / null_se)) if null_se > 0 else None
    if se > 0:
        half_width = _z_critical(alpha) * se
        fixed = (p_value, difference - half_width, difference + half_width)
        sequential = _sequential(ProportionStatistic(n=a_n, sum=a_events), ProportionStatistic(n=b_n, sum=b_events),
                                 alpha=alpha, tuning=tuning)
    else:
        # Each arm is all errors or all successes: there is no variance to build an interval on.
        fixed, sequential = (p_value, None, None), None
    return _comparison(measure, "two_proportion_z", difference, fixed=fixed, sequential=sequential, alpha=alpha)


@lru_cache(maxsize=16)
def _z_critical(alpha: float) -> float:
    return float(stats.norm.ppf(1 - alpha / 2))


def sample_ratio(a_users: int, b_users: int, *, allocation: int, srm_alpha: float) -> SampleRatio:
    """Chi-square test of the observed split of distinct users against the allocation.

    Users, not requests: assignment is per user, so users are the independent draws the test
    assumes. Requests are clustered by user, and counted one by one they overstate the evidence
    about as many times as a user sends requests.
    """
    expected_b_share = allocation / 100
    total = a_users + b_users
    split = {"expected_b_share": expected_b_share, "a_users": a_users, "b_users": b_users}
    if total == 0:
        return SampleRatio(**split, observed_b_share=None, p_value=1.0, mismatch=False)
    observed_b_share = b_users / total
    if allocation in (0, 100):
        # One arm should get nobody, and chisquare would divide by its zero expected count:
        # any user in it is a mismatch beyond doubt.
        strays = b_users if allocation == 0 else a_users
        return SampleRatio(**split, observed_b_share=observed_b_share, p_value=0.0 if strays else 1.0,
                           mismatch=strays > 0)
    expected = (total * (100 - allocation) / 100, total * allocation / 100)
    chi2 = sum((observed - e) ** 2 / e for observed, e in zip((a_users, b_users), expected))
    # stats.chisquare's p-value for two cells (one degree of freedom), without its wrapper's cost (a
    # third of an analysis: the experiment page computes one per look).
    p_value = float(special.chdtrc(1, chi2))
    return SampleRatio(**split, observed_b_share=observed_b_share, p_value=p_value, mismatch=p_value < srm_alpha)


def _check_aligned(observations: Observations) -> None:
    lengths = {len(observations.latency_ms), len(observations.completion_tokens), len(observations.error),
               len(observations.user_id)}
    if len(lengths) != 1:
        raise ValueError(f"variant {observations.variant}: latency_ms, completion_tokens, error and user_id must "
                         f"have one entry per request, got lengths {sorted(lengths)}")


def _summarize(observations: Observations, values: np.ndarray) -> VariantSummary:
    errors = np.asarray(observations.error, dtype=bool)
    feedback = np.asarray(observations.feedback, dtype=float)
    feedback = feedback[np.isfinite(feedback)]
    requests, error_count = int(errors.size), int(errors.sum())
    mean = p50 = p95 = None
    if values.size:
        unit = _unit(values)
        mean = _finite_times((values / unit).mean(), unit)
        p50, p95 = (_finite_times(p, unit) for p in np.percentile(values / unit, [50, 95]))
    mean_feedback = None
    if feedback.size:
        unit = _unit(feedback)
        mean_feedback = _finite_times((feedback / unit).mean(), unit)
    return VariantSummary(
        variant=observations.variant, template_id=observations.template_id, requests=requests,
        users=int(np.unique(np.asarray(observations.user_id)).size), errors=error_count,
        error_rate=error_count / requests if requests else 0.0, samples=int(values.size), mean=mean, p50=p50,
        p95=p95, mean_feedback=mean_feedback, feedback_count=int(feedback.size))


def _unit(*arrays: np.ndarray) -> float:
    """A power of two near the largest magnitude among the arrays' (finite) values, 1 when that is
    small: dividing by it is exact, and leaves magnitudes below 2, whose squares and sums of squares
    stay far inside the float range."""
    largest = max(float(np.abs(x).max()) if x.size else 0.0 for x in arrays)
    return 1.0 if largest < 2.0 ** 64 else math.ldexp(1.0, math.frexp(largest)[1] - 1)


def _finite_times(x: float | None, unit: float) -> float | None:
    """x (computed on observations divided by unit) in the observations' own unit; None where that
    is beyond the float range."""
    if x is None:
        return None
    with np.errstate(over="ignore"):
        return _finite(float(np.float64(x) * unit))


def _variance(values: np.ndarray) -> float:
    # A constant arm's two-pass variance can still come out a rounding error above zero.
    return 0.0 if values.min() == values.max() else float(values.var(ddof=1))


def _welch_t(n_a: int, mean_a: float, variance_a: float, n_b: int, mean_b: float, variance_b: float,
             alpha: float) -> tuple[float, float, float]:
    """p-value and 1 - alpha interval of mean(B) - mean(A) from Welch's t-test.

    The same numbers as ttest_ind(b, a, equal_var=False) and its confidence_interval() (the tests
    check it), from each arm's moments: ttest_ind costs half a millisecond a call, which the A/A
    simulation's 25,000 analyses feel, and warns about precision loss on a constant arm.
    """
    per_a, per_b = variance_a / n_a, variance_b / n_b
    welch_satterthwaite_dof = (per_a + per_b) ** 2 / (per_a ** 2 / (n_a - 1) + per_b ** 2 / (n_b - 1))
    se, difference = math.sqrt(per_a + per_b), mean_b - mean_a
    # Student's t distribution through scipy.special, as stats.t computes it, without the per-call cost of
    # stats' distribution objects (a tenth of a millisecond each, on every look at the experiment page).
    p_value = float(2 * special.stdtr(welch_satterthwaite_dof, -abs(difference) / se))
    half_width = float(special.stdtrit(welch_satterthwaite_dof, 1 - alpha / 2)) * se
    return p_value, difference - half_width, difference + half_width


def _sample_mean(n: int, mean: float, variance: float) -> SampleMeanStatistic:
    # gbstats wants raw sums: rebuilt from the moments above, so that it sees the variance
    # Welch's test sees (a constant arm's exactly zero, for one).
    total = n * mean
    return SampleMeanStatistic(n=n, sum=total, sum_squares=(n - 1) * variance + total * mean)


@lru_cache(maxsize=16)
def _sequential_config(alpha: float, tuning: float) -> SequentialConfig:
    return SequentialConfig(difference_type="absolute", alpha=alpha, sequential_tuning_parameter=tuning)


def _sequential(stat_a: ProportionStatistic | SampleMeanStatistic, stat_b: ProportionStatistic | SampleMeanStatistic,
                *, alpha: float, tuning: float) -> tuple[float, float, float]:
    """Anytime-valid p-value and interval of B - A; the caller makes sure the pooled variance is positive."""
    test = SequentialTwoSidedTTest(stat_a, stat_b, _sequential_config(alpha, tuning))
    with np.errstate(over="ignore"):  # a huge effect overflows the e-value to inf: p = 0, which is right
        result = test.compute_result()
        if result.error_message is None:
            interval, p_value = result.ci, result.p_value
        else:
            # gbstats refuses when either arm alone has zero variance or the control's mean is 0
            # (an error rate of 0%, say): guards for its relative lift. The absolute difference
            # only needs the pooled variance, which is positive here, and the test's own
            # properties compute it.
            interval, p_value = test.confidence_interval, test.p_value
    return float(p_value), float(interval[0]), float(interval[1])


def _comparison(measure: str, test: str, difference: float, *, fixed: tuple[float | None, float | None, float | None],
                sequential: tuple[float, float, float] | None, alpha: float) -> Comparison:
    p_value, ci_low, ci_high = (_finite(x) for x in fixed)
    sequential_p, sequential_low, sequential_high = (_finite(x) for x in sequential or (None, None, None))
    return Comparison(measure=measure, test=test, difference=_finite(difference), ci_low=ci_low, ci_high=ci_high,
                      p_value=p_value, sequential_ci_low=sequential_low, sequential_ci_high=sequential_high,
                      sequential_p_value=sequential_p,
                      significant=sequential_p is not None and sequential_p < alpha)


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _recommend(a: VariantSummary, b: VariantSummary, *, metric: str, comparison: Comparison | None,
               guardrail_breached: bool, ratio: SampleRatio, alpha: float, min_samples: int) -> tuple[str, str]:
    level = f"{100 * (1 - alpha):g}%"
    if ratio.mismatch:
        return KEEP_RUNNING, (
            f"Sample-ratio mismatch: B got {ratio.observed_b_share or 0.0:.1%} of the users "
            f"({ratio.b_users:,} of {ratio.a_users + ratio.b_users:,}) but should get {ratio.expected_b_share:.0%} "
            f"({_p(ratio.p_value)}); results cannot be trusted until the traffic split is fixed.")
    # Before the sample count: a B that fails nearly every request leaves too few successful ones to
    # compare latency or tokens, and must not keep running for that reason.
    if guardrail_breached:
        return "A", f"B raises the error rate from {a.error_rate:.1%} to {b.error_rate:.1%}; keep A."
    if min(a.samples, b.samples) < min_samples:
        return KEEP_RUNNING, (
            f"Not enough data yet: {a.samples} {metric} observations for A and {b.samples} for B, "
            f"at least {min_samples} each are needed.")
    if comparison is None:
        return KEEP_RUNNING, f"Not enough data to compare {metric} yet."
    if comparison.sequential_p_value is None:
        if comparison.difference == 0:
            return KEEP_RUNNING, (f"{metric} is {_show(metric, a.mean)} throughout both A and B, so "
                                  f"there is no difference to test; keep running.")
        return KEEP_RUNNING, (
            f"{metric} does not vary within either arm (A {_show(metric, a.mean)}, B {_show(metric, b.mean)}), "
            f"so no test can say whether the difference will last; keep running.")
    difference = _show(metric, comparison.difference)
    interval = (f"{level} anytime-valid interval {_show(metric, comparison.sequential_ci_low)} "
                f"to {_show(metric, comparison.sequential_ci_high)}")
    if comparison.significant:
        b_is_lower = comparison.difference is not None and comparison.difference < 0
        winner = "B" if b_is_lower == (METRICS[metric] == "lower") else "A"
        return winner, (
            f"{winner} is better on {metric}: mean {_show(metric, b.mean)} for B against {_show(metric, a.mean)} "
            f"for A, B - A = {difference} ({interval}, {_p(comparison.sequential_p_value)}).")
    return KEEP_RUNNING, f"No difference detected yet on {metric}: B - A = {difference} ({interval}); keep running."


def _p(p_value: float) -> str:
    return "p < 0.0001" if p_value < 0.0001 else f"p = {p_value:.2g}"


def _show(metric: str, x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2%}" if metric == "error_rate" else f"{x:.4g}"
