"""The root command: where the gateway is and who is calling, then the nouns."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import endpoints, experiments, models, templates
from .audit import audit
from .chat import chat
from .connection import DEFAULT_URL, Gateway

app = typer.Typer(name="llmops", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="The LLM Ops platform from the command line, over gRPC to its gateway. Settings come from "
                       "flags, then LLMOPS_* environment variables, then ~/.config/llmops/config.toml "
                       "(keys url, user, roles, token).",
                  epilog="Exit codes: 0 ok, 1 error, 2 usage, 3 --wait timed out, 4 rollout failed.")
app.add_typer(models.app, name="models")
app.add_typer(endpoints.app, name="endpoints")
app.add_typer(experiments.app, name="experiments")
app.add_typer(templates.app, name="templates")
app.command()(chat)
app.command()(audit)


@app.callback()
def connect(ctx: typer.Context,
            url: Annotated[str | None, typer.Option(envvar="LLMOPS_URL", show_envvar=True,
                                                    help=f"The gateway (default {DEFAULT_URL}).")] = None,
            user: Annotated[str | None, typer.Option(envvar="LLMOPS_USER", show_envvar=True,
                                                     help="Who you are (X-User-Id; trusted-headers mode).")] = None,
            roles: Annotated[str | None, typer.Option(envvar="LLMOPS_ROLES", show_envvar=True,
                                                      help="Your roles, comma separated (X-User-Roles).")] = None,
            token: Annotated[str | None, typer.Option(envvar="LLMOPS_TOKEN", show_envvar=True,
                                                      help="A bearer token (jwt mode).")] = None,
            config: Annotated[Path | None, typer.Option(envvar="LLMOPS_CONFIG", show_envvar=True, dir_okay=False,
                                                        help="Config file instead of "
                                                             "~/.config/llmops/config.toml.")] = None) -> None:
    ctx.obj = Gateway({"url": url, "user": user, "roles": roles, "token": token}, config)
