"""`llmops` (the console script) and `python -m cli`: run a command, and turn what
went wrong into one line on stderr and an exit code."""

from __future__ import annotations

import sys

import grpc
import typer

from .app import app
from .errors import CliError, ExitCode, describe_rpc_error


def main() -> None:
    try:
        app()
    except CliError as exc:
        fail(exc.message, exc.code)
    except grpc.RpcError as exc:
        fail(describe_rpc_error(exc), ExitCode.ERROR)
    except KeyboardInterrupt:
        fail("interrupted", 130)


def fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
