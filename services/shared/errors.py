"""Domain errors. Services raise these; one interceptor maps them to gRPC
status codes, and the gateway maps those to HTTP with STATUS_TABLE (rendered
into its Lua filter and its local replies), so no handler catches by hand."""

from __future__ import annotations

import grpc

_C = grpc.StatusCode
# gRPC status -> (HTTP status, OpenAI error type on /v1). The one status table of the platform.
STATUS_TABLE: dict[grpc.StatusCode, tuple[int, str]] = {
    _C.CANCELLED: (499, "invalid_request_error"),
    _C.UNKNOWN: (500, "server_error"),
    _C.INVALID_ARGUMENT: (400, "invalid_request_error"),
    _C.DEADLINE_EXCEEDED: (504, "server_error"),
    _C.NOT_FOUND: (404, "not_found_error"),
    _C.ALREADY_EXISTS: (409, "invalid_request_error"),
    _C.PERMISSION_DENIED: (403, "permission_error"),
    _C.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    _C.FAILED_PRECONDITION: (409, "invalid_request_error"),
    _C.ABORTED: (409, "invalid_request_error"),
    _C.OUT_OF_RANGE: (400, "invalid_request_error"),
    _C.UNIMPLEMENTED: (404, "invalid_request_error"),
    _C.INTERNAL: (500, "server_error"),
    _C.UNAVAILABLE: (503, "server_error"),
    _C.DATA_LOSS: (500, "server_error"),
    _C.UNAUTHENTICATED: (401, "authentication_error"),
}


class DomainError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, retry_after_s: int | None = None,
                 param: str | None = None, should_retry: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s  # sent as retry-after (a header through the gateway)
        # Sent as x-should-retry, which OpenAI's SDKs obey before their own rules (they retry any 5xx).
        self.should_retry = should_retry
        # The request field at fault, OpenAI's error "param" (e.g. "messages[0].content"): a
        # google.rpc.BadRequest field violation for gRPC clients, x-llmops-param for the gateway.
        self.param = param
        if reason:
            self.reason = reason


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    """A unique name or route is taken (HTTP 409)."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    """The state forbids it: model not approved, bad status transition, nothing to roll back (HTTP 409)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class RateLimited(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RATE_LIMITED"


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class DeadlineExceeded(DomainError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"
