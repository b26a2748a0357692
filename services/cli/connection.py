"""Where the gateway is and who the caller is, and the stubs to call it with.

Flags win over the environment (click reads both), which wins over the config
file. The file is read on first use, so `--help` works with a broken one."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc

from llmops.v1 import deployment_pb2_grpc, experiment_pb2_grpc, inference_pb2_grpc, registry_pb2_grpc

from .errors import CliError, ExitCode

DEFAULT_URL = "http://localhost:8080"
FILE_KEYS = ("url", "user", "roles", "token")
CALL_TIMEOUT_S = 30.0  # a unary call that takes longer than this is stuck, not slow


def default_config_path() -> Path:
    return Path.home() / ".config" / "llmops" / "config.toml"


def read_config_file(path: Path, *, named: bool) -> dict[str, str]:
    """The file's settings. A missing file is no settings, unless the user named it."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if named:
            raise CliError(f"config file {path} does not exist", ExitCode.USAGE) from None
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"config file {path}: {exc}", ExitCode.USAGE) from None
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise CliError(f"config file {path}: unknown key {', '.join(unknown)} (known: {', '.join(FILE_KEYS)})",
                       ExitCode.USAGE)
    not_text = sorted(key for key, value in data.items() if not isinstance(value, str))
    if not_text:
        raise CliError(f"config file {path}: {', '.join(not_text)} must be a string", ExitCode.USAGE)
    return data


@dataclass(frozen=True)
class Connection:
    url: str = DEFAULT_URL
    user: str = ""
    roles: str = ""
    token: str = ""

    @classmethod
    def resolve(cls, flags: dict[str, str | None], config: Path | None) -> Connection:
        """Flags and environment (already merged by click), then the config file, then defaults."""
        file = read_config_file(config or default_config_path(), named=config is not None)
        values = {key: flags.get(key) or file.get(key) or "" for key in FILE_KEYS}
        return cls(url=values["url"] or DEFAULT_URL, user=values["user"], roles=values["roles"],
                   token=values["token"])

    def target(self) -> tuple[str, bool]:
        """The gateway's host:port, and whether to use TLS (https://). A path, such as the REST
        base URL's /llm-ops/v1, is ignored: gRPC routes by the method's own path."""
        parts = urlsplit(self.url if "://" in self.url else f"http://{self.url}")
        bad = CliError(f"gateway URL {self.url!r} is not http://host:port or https://host:port", ExitCode.USAGE)
        try:
            port = parts.port
        except ValueError:  # not a number, or out of range
            raise bad from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad
        tls = parts.scheme == "https"
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return f"{host}:{port or (443 if tls else 80)}", tls

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The identity as the gateway reads it: a bearer token (jwt mode) or the trusted headers."""
        pairs = []
        if self.token:
            pairs.append(("authorization", f"Bearer {self.token}"))
        if self.user:
            pairs.append(("x-user-id", self.user))
        if self.roles:
            pairs.append(("x-user-roles", self.roles))
        return tuple(pairs)


class Gateway:
    """The public services' stubs on one channel to the gateway, called as the configured caller."""

    def __init__(self, flags: dict[str, str | None], config: Path | None) -> None:
        self._flags, self._config = flags, config

    @cached_property
    def connection(self) -> Connection:
        return Connection.resolve(self._flags, self._config)

    @cached_property
    def channel(self) -> grpc.Channel:
        target, tls = self.connection.target()
        return grpc.secure_channel(target, grpc.ssl_channel_credentials()) if tls else grpc.insecure_channel(target)

    @cached_property
    def registry(self) -> registry_pb2_grpc.RegistryServiceStub:
        return registry_pb2_grpc.RegistryServiceStub(self.channel)

    @cached_property
    def deployment(self) -> deployment_pb2_grpc.DeploymentServiceStub:
        return deployment_pb2_grpc.DeploymentServiceStub(self.channel)

    @cached_property
    def experiment(self) -> experiment_pb2_grpc.ExperimentServiceStub:
        return experiment_pb2_grpc.ExperimentServiceStub(self.channel)

    @cached_property
    def inference(self) -> inference_pb2_grpc.InferenceServiceStub:
        return inference_pb2_grpc.InferenceServiceStub(self.channel)

    def call(self, method: Callable[..., Any], request: Any, *, timeout_s: float | None = CALL_TIMEOUT_S) -> Any:
        return method(request, metadata=self.connection.metadata(), timeout=timeout_s)

    def pages(self, method: Callable[..., Any], request: Any, field: str, *, limit: int = 0) -> Iterator[Any]:
        """Every item of a paginated List (AIP-158), following next_page_token; at most `limit` (0: all)."""
        count = 0
        while True:
            response = self.call(method, request)
            for item in getattr(response, field):
                yield item
                count += 1
                if count == limit:
                    return
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token
