"""Structured logs and Prometheus metrics shared by every service.

A log line with `notice=True` is one a person running the platform follows as it happens
(a rollout started, an endpoint's status changed), unlike a line per call: `make up` shows
it in its terminal beside the warnings and errors, and leaves the rest to its log files."""

from __future__ import annotations

import logging
import sys
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import Counter, Histogram, start_http_server

from .identity import REQUEST_ID_KEY, current_request_id

REQUESTS = Counter(
    "llmops_grpc_requests_total", "gRPC calls handled, by method and status code.",
    ["service", "method", "code"],
)
LATENCY = Histogram(
    "llmops_grpc_request_duration_seconds", "gRPC call latency, by method and status code.",
    ["service", "method", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def configure_logging(*, level: str = "INFO", json: bool = True) -> None:
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    common = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
              structlog.processors.TimeStamper(fmt="iso", utc=True)]
    # Libraries' own logging (alembic's migrations, ...) in the same form on the same stream, so that
    # every line has a level: the per-line cost of the standard library is theirs alone.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*common, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer]))
    logging.basicConfig(handlers=[handler], level=level.upper())
    structlog.configure(
        processors=[*common, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # Straight to stderr, not through the standard library's logging (a LogRecord, a handler
        # and its lock per line): the services log a line per call.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def serve_metrics(port: int, address: str = "127.0.0.1") -> WSGIServer | None:
    """Expose /metrics on address:port (port 0: disabled); the server, to shut it down. Loopback unless
    settings.metrics_address opens it: a scraper elsewhere is the exception. A port that is taken costs
    the metrics, not the service."""
    if not port:
        return None
    try:
        server, _ = start_http_server(port, addr=address)
    except OSError as exc:
        structlog.get_logger().warning("no /metrics: the port is taken", port=port, address=address, error=str(exc))
        return None
    return server


def request_id_metadata() -> tuple[tuple[str, str], ...]:
    """gRPC metadata that carries the request being handled to another service, so that its log
    lines there carry the same request id (empty outside a request)."""
    request_id = current_request_id()
    return ((REQUEST_ID_KEY, request_id),) if request_id else ()
