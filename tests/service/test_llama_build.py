"""The portable llama.cpp: built with explicit flags into a directory named after
them, installed from there, and proven by a multi-token generation in a
subprocess before `make up` or `make test` go on."""

from __future__ import annotations

import sys

from ..helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "deploy" / "scripts"))
import llama_build  # noqa: E402


def test_the_installed_library_generates_several_tokens_on_this_cpu():
    assert llama_build.installed_flags() == llama_build.CMAKE_ARGS
    assert llama_build.check() is None


def test_the_flags_are_portable():
    flags = llama_build.CMAKE_ARGS.split()
    assert "-DGGML_NATIVE=OFF" in flags and "-DGGML_AVX2=ON" in flags
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF", "-DGGML_AVX512=OFF"} <= set(flags)
    assert not any("march=native" in f for f in flags)


def test_a_wheel_built_with_other_flags_lives_elsewhere():
    assert llama_build.wheel_dir("-DGGML_NATIVE=ON") != llama_build.wheel_dir()
    assert llama_build.wheel_dir().name.startswith(f"llama-cpp-python-{llama_build.VERSION}-x86-64-v3-")


def test_a_wheel_built_on_another_c_library_lives_elsewhere():
    """The services' image (glibc 2.36) copies .cache/wheels in: a newer host's wheel is not its."""
    assert llama_build.wheel_dir(libc=("glibc", "2.39")) != llama_build.wheel_dir(libc=("glibc", "2.36"))
    assert "-glibc2.36-" in llama_build.wheel_dir(libc=("glibc", "2.36")).name


def test_a_library_that_faults_fails_the_check_with_one_line_and_the_fix(monkeypatch, capsys):
    # The generation replaced by one that dies like AMX code on a CPU without AMX.
    monkeypatch.setattr(llama_build, "CHECK", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    assert llama_build.main(["llama_build.py", "check"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "llama.cpp cannot generate on this CPU (killed by SIGILL)" in line
    assert "make install" in line and llama_build.wheel_dir().name in line


def test_a_library_built_by_someone_else_is_refused(monkeypatch):
    monkeypatch.setattr(llama_build, "installed_flags", lambda: "")  # pip's own (native) build has no stamp
    assert "not built with the portable flags" in llama_build.check()
