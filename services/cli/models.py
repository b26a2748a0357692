"""llmops models: the catalog and its review workflow (draft -> pending_review -> approved | rejected)."""

from __future__ import annotations

from typing import Annotated

import typer

from llmops.v1 import registry_pb2

from .options import gateway, json_object
from .render import Output, OutputOption, at, show

app = typer.Typer(help="The model catalog and its review workflow.", no_args_is_help=True)

COLUMNS = [("ID", "id"), ("NAME", "name"), ("VERSION", "version"), ("TYPE", "type"), ("RUNTIME", "runtime"),
           ("STATUS", "status"), ("OWNER", "ownerTeam"), ("CREATED BY", "createdBy"), ("CREATED", at("createdAt"))]
Notes = Annotated[str, typer.Option(help="Why: kept with the review decision.")]


@app.command()
def register(ctx: typer.Context,
             name: Annotated[str, typer.Option(help="Model name.")],
             version: Annotated[str, typer.Option(help="Model version, e.g. v1.0.0.")],
             type_: Annotated[str, typer.Option("--type", help="chat | completion | embedding")],
             runtime: Annotated[str, typer.Option(help="llamacpp | tensorrt_llm | embedding | echo")],
             artifact_uri: Annotated[str, typer.Option(help="Where the weights are: pkg://, file://, s3://, hf://.")],
             owner_team: Annotated[str, typer.Option(help="Team that owns the model.")],
             metadata: Annotated[dict | None, typer.Option(parser=json_object, metavar="JSON",
                                                           help='e.g. \'{"context_length": 2048}\'')] = None,
             submit: Annotated[bool, typer.Option(help="Submit for review at once (pending_review).")] = False,
             output: OutputOption = Output.TABLE) -> None:
    """Register a model, as a draft or (--submit) for review."""
    gw = gateway(ctx)
    request = registry_pb2.CreateModelRequest(name=name, version=version, type=type_, runtime=runtime,
                                              artifact_uri=artifact_uri, owner_team=owner_team,
                                              status="pending_review" if submit else "")
    if metadata:
        request.metadata.update(metadata)
    show(gw.call(gw.registry.CreateModel, request), output)


def _move(ctx: typer.Context, model_id: str, status: str, notes: str, output: Output) -> None:
    gw = gateway(ctx)
    show(gw.call(gw.registry.UpdateModelStatus,
                 registry_pb2.UpdateModelStatusRequest(id=model_id, status=status, notes=notes)), output)


@app.command()
def submit(ctx: typer.Context, model_id: Annotated[str, typer.Argument(metavar="ID")], notes: Notes = "",
           output: OutputOption = Output.TABLE) -> None:
    """Submit a draft for review (pending_review; reviewer or admin: a researcher registers with --submit)."""
    _move(ctx, model_id, "pending_review", notes, output)


@app.command()
def approve(ctx: typer.Context, model_id: Annotated[str, typer.Argument(metavar="ID")], notes: Notes = "",
            output: OutputOption = Output.TABLE) -> None:
    """Approve a model under review (reviewer or admin, not the one who registered it)."""
    _move(ctx, model_id, "approved", notes, output)


@app.command()
def reject(ctx: typer.Context, model_id: Annotated[str, typer.Argument(metavar="ID")], notes: Notes = "",
           output: OutputOption = Output.TABLE) -> None:
    """Reject a model under review."""
    _move(ctx, model_id, "rejected", notes, output)


@app.command("list")
def list_models(ctx: typer.Context,
                type_: Annotated[str, typer.Option("--type", help="Only this type.")] = "",
                status: Annotated[str, typer.Option(help="Only this status.")] = "",
                owner_team: Annotated[str, typer.Option(help="Only this team's.")] = "",
                output: OutputOption = Output.TABLE) -> None:
    """List catalog models."""
    gw = gateway(ctx)
    request = registry_pb2.ListModelsRequest(type=type_, status=status, owner_team=owner_team)
    show(list(gw.pages(gw.registry.ListModels, request, "models")), output, COLUMNS)


@app.command()
def get(ctx: typer.Context, model_id: Annotated[str, typer.Argument(metavar="ID")],
        output: OutputOption = Output.TABLE) -> None:
    """Show one model."""
    gw = gateway(ctx)
    show(gw.call(gw.registry.GetModel, registry_pb2.GetModelRequest(id=model_id)), output)
