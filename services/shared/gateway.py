"""Renders the Envoy bootstrap (gateway/envoy.yaml.j2) for a set of upstream services."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from .settings import REPO_ROOT, Settings

GATEWAY_DIR = REPO_ROOT / "gateway"
DESCRIPTOR = REPO_ROOT / "build" / "api_descriptor.pb"


def render_envoy_config(
    settings: Settings,
    *,
    clusters: dict[str, tuple[str, int]],
    out_dir: Path,
    listen_port: int | None = None,
    admin_port: int | None = None,
) -> Path:
    """Write envoy.yaml into out_dir and return its path. clusters: name -> (host, port)."""
    env = Environment(loader=FileSystemLoader(GATEWAY_DIR), undefined=StrictUndefined, keep_trailing_newline=True)
    text = env.get_template("envoy.yaml.j2").render(
        listen_port=settings.gateway_port if listen_port is None else listen_port,
        listen_address=settings.gateway_listen_address,
        trusted_proxies=settings.gateway_trusted_proxies,
        admin_port=settings.gateway_admin_port if admin_port is None else admin_port,
        descriptor_path=str(DESCRIPTOR),
        max_body_bytes=settings.gateway_max_body_bytes,
        identity_mode=settings.gateway_identity_mode,
        jwt={"issuer": settings.jwt_issuer, "audiences": settings.jwt_audiences, "jwks_path": settings.jwt_jwks_path},
        lua_path=str(GATEWAY_DIR / "envelope.lua"),
        upstream_timeout_s=settings.gateway_upstream_timeout_s,
        clusters={name: {"host": host, "port": port} for name, (host, port) in clusters.items()},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "envoy.yaml"
    path.write_text(text)
    return path
