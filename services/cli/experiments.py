"""llmops experiments: prompt A/B experiments on live traffic, their statistics and their conclusion."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from llmops.v1 import experiment_pb2

from .options import Yes, confirm, gateway
from .render import Output, OutputOption, as_dict, at, cell, console, print_json, show, table

app = typer.Typer(help="Prompt A/B experiments.", no_args_is_help=True)

COLUMNS = [("ID", "id"), ("ENDPOINT", "endpoint"), ("METRIC", "metric"), ("B %", "allocation"),
           ("STATUS", "status"), ("DECISION", "recommendation.decision"), ("WINNER", "winnerTemplateId"),
           ("CREATED", at("createdAt"))]
VARIANT_COLUMNS = [("VARIANT", "variant"), ("TEMPLATE", "templateId"), ("REQUESTS", "count"), ("USERS", "users"),
                   ("SAMPLES", "samples"), ("MEAN", "mean"), ("P50", "p50"), ("P95", "p95"), ("ERRORS", "errors"),
                   ("ERROR RATE", "errorRate"), ("FEEDBACK", "meanFeedback")]
COMPARISON_COLUMNS = [("MEASURE", "measure"), ("TEST", "test"), ("B - A", "difference"),
                      ("ANYTIME-VALID CI", lambda c: _interval(c, "sequentialCiLow", "sequentialCiHigh")),
                      ("P (ANYTIME)", "sequentialPValue"), ("SIGNIFICANT", "significant"),
                      ("FIXED-HORIZON CI", lambda c: _interval(c, "ciLow", "ciHigh")), ("P (FIXED)", "pValue")]
ExperimentId = Annotated[str, typer.Argument(metavar="ID")]


def _interval(comparison: dict, low: str, high: str) -> str | None:
    if comparison.get(low) is None or comparison.get(high) is None:
        return None
    return f"[{cell(comparison[low])}, {cell(comparison[high])}]"


def _get(ctx: typer.Context, experiment_id: str) -> experiment_pb2.Experiment:
    gw = gateway(ctx)
    return gw.call(gw.experiment.GetExperiment, experiment_pb2.GetExperimentRequest(id=experiment_id))


@app.command()
def create(ctx: typer.Context,
           template_a: Annotated[str, typer.Option(help="Control template id (A).")],
           template_b: Annotated[str, typer.Option(help="Challenger template id (B).")],
           allocation: Annotated[int, typer.Option(min=0, max=100, help="Percent of traffic sent to B.")],
           metric: Annotated[str, typer.Option(help="latency_ms | completion_tokens | error_rate | feedback_score")],
           endpoint: Annotated[str, typer.Option(help="Endpoint name; default: the one both templates name.")] = "",
           output: OutputOption = Output.TABLE) -> None:
    """Start an experiment between two prompt templates."""
    gw = gateway(ctx)
    request = experiment_pb2.CreateExperimentRequest(template_a_id=template_a, template_b_id=template_b,
                                                     allocation=allocation, metric=metric, endpoint=endpoint)
    show(gw.call(gw.experiment.CreateExperiment, request), output)


@app.command("list")
def list_experiments(ctx: typer.Context,
                     status: Annotated[str, typer.Option(help="running | concluded | stopped")] = "",
                     endpoint: Annotated[str, typer.Option(help="Only this endpoint's.")] = "",
                     output: OutputOption = Output.TABLE) -> None:
    """List experiments."""
    gw = gateway(ctx)
    request = experiment_pb2.ListExperimentsRequest(status=status, endpoint=endpoint)
    show(list(gw.pages(gw.experiment.ListExperiments, request, "experiments")), output, COLUMNS)


@app.command()
def status(ctx: typer.Context, experiment_id: ExperimentId, output: OutputOption = Output.TABLE) -> None:
    """Per-variant statistics, the tests behind them and the recommendation."""
    experiment = as_dict(_get(ctx, experiment_id))
    if output is Output.JSON:
        print_json(experiment)
        return
    out = console()
    out.print(f"experiment {experiment['id']} on {experiment['endpoint']}: {experiment['status']}, metric "
              f"{experiment['metric']}, {experiment['allocation']}% to B", markup=False, soft_wrap=True)
    out.print(table(experiment["variants"], VARIANT_COLUMNS))
    significance = experiment.get("significance") or {}
    comparisons = [significance[k] for k in ("metric", "guardrail") if significance.get(k)]
    if comparisons:
        out.print(table(comparisons, COMPARISON_COLUMNS))
    if significance:
        out.print(_checks(significance))
    recommendation = experiment.get("recommendation") or {}
    out.print(f"recommendation: {recommendation.get('decision') or '-'}: {recommendation.get('reason') or ''}",
              markup=False, soft_wrap=True)
    if experiment.get("winnerTemplateId"):
        out.print(f"winner: {experiment['winnerTemplateId']}", markup=False)


def _checks(significance: dict) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_row("sample ratio", f"B share of users {cell(significance.get('observedBShare'))}, expected "
                 f"{cell(significance.get('expectedBShare'))}, p = {cell(significance.get('srmPValue'))}"
                 + (" MISMATCH" if significance.get("sampleRatioMismatch") else ""))
    grid.add_row("guardrail", "breached: B errs more than A" if significance.get("guardrailBreached") else "ok")
    grid.add_row("alpha", cell(significance.get("alpha")))
    return grid


@app.command()
def conclude(ctx: typer.Context, experiment_id: ExperimentId,
             winner: Annotated[str, typer.Option(help="A, B, or the winning template's id.")],
             notes: Annotated[str, typer.Option(help="Why this winner.")] = "",
             yes: Yes = False, output: OutputOption = Output.TABLE) -> None:
    """End an experiment with a winner: the router then serves it to everyone."""
    experiment = _get(ctx, experiment_id)
    winner_id = {"A": experiment.template_a_id, "B": experiment.template_b_id}.get(winner.upper(), winner)
    confirm(f"conclude experiment {experiment_id} with winner {winner_id}", yes)
    gw = gateway(ctx)
    request = experiment_pb2.ConcludeExperimentRequest(id=experiment_id, winner_template_id=winner_id, notes=notes)
    show(gw.call(gw.experiment.ConcludeExperiment, request), output)
