"""llmops audit: who changed what, when, before and after. Each service keeps the log
of its own resources; this reads the ones asked for and merges them, newest first."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Annotated

import typer

from llmops.v1 import audit_pb2

from .connection import Gateway
from .options import gateway
from .render import Output, OutputOption, at, show


class Log(StrEnum):
    CATALOG = "catalog"          # models, prompt templates (registry)
    SERVING = "serving"          # endpoints (deployment)
    EXPERIMENTS = "experiments"  # experiments


LOG_OF_RESOURCE = {"model": Log.CATALOG, "prompt_template": Log.CATALOG, "endpoint": Log.SERVING,
                   "experiment": Log.EXPERIMENTS}
COLUMNS = [("AT", at("at")), ("ACTOR", "actor"), ("ROLES", "roles"), ("ACTION", "action"),
           ("RESOURCE", "resourceType"), ("ID", "resourceId"), ("REQUEST", "requestId")]


def _stub_method(gw: Gateway, log: Log) -> Callable[..., audit_pb2.ListAuditRecordsResponse]:
    return {Log.CATALOG: gw.registry, Log.SERVING: gw.deployment,
            Log.EXPERIMENTS: gw.experiment}[log].ListAuditRecords


def audit(ctx: typer.Context,
          log: Annotated[list[Log] | None, typer.Option("--log", help="Which log (repeatable); default: the one "
                                                                        "--resource-type lives in, else all.")] = None,
          actor: Annotated[str, typer.Option(help="Only this user's changes.")] = "",
          resource_type: Annotated[str, typer.Option(help="model | prompt_template | endpoint | experiment")] = "",
          resource_id: Annotated[str, typer.Option(help="Only this resource's changes.")] = "",
          action: Annotated[str, typer.Option(help="Only this method, e.g. RollbackEndpoint.")] = "",
          since: Annotated[str, typer.Option(help="RFC 3339, inclusive.")] = "",
          until: Annotated[str, typer.Option(help="RFC 3339, exclusive.")] = "",
          limit: Annotated[int, typer.Option(min=0, help="Newest records shown; 0: all.")] = 50,
          output: OutputOption = Output.TABLE) -> None:
    """The audit log (admins): every change to models, templates, endpoints and experiments."""
    gw = gateway(ctx)
    logs = log or ([LOG_OF_RESOURCE[resource_type]] if resource_type in LOG_OF_RESOURCE else list(Log))
    records: list[audit_pb2.AuditRecord] = []
    for one in dict.fromkeys(logs):
        request = audit_pb2.ListAuditRecordsRequest(actor=actor, resource_type=resource_type, resource_id=resource_id,
                                                    action=action, since=since, until=until)
        records += gw.pages(_stub_method(gw, one), request, "records", limit=limit)
    records.sort(key=lambda r: (r.at.seconds, r.at.nanos), reverse=True)
    show(records[:limit] if limit else records, output, COLUMNS)
