"""Which environment (dev, stg, prod) a request to the gateway is for.

The Host names it, as the seed's BASE_URLs do: the gateway (Envoy) has a virtual host per
environment whose domains are "<environment>.*", so a Host whose first label is an
environment's name (prod.llm-ops.local, prod.llm-ops.local:8080, prod.example.com) is that
environment, and any other (localhost, 127.0.0.1, a name that is not one) is the default
environment. For native gRPC the Host is the :authority. Each virtual host sets
ENVIRONMENT_KEY on the request it forwards, over whatever the client sent, so the router reads
an environment only the Host chose; a call that reaches the router without it (a platform
process, not through the gateway) is for the default environment."""

from __future__ import annotations

from dataclasses import dataclass

from .settings import ENVIRONMENT_NAMES, Settings

ENVIRONMENT_KEY = "x-llmops-environment"


@dataclass(frozen=True)
class EnvironmentHost:
    """One virtual host of the gateway: requests whose Host matches one of domains are for environment."""

    name: str
    environment: str
    domains: tuple[str, ...]


def environment_hosts(settings: Settings) -> list[EnvironmentHost]:
    """The gateway's virtual hosts. Every known environment has one, served here or not: a Host that
    names one this platform does not serve reaches the router, which says so (404), rather than
    being served the default environment's endpoints under that name."""
    named = [EnvironmentHost(name=f"gateway-{e}", environment=e, domains=(f"{e}.*",)) for e in ENVIRONMENT_NAMES]
    return [*named, EnvironmentHost(name="gateway", environment=settings.environment, domains=("*",))]
