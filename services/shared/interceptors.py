"""The one server interceptor of every service: request id and identity,
access check against the proto-declared table, domain errors to gRPC status
(with google.rpc.ErrorInfo details), the envelope message for the gateway,
one structured log line and metrics per call."""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from . import identity as ident
from .errors import DomainError, InvalidArgument, Unauthenticated
from .observability import LATENCY, REQUESTS

log = structlog.get_logger()

ERROR_DOMAIN = "llmops.dev"
MESSAGE_KEY = "x-llmops-message"
PARAM_KEY = "x-llmops-param"  # the field an error is about: OpenAI's error "param" on /v1
_response_metadata: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "response_metadata", default=())


def add_response_metadata(*pairs: tuple[str, str]) -> None:
    """Initial metadata (HTTP response headers through the gateway) for the unary call being
    handled; sent with the envelope message, since a call sends its initial metadata only once."""
    _response_metadata.set(_response_metadata.get() + pairs)


def _status_details(code: grpc.StatusCode, message: str, reason: str,
                    param: str | None = None) -> tuple[tuple[str, str | bytes], ...]:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    details = [info]
    if param:
        violation = any_pb2.Any()
        violation.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=param, description=message)]))
        details.append(violation)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return (("grpc-status-details-bin", status.SerializeToString()),
            *(((PARAM_KEY, _header_value(param)),) if param else ()))


def _header_value(text: str) -> str:
    """text as a metadata value, which gRPC allows printable ASCII only in: a param can hold the caller's
    own characters (a logit_bias key), escaped here as JSON escapes them (the status details keep them)."""
    return text if text.isascii() and text.isprintable() else json.dumps(text)[1:-1]


@dataclass(frozen=True)
class _Undecodable:
    """A request protobuf would not parse: answered 400 inside the call, not grpc's bare INTERNAL."""

    error: str


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return parse


def _check_decoded(request: Any) -> None:
    if isinstance(request, _Undecodable):
        # Protobuf parses at most 100 nested messages; a JSON Struct spends two or three per level.
        raise InvalidArgument("the request could not be parsed: it nests too deeply (at most about 30 levels of "
                              "JSON objects or arrays)", reason="REQUEST_TOO_DEEP")


class CallInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str, table: ident.AccessTable, *, service_token: str | None = None,
                 credential_required: bool = False) -> None:
        self._service = service
        self._table = table
        self._service_token = service_token
        self._credential_required = credential_required

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with _Call(self, method, context) as call:
                    call.authorize()
                    _check_decoded(request)
                    response = await inner(request, context)
                    await call.send_envelope_message()
                    return response

            return grpc.unary_unary_rpc_method_handler(
                unary, _tolerant(handler.request_deserializer), handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with _Call(self, method, context) as call:
                    call.authorize()
                    _check_decoded(request)
                    async for item in inner_stream(request, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(
                stream, _tolerant(handler.request_deserializer), handler.response_serializer)
        return handler  # client/bidi streaming: only the standard services use them


class _Call:
    """One call's bookkeeping, as an async context manager around the handler."""

    def __init__(self, owner: CallInterceptor, method: str, context: grpc.aio.ServicerContext) -> None:
        self.owner, self.method, self.context = owner, method, context
        self.rule = None

    async def __aenter__(self) -> "_Call":
        self.started = time.perf_counter()
        pairs = [(m.key, m.value) for m in self.context.invocation_metadata() or () if isinstance(m.value, str)]
        metadata = {key: value for key, value in pairs}
        try:
            self.identity, self.identity_error = ident.identity_from_metadata(ident.call_metadata(pairs)), None
        except DomainError as exc:  # answered by authorize(), inside the call, as any other error
            self.identity, self.identity_error = ident.ANONYMOUS, exc
        self.platform_process = ident.service_credential_ok(metadata, self.owner._service_token)
        self.request_id = metadata.get(ident.REQUEST_ID_KEY) or str(uuid.uuid4())
        ident.bind(self.identity, self.request_id)
        _response_metadata.set(())
        structlog.contextvars.bind_contextvars(request_id=self.request_id, user=self.identity.user_id)
        return self

    def authorize(self) -> None:
        if self.owner._credential_required and not self.platform_process \
                and not self.owner._table.is_public_service(self.method):
            raise Unauthenticated(
                "this service answers only the gateway and the platform's own processes, which present the "
                "service credential: call it through the gateway", reason="SERVICE_CREDENTIAL_REQUIRED")
        if self.identity_error is not None:
            raise self.identity_error
        self.rule = self.owner._table.check(self.method, self.identity, platform_process=self.platform_process)

    async def send_envelope_message(self) -> None:
        extra = _response_metadata.get()
        if self.rule is not None and not self.rule.raw_response:
            await self.context.send_initial_metadata(((MESSAGE_KEY, self.rule.success_message), *extra))
        elif extra:
            await self.context.send_initial_metadata(extra)

    async def __aexit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> bool:
        code = grpc.StatusCode.OK
        try:
            if isinstance(exc, DomainError):
                code = exc.code
                retry = () if exc.retry_after_s is None else (("retry-after", str(exc.retry_after_s)),)
                if exc.should_retry is not None:
                    retry += (("x-should-retry", "true" if exc.should_retry else "false"),)
                await self.context.abort(code, exc.message,
                                         _status_details(code, exc.message, exc.reason, exc.param) + retry)
            elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                code = grpc.StatusCode.CANCELLED  # the client went away
            elif exc is not None and not isinstance(exc, grpc.aio.AbortError):
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error", method=self.method)
                message = f"internal error (request id {self.request_id})"
                await self.context.abort(code, message, _status_details(code, message, "INTERNAL"))
            elif exc is not None:
                code = self.context.code() or grpc.StatusCode.UNKNOWN  # handler aborted itself
            return False
        finally:
            elapsed = time.perf_counter() - self.started
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            method = self.method.rsplit("/", 1)[-1]
            REQUESTS.labels(self.owner._service, method, name).inc()
            LATENCY.labels(self.owner._service, method, name).observe(elapsed)
            log.info("rpc", method=self.method, code=name, latency_ms=round(elapsed * 1000, 2))
            structlog.contextvars.unbind_contextvars("request_id", "user")
