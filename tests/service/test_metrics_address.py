"""Where /metrics listens (issue 21, item 6): this machine's loopback unless LLMOPS_METRICS_ADDRESS
opens it for a scraper (Kubernetes' platform.env does)."""

from __future__ import annotations

import psutil
import pytest
import requests

from shared.observability import serve_metrics
from shared.settings import Settings

from ..helpers import free_port


def listening_address(port: int) -> str:
    [address] = [c.laddr.ip for c in psutil.Process().net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    return address


@pytest.mark.parametrize("address", [None, "0.0.0.0"], ids=["default", "opened"])
def test_metrics_listen_on_loopback_unless_configured(address):
    settings = Settings(_env_file=None, **({"metrics_address": address} if address else {}))
    port = free_port()
    server = serve_metrics(port, settings.metrics_address)
    try:
        assert listening_address(port) == (address or "127.0.0.1")
        assert "llmops_grpc_requests_total" in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()

