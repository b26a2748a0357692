"""llama.cpp's own server (`llama-server`), the peer of the platform's llama.cpp replica in the
concurrency and shared-prefix scenarios. Built from the llama.cpp sources that our llama-cpp-python
wheel vendors (its PyPI sdist) with the wheel's portable flags (deploy/scripts/llama_build.py), once,
into build/bench-llama-server/<version, flags>/ (`make bench` runs `python -m bench.llama_server`);
run on the bundled chat model's GGUF with the replica's threads and context, its slots as `--parallel`,
continuous batching on and prompt caching at its default (on)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import requests

from .stack import BUNDLED, CHATML, ROOT, die_with_parent, free_ports, wait_for

import llama_build  # noqa: E402, I001 - deploy/scripts and services, on sys.path through stack
from shared.model_limits import context_length, replica_slots  # noqa: E402

# What the server needs beyond the wheel's flags. The web UI's assets would be downloaded during the build
# (LLAMA_USE_PREBUILT_UI) and nothing here opens the UI; HTTPS (OpenSSL) is not used either. These sources
# dropped LLAMA_CURL (passing it only prints a deprecation warning), so it is not passed.
SERVER_ARGS = ("-DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF "
               "-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF")
HOME = ROOT / "build" / "bench-llama-server"
SDIST = HOME / "sdist" / f"llama_cpp_python-{llama_build.VERSION}.tar.gz"
_KEY = hashlib.sha256(f"{llama_build.VERSION} {llama_build.CMAKE_ARGS} {SERVER_ARGS}".encode()).hexdigest()[:12]
# Other flags or another version, another directory: a binary is never reused for what it was not built with.
BUILD = HOME / f"llama.cpp-{llama_build.VERSION}-{llama_build.BASELINE}-{_KEY}"
BINARY = BUILD / "cmake" / "bin" / "llama-server"
STAMP = BUILD / ".built"  # written once the binary ran: a build cut short is resumed, not trusted
CHAT_MODEL = next(m for m in BUNDLED if m["type"] == "chat")


def built() -> bool:
    return STAMP.exists() and BINARY.exists()


def install() -> None:
    """Build llama-server unless this version and these flags built it already."""
    if built():
        return
    print(f"bench: building llama-server from the llama.cpp of llama-cpp-python {llama_build.VERSION} for "
          f"{llama_build.BASELINE} (once: 11 minutes on 2 busy cores) into {BUILD.relative_to(ROOT)}", flush=True)
    source = BUILD / "src"
    if not source.exists():
        partial = BUILD / "src.partial"  # renamed once whole: an extraction cut short is redone
        shutil.rmtree(partial, ignore_errors=True)
        _extract(_sdist(), partial)
        partial.rename(source)
    cmake = BUILD / "cmake"
    subprocess.run(["cmake", "-S", str(source), "-B", str(cmake), *llama_build.CMAKE_ARGS.split(),
                    *SERVER_ARGS.split()], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(cmake), "--target", "llama-server", "--parallel",
                    str(os.cpu_count() or 2)], check=True, stdout=subprocess.DEVNULL)
    version = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True, check=True)
    STAMP.write_text(f"{llama_build.CMAKE_ARGS} {SERVER_ARGS}\n{version.stderr.strip()}\n")
    print(f"bench: built {BINARY.relative_to(ROOT)}", flush=True)


def _sdist() -> Path:
    """llama-cpp-python's sdist from PyPI, once (llama_build.py builds its wheel straight from PyPI and
    keeps no sdist)."""
    if not SDIST.exists():
        print(f"bench: downloading the llama-cpp-python {llama_build.VERSION} sdist (75 MB)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--dest", str(SDIST.parent), f"llama-cpp-python=={llama_build.VERSION}"], check=True)
    return SDIST


def _extract(sdist: Path, dest: Path) -> None:
    """Its vendor/llama.cpp, into dest; not its .git, a submodule's pointer into a repository the sdist
    does not hold (git would fail on it at every configure)."""
    prefix = f"llama_cpp_python-{llama_build.VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            if member.name.startswith(prefix) and member.name != f"{prefix}.git":
                member.name = member.name[len(prefix):]
                members.append(member)
        tar.extractall(dest, members=members, filter="data")


class LlamaServer:
    """llama-server on the bundled chat model, in `work`, until stop(). Its chat template is the one the
    platform renders for that model (CHATML), so both see the same prompt tokens."""

    def __init__(self, work: Path, *, slots: int, threads: int, context_per_slot: int) -> None:
        self.work = work
        self.slots = slots
        self.threads = threads
        self.context = slots * context_per_slot  # llama-server splits -c among its slots
        self.port = free_ports(1)[0]
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    @classmethod
    def like_replica(cls, work: Path, *, threads: int) -> LlamaServer:
        """As one replica of the bundled chat model: its slots (model_limits), its context per slot, the
        threads given (the replica's)."""
        metadata = CHAT_MODEL["metadata"]
        return cls(work, slots=replica_slots(CHAT_MODEL["runtime"], metadata), threads=threads,
                   context_per_slot=context_length(metadata))

    def argv(self) -> list[str]:
        from deployment.runtimes.triton import resolve_artifact

        return [str(BINARY), "-m", str(resolve_artifact(CHAT_MODEL["artifactUri"])), "--parallel", str(self.slots),
                "-c", str(self.context), "-t", str(self.threads), "-tb", str(self.threads), "-cb",
                "--jinja", "--chat-template-file", str(self.work / "chatml.jinja"),
                "--host", "127.0.0.1", "--port", str(self.port)]

    def describe(self, *, build: bool = False) -> str:
        """Its command line as the table shows it (no paths); with how it was built, as the JSON records it."""
        line = f"llama-server --parallel {self.slots} -c {self.context} -t {self.threads} -cb"
        if not build:
            return line
        return f"{line} (llama.cpp of llama-cpp-python {llama_build.VERSION}, {llama_build.BASELINE})"

    def start(self, timeout: float = 120) -> None:
        if not built():
            raise RuntimeError(f"{BINARY} is not built: run `{sys.executable} -m bench.llama_server` "
                               "(make bench does)")
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "chatml.jinja").write_text(CHATML)
        log = (self.work / "llama-server.log").open("wb")
        self.process = subprocess.Popen(die_with_parent(self.argv()), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_for(self._healthy, timeout, "llama-server's /health")

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"llama-server exited ({self.process.returncode}); see {self.work / 'llama-server.log'}")
        try:
            return requests.get(f"{self.base}/health", timeout=2).status_code == 200  # 503 while it loads
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


if __name__ == "__main__":
    began = time.monotonic()
    install()
    print(f"bench: llama-server ready ({BINARY.relative_to(ROOT)}, {time.monotonic() - began:.0f}s)", flush=True)
