"""llmops templates: the prompt templates (Jinja2) that experiments compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmops.v1 import registry_pb2

from .options import gateway
from .render import Output, OutputOption, at, show

app = typer.Typer(help="Prompt templates (Jinja2), versioned by name.", no_args_is_help=True)

COLUMNS = [("ID", "id"), ("NAME", "name"), ("VERSION", "version"), ("TYPE", "modelType"),
           ("ENDPOINT", "endpoint"), ("CREATED BY", "createdBy"), ("CREATED", at("createdAt"))]


@app.command()
def create(ctx: typer.Context, name: Annotated[str, typer.Option(help="Template name; a new version if it exists.")],
           model_type: Annotated[str, typer.Option(help="chat | completion")],
           content: Annotated[str | None, typer.Option(help="The Jinja2 template.")] = None,
           file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True,
                                                     help="Read the template from this file.")] = None,
           endpoint: Annotated[str, typer.Option(help="Endpoint name it is meant for.")] = "",
           description: Annotated[str, typer.Option(help="What it is for.")] = "",
           output: OutputOption = Output.TABLE) -> None:
    """Store a prompt template (from --content or --file)."""
    if (content is None) == (file is None):
        raise typer.BadParameter("give exactly one of --content and --file")
    gw = gateway(ctx)
    request = registry_pb2.CreatePromptTemplateRequest(
        name=name, content=file.read_text(encoding="utf-8") if file else content, model_type=model_type,
        endpoint=endpoint, description=description)
    show(gw.call(gw.registry.CreatePromptTemplate, request), output)


@app.command("list")
def list_templates(ctx: typer.Context, name: Annotated[str, typer.Option(help="Only this name.")] = "",
                   model_type: Annotated[str, typer.Option(help="Only this model type.")] = "",
                   endpoint: Annotated[str, typer.Option(help="Only those for this endpoint.")] = "",
                   output: OutputOption = Output.TABLE) -> None:
    """List prompt templates."""
    gw = gateway(ctx)
    request = registry_pb2.ListPromptTemplatesRequest(name=name, model_type=model_type, endpoint=endpoint)
    show(list(gw.pages(gw.registry.ListPromptTemplates, request, "templates")), output, COLUMNS)


@app.command()
def get(ctx: typer.Context, template_id: Annotated[str, typer.Argument(metavar="ID")],
        output: OutputOption = Output.TABLE) -> None:
    """Show one template version, content included."""
    gw = gateway(ctx)
    show(gw.call(gw.registry.GetPromptTemplate, registry_pb2.GetPromptTemplateRequest(id=template_id)), output)
