"""Experiment rules, free of I/O: what a valid experiment is, sticky assignment,
and what an outcome must say to be counted."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from jinja2 import meta

from shared.errors import FailedPrecondition, InvalidArgument
from shared.templating import compile_template

from .statistics import METRICS

VARIANTS = ("A", "B")
MAX_NOTES = 4096
# A feedback score's range: a thumbs -1/1, a 1-5 rating, a percentage all fit, and no single score can
# outweigh thousands of others in the mean, as a 1e6 among 1-5 ratings would.
MIN_SCORE, MAX_SCORE = -100.0, 100.0
# What a completion template must name: it wraps the prompt, so a template without it would drop it.
COMPLETION_PROMPT_VARIABLE = "prompt"


class ExperimentStatus(StrEnum):
    RUNNING = "running"
    CONCLUDED = "concluded"
    STOPPED = "stopped"  # its endpoint was deleted: ended without a winner


@dataclass(frozen=True)
class TemplateRef:
    """A prompt template as the registry has it."""

    id: str
    name: str
    content: str
    model_type: str
    endpoint: str


@dataclass(frozen=True)
class ExperimentSpec:
    template_a_id: str
    template_b_id: str
    allocation: int
    metric: str
    endpoint: str  # "" when the request gave none


@dataclass(frozen=True)
class Experiment:
    id: uuid.UUID
    template_a_id: str
    template_b_id: str
    template_a_content: str
    template_b_content: str
    allocation: int
    metric: str
    endpoint: str
    endpoint_id: str  # the endpoint it was created on; "" for one created before experiments were bound
    model_type: str
    status: ExperimentStatus
    winner_template_id: str
    notes: str
    created_by: str
    created_at: datetime
    concluded_by: str
    concluded_at: datetime | None

    def variant_of(self, template_id: str) -> str | None:
        return {self.template_a_id: "A", self.template_b_id: "B"}.get(template_id)


@dataclass(frozen=True)
class ExperimentFilter:
    status: ExperimentStatus | None = None
    endpoint: str | None = None


@dataclass(frozen=True)
class OutcomeRecord:
    request_id: str
    experiment_id: uuid.UUID
    variant: str
    template_id: str
    endpoint: str
    user_id: str
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    error: bool
    created_at: datetime


def check_score(score: float) -> float:
    if not MIN_SCORE <= score <= MAX_SCORE:  # NaN and the infinities fail it too
        raise InvalidArgument(f"score must be a finite number from {MIN_SCORE:g} to {MAX_SCORE:g}; got {score:g}",
                              reason="INVALID_SCORE", param="score")
    return score


def check_allocation(allocation: int) -> int:
    if not 0 <= allocation <= 100:
        raise InvalidArgument(f"allocation is the percent of traffic sent to B, 0 to 100; got {allocation}",
                              reason="INVALID_ALLOCATION")
    return allocation


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise InvalidArgument(f"metric must be one of {', '.join(METRICS)}; got {metric[:64] or '(empty)'}",
                              reason="INVALID_METRIC")
    return metric


def check_templates(spec: ExperimentSpec, a: TemplateRef, b: TemplateRef) -> str:
    """The endpoint the experiment runs on: the request's, or the one both templates name."""
    if a.id == b.id:
        raise InvalidArgument("templateAId and templateBId must be different templates", reason="SAME_TEMPLATE")
    for field, template in (("templateAId", a), ("templateBId", b)):
        if template.model_type not in ("chat", "completion"):
            raise InvalidArgument(f"{field}: template {template.name} is for {template.model_type} models; "
                                  "experiments compare chat or completion prompts", reason="WRONG_TEMPLATE_TYPE")
        if spec.endpoint and template.endpoint and template.endpoint != spec.endpoint:
            raise InvalidArgument(f"{field}: template {template.name} is meant for endpoint {template.endpoint}, "
                                  f"not {spec.endpoint}", reason="TEMPLATE_ENDPOINT_MISMATCH")
    if a.model_type != b.model_type:
        raise InvalidArgument(f"the templates are for different model types ({a.model_type} and {b.model_type})",
                              reason="WRONG_TEMPLATE_TYPE")
    if spec.endpoint:
        return spec.endpoint
    named = {t.endpoint for t in (a, b) if t.endpoint}
    if len(named) == 1:  # both name it, or one does and the other is meant for any endpoint
        return named.pop()
    if len(named) > 1:
        raise InvalidArgument(f"the templates name different endpoints ({', '.join(sorted(named))}); "
                              "say which one in endpoint", reason="TEMPLATE_ENDPOINT_MISMATCH")
    raise InvalidArgument("endpoint is required: neither template names the endpoint it is meant for",
                          reason="MISSING_ENDPOINT")


def check_fits_endpoint(a: TemplateRef, endpoint: str, endpoint_model_type: str) -> None:
    """Both templates (already of one type) must fit the model the endpoint serves."""
    if endpoint_model_type != a.model_type:
        raise InvalidArgument(f"endpoint {endpoint} serves a {endpoint_model_type} model; the templates are for "
                              f"{a.model_type} models", reason="WRONG_TEMPLATE_TYPE")


def check_wraps_prompt(template: TemplateRef, field: str) -> None:
    """A completion template wraps the caller's prompt: it must use {{ prompt }}."""
    parsed = compile_template(template.content, field, lenient=True).environment.parse(template.content)
    if COMPLETION_PROMPT_VARIABLE not in meta.find_undeclared_variables(parsed):
        raise InvalidArgument(f"{field}: template {template.name} is for completions and must include "
                              "{{ prompt }} (it wraps the caller's prompt)", reason="TEMPLATE_MISSES_PROMPT")


def check_conclusion(experiment: Experiment, winner_template_id: str) -> None:
    if experiment.status == ExperimentStatus.CONCLUDED:
        raise FailedPrecondition(f"experiment {experiment.id} was already concluded "
                                 f"({experiment.concluded_at:%Y-%m-%d %H:%M} UTC by {experiment.concluded_by})",
                                 reason="ALREADY_CONCLUDED")
    if experiment.status == ExperimentStatus.STOPPED:
        raise FailedPrecondition(f"experiment {experiment.id} was stopped ({experiment.concluded_at:%Y-%m-%d %H:%M} "
                                 f"UTC): its endpoint was deleted", reason="EXPERIMENT_STOPPED")
    if experiment.variant_of(winner_template_id) is None:
        raise InvalidArgument(f"winnerTemplateId must be templateAId ({experiment.template_a_id}) or templateBId "
                              f"({experiment.template_b_id}) of this experiment; got {winner_template_id[:64]}",
                              reason="WINNER_NOT_IN_EXPERIMENT")


def check_takes_feedback(experiment: Experiment) -> None:
    """Scores count only while the experiment runs: afterwards they would change the statistics it
    was concluded on."""
    if experiment.status != ExperimentStatus.RUNNING:
        raise FailedPrecondition(f"experiment {experiment.id} is {experiment.status}; feedback is taken only while "
                                 "it runs", reason="EXPERIMENT_NOT_RUNNING")
