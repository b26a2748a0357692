"""What several commands share: their options, the gateway from the context,
confirmation of destructive commands, and parsing of JSON flags."""

from __future__ import annotations

import json
import sys
import uuid
from typing import Annotated

import typer

from .connection import Gateway
from .errors import CliError, ExitCode

Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed without a terminal).")]
Wait = Annotated[bool, typer.Option("--wait", help="Follow the rollout until healthy (exit 0) or failed (exit 4).")]
Timeout = Annotated[float, typer.Option("--timeout", min=0, help="Seconds --wait waits before it gives up (exit 3).")]
Environment = Annotated[str | None, typer.Option("--env", help="dev | stg | prod: where to look an endpoint "
                                                                 "name up (an id needs none).")]
WAIT_TIMEOUT_S = 300.0


def gateway(ctx: typer.Context) -> Gateway:
    """The gateway the root command configured from flags, environment and file."""
    return ctx.find_object(Gateway)


def confirm(action: str, yes: bool) -> None:
    """Go on with --yes or a yes at the prompt. Without a terminal nobody can answer, so a
    script must say --yes: a destructive command never runs on a default."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"refusing to {action} without --yes (no terminal to confirm on)", ExitCode.USAGE)
    if not typer.confirm(f"{action[0].upper()}{action[1:]}?", default=False, err=True):
        raise CliError("aborted: nothing changed")


def json_object(text: str) -> dict:
    """A flag's JSON object value (--metadata '{"context_length": 2048}')."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object")
    return value


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
