"""Exit codes and the one-line error a failed command prints on stderr."""

from __future__ import annotations

from enum import IntEnum

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class ExitCode(IntEnum):
    """What a script can branch on (README, "Command line")."""

    OK = 0
    ERROR = 1           # the platform refused the call, or it could not be reached
    USAGE = 2           # bad flag or value, bad configuration, a destructive command without --yes
    TIMEOUT = 3         # --wait ran past --timeout
    ROLLOUT_FAILED = 4  # --wait saw the endpoint fail


class CliError(Exception):
    """An error the command line explains itself; main() prints it and exits with its code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _details(error: grpc.RpcError) -> tuple[str, list[str]]:
    """The machine-readable reason (google.rpc.ErrorInfo) and the fields at fault (BadRequest)."""
    try:
        status = rpc_status.from_call(error)
    except (ValueError, AttributeError):  # details that disagree with the status, or no trailers at all
        status = None
    reason, fields = "", []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return reason, fields


def describe_rpc_error(error: grpc.RpcError) -> str:
    """One line: the status message, then the reason (or the status code when there is none)."""
    code = error.code()
    message = " ".join((error.details() or code.name.lower()).split())
    reason, fields = _details(error)
    if code is grpc.StatusCode.UNAVAILABLE and not reason:
        message = f"cannot reach the platform through the gateway: {message}"
    suffix = reason or code.name
    if fields:
        suffix += f", field {', '.join(fields)}"
    return f"{message} ({suffix})"
