"""llmops endpoints: serving endpoints, their revisions, rollback. An endpoint is named
by its id or by its name (the {name} of /llm-ops/v1/serve/{name}, with --env when
more than one environment has it)."""

from __future__ import annotations

from typing import Annotated

import typer

from llmops.v1 import deployment_pb2

from .connection import Gateway
from .errors import CliError, ExitCode
from .options import WAIT_TIMEOUT_S, Environment, Timeout, Wait, Yes, confirm, gateway, is_uuid
from .render import Output, OutputOption, at, show
from .rollout import wait_for_rollout

app = typer.Typer(help="Serving endpoints: deploy, update, roll back, delete.", no_args_is_help=True)

ROUTE_PREFIX = "/llm-ops/v1/serve/"
COLUMNS = [("ID", "id"), ("NAME", "name"), ("ENV", "environment"), ("STATUS", "status"),
           ("READY", lambda e: f"{e['readyReplicas']}/{e['desiredReplicas']}"),
           ("MIN", "minReplicas"), ("MAX", "maxReplicas"), ("REVISION", "revision"), ("MODEL", "modelId"),
           ("UPDATED", at("updatedAt"))]
REVISION_COLUMNS = [("REVISION", "revision"), ("REASON", "reason"), ("MODEL", "modelId"), ("MIN", "minReplicas"),
                    ("MAX", "maxReplicas"), ("CPU %", "autoscalePolicy.cpuUtilization"), ("BY", "createdBy"),
                    ("CREATED", at("createdAt"))]
EndpointRef = Annotated[str, typer.Argument(metavar="ENDPOINT", help="Endpoint id or name.")]
MinReplicas = Annotated[int | None, typer.Option("--min", min=1, help="Fewest replicas.")]
MaxReplicas = Annotated[int | None, typer.Option("--max", min=1, help="Most replicas (the autoscaler's bound).")]
CpuTarget = Annotated[int | None, typer.Option("--cpu-target", min=1, max=100,
                                               help="Average CPU utilisation (%) the autoscaler aims at.")]


def endpoint_id(gw: Gateway, ref: str, environment: str | None) -> str:
    """The id of the endpoint `ref` names: an id as it is, a name looked up among live endpoints."""
    if is_uuid(ref):
        return ref
    request = deployment_pb2.ListEndpointsRequest(name=ref, environment=environment or "")
    found = list(gw.pages(gw.deployment.ListEndpoints, request, "endpoints"))
    if not found:
        raise CliError(f"no live endpoint is named {ref!r}" + (f" in {environment}" if environment else ""))
    if len(found) > 1:
        raise CliError(f"endpoints named {ref!r} live in {', '.join(sorted(e.environment for e in found))}: "
                       "say which with --env, or give the id", ExitCode.USAGE)
    return found[0].id


def _finish(gw: Gateway, endpoint: deployment_pb2.Endpoint, wait: bool, timeout_s: float, output: Output) -> None:
    """Show the endpoint, after following its rollout with --wait; exit with the rollout's code."""
    code = ExitCode.OK
    if wait:
        endpoint, code = wait_for_rollout(endpoint, lambda i: _get(gw, i), timeout_s)
    show(endpoint, output)
    if code is not ExitCode.OK:
        raise typer.Exit(code)


def _get(gw: Gateway, endpoint_id_: str) -> deployment_pb2.Endpoint:
    return gw.call(gw.deployment.GetEndpoint, deployment_pb2.GetEndpointRequest(id=endpoint_id_))


def _policy(cpu_target: int | None) -> deployment_pb2.AutoscalePolicy | None:
    return None if cpu_target is None else deployment_pb2.AutoscalePolicy(cpu_utilization=cpu_target)


@app.command()
def deploy(ctx: typer.Context,
           model: Annotated[str, typer.Option(help="Id of an approved catalog model.")],
           name: Annotated[str, typer.Option(help=f"Endpoint name: served at {ROUTE_PREFIX}NAME.")],
           env: Annotated[str, typer.Option(help="dev | stg | prod")] = "dev",
           min_replicas: MinReplicas = None, max_replicas: MaxReplicas = None, cpu_target: CpuTarget = None,
           wait: Wait = False, timeout: Timeout = WAIT_TIMEOUT_S, output: OutputOption = Output.TABLE) -> None:
    """Deploy an approved model as an endpoint."""
    gw = gateway(ctx)
    request = deployment_pb2.DeployEndpointRequest(model_id=model, environment=env, route=ROUTE_PREFIX + name,
                                                   min_replicas=min_replicas, max_replicas=max_replicas,
                                                   autoscale_policy=_policy(cpu_target))
    _finish(gw, gw.call(gw.deployment.DeployEndpoint, request), wait, timeout, output)


