"""Experiment protos <-> domain, with the input checks of each field."""

from __future__ import annotations

import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from llmops.v1 import experiment_pb2 as pb
from shared import validation as v
from shared.errors import InvalidArgument
from shared.timeutil import as_utc, to_timestamp, utcnow

from .domain import (
    Experiment, ExperimentFilter, ExperimentSpec, ExperimentStatus, OutcomeRecord, check_allocation, check_metric,
    check_score,
)
from .statistics import Analysis, Comparison, VariantSummary

STATUSES = [s.value for s in ExperimentStatus]


def experiment_spec(request: pb.CreateExperimentRequest) -> ExperimentSpec:
    return ExperimentSpec(
        template_a_id=str(v.parse_uuid(request.template_a_id, "templateAId")),
        template_b_id=str(v.parse_uuid(request.template_b_id, "templateBId")),
        allocation=check_allocation(request.allocation),
        metric=check_metric(request.metric),
        endpoint=v.endpoint_name(request.endpoint) if request.endpoint else "",
    )


def experiment_filter(request: pb.ListExperimentsRequest) -> ExperimentFilter:
    status = v.optional_one_of(request.status, "status", STATUSES)
    return ExperimentFilter(status=ExperimentStatus(status) if status else None,
                            endpoint=v.endpoint_name(request.endpoint) if request.endpoint else None)


def experiment_to_proto(e: Experiment, analysis: Analysis | None = None) -> pb.Experiment:
    message = pb.Experiment(
        id=str(e.id), template_a_id=e.template_a_id, template_b_id=e.template_b_id, allocation=e.allocation,
        metric=e.metric, endpoint=e.endpoint, status=e.status, winner_template_id=e.winner_template_id, notes=e.notes,
        created_by=e.created_by, created_at=to_timestamp(e.created_at), concluded_by=e.concluded_by,
        concluded_at=to_timestamp(e.concluded_at), model_type=e.model_type, endpoint_id=e.endpoint_id)
    if analysis is not None:
        message.variants.extend([_variant(analysis.a), _variant(analysis.b)])
        ratio = analysis.sample_ratio
        message.significance.CopyFrom(pb.Significance(
            test=analysis.comparison.test if analysis.comparison else _test_of(e.metric),
            p_value=analysis.comparison.p_value if analysis.comparison else None,
            significant=bool(analysis.comparison and analysis.comparison.significant),
            srm_p_value=ratio.p_value, sample_ratio_mismatch=ratio.mismatch, expected_b_share=ratio.expected_b_share,
            observed_b_share=ratio.observed_b_share, alpha=analysis.alpha,
            metric=_comparison(analysis.comparison), guardrail=_comparison(analysis.guardrail),
            guardrail_breached=analysis.guardrail_breached))
        message.recommendation.CopyFrom(pb.Recommendation(decision=analysis.recommendation, reason=analysis.reason))
    return message


def _test_of(metric: str) -> str:
    return "two_proportion_z" if metric == "error_rate" else "welch_t"


def _variant(s: VariantSummary) -> pb.VariantStats:
    return pb.VariantStats(variant=s.variant, template_id=s.template_id, count=s.requests, users=s.users,
                           errors=s.errors, error_rate=s.error_rate, samples=s.samples, mean=s.mean, p50=s.p50,
                           p95=s.p95, mean_feedback=s.mean_feedback, feedback_count=s.feedback_count)


def _comparison(c: Comparison | None) -> pb.Comparison | None:
    if c is None:
        return None
    return pb.Comparison(measure=c.measure, test=c.test, difference=c.difference, ci_low=c.ci_low, ci_high=c.ci_high,
                         p_value=c.p_value, sequential_ci_low=c.sequential_ci_low,
                         sequential_ci_high=c.sequential_ci_high, sequential_p_value=c.sequential_p_value,
                         significant=c.significant)


def _time(ts: Timestamp):  # noqa: ANN202
    return as_utc(ts.ToDatetime()) if ts.seconds or ts.nanos else utcnow()


def outcome_record(o: pb.Outcome) -> OutcomeRecord | None:
    """An outcome as the router sent it; None when it cannot be one (ingestion drops it)."""
    try:
        experiment_id = uuid.UUID(o.experiment_id)
    except ValueError:
        return None
    return OutcomeRecord(
        request_id=o.request_id[:128], experiment_id=experiment_id, variant=o.variant, template_id=o.template_id,
        endpoint=o.endpoint[:63], user_id=o.user_id[:256], latency_ms=o.latency_ms, prompt_tokens=o.prompt_tokens,
        completion_tokens=o.completion_tokens, error=o.error, created_at=_time(o.created_at))


def feedback_score(request: pb.RecordFeedbackRequest) -> float:
    if not request.HasField("score"):
        raise InvalidArgument("score is required (a number, e.g. 1 for a good answer, 0 for a bad one)",
                              reason="MISSING_FIELD", param="score")
    return check_score(request.score)