@app.command("list")
def list_endpoints(ctx: typer.Context, env: Annotated[str, typer.Option(help="Only this environment.")] = "",
                   model: Annotated[str, typer.Option(help="Only this model id's.")] = "",
                   status: Annotated[str, typer.Option(help="Only this status.")] = "",
                   name: Annotated[str, typer.Option(help="Only this name.")] = "",
                   output: OutputOption = Output.TABLE) -> None:
    """List live endpoints."""
    gw = gateway(ctx)
    request = deployment_pb2.ListEndpointsRequest(environment=env, model_id=model, status=status, name=name)
    show(list(gw.pages(gw.deployment.ListEndpoints, request, "endpoints")), output, COLUMNS)


@app.command()
def get(ctx: typer.Context, endpoint: EndpointRef, env: Environment = None,
        output: OutputOption = Output.TABLE) -> None:
    """Show one endpoint: status, replicas ready, active revision."""
    gw = gateway(ctx)
    show(_get(gw, endpoint_id(gw, endpoint, env)), output)


@app.command()
def update(ctx: typer.Context, endpoint: EndpointRef, env: Environment = None,
           model: Annotated[str | None, typer.Option(help="Serve this approved model instead.")] = None,
           min_replicas: MinReplicas = None, max_replicas: MaxReplicas = None, cpu_target: CpuTarget = None,
           wait: Wait = False, timeout: Timeout = WAIT_TIMEOUT_S, output: OutputOption = Output.TABLE) -> None:
    """Change the model, the replica bounds or the CPU target: a new revision, rolled out blue/green."""
    if model is None and min_replicas is None and max_replicas is None and cpu_target is None:
        raise typer.BadParameter("give at least one of --model, --min, --max, --cpu-target")
    gw = gateway(ctx)
    request = deployment_pb2.UpdateEndpointRequest(id=endpoint_id(gw, endpoint, env), model_id=model,
                                                   min_replicas=min_replicas, max_replicas=max_replicas,
                                                   autoscale_policy=_policy(cpu_target))
    _finish(gw, gw.call(gw.deployment.UpdateEndpoint, request), wait, timeout, output)


@app.command()
def rollback(ctx: typer.Context, endpoint: EndpointRef, env: Environment = None, yes: Yes = False,
             wait: Wait = False, timeout: Timeout = WAIT_TIMEOUT_S, output: OutputOption = Output.TABLE) -> None:
    """Re-activate the previous revision (blue/green)."""
    gw = gateway(ctx)
    target = endpoint_id(gw, endpoint, env)
    confirm(f"roll endpoint {endpoint} back to its previous revision", yes)
    rolled = gw.call(gw.deployment.RollbackEndpoint, deployment_pb2.RollbackEndpointRequest(id=target))
    _finish(gw, rolled, wait, timeout, output)


@app.command()
def delete(ctx: typer.Context, endpoint: EndpointRef, env: Environment = None, yes: Yes = False,
           output: OutputOption = Output.TABLE) -> None:
    """Stop the replicas and retire the endpoint."""
    gw = gateway(ctx)
    target = endpoint_id(gw, endpoint, env)
    confirm(f"delete endpoint {endpoint} and stop its replicas", yes)
    show(gw.call(gw.deployment.DeleteEndpoint, deployment_pb2.DeleteEndpointRequest(id=target)), output)


@app.command()
def revisions(ctx: typer.Context, endpoint: EndpointRef, env: Environment = None,
              output: OutputOption = Output.TABLE) -> None:
    """List an endpoint's revisions, newest first."""
    gw = gateway(ctx)
    request = deployment_pb2.ListEndpointRevisionsRequest(id=endpoint_id(gw, endpoint, env))
    show(list(gw.pages(gw.deployment.ListEndpointRevisions, request, "revisions")), output, REVISION_COLUMNS)
