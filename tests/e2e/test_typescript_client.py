"""The TypeScript client package (clients/typescript): its stubs and helper type-check, it builds
and imports by its package name, and its Node tests pass against the real gateway over native
gRPC (registry, deployment and a real SmolLM2 chat, unary and streaming)."""

from __future__ import annotations

import os
import re
import subprocess


from ..helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "clients" / "typescript"
TSC = str(REPO_ROOT / "node_modules" / ".bin" / "tsc")
NODE_TESTS = 12  # clients/typescript/test/client.test.ts: 3 without a server, 9 through the gateway


def run(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                          env={**os.environ, **(env or {})})


def summary(tap: str) -> dict[str, int]:
    """node --test's closing counts (`# pass 12`, `# fail 0`, ...)."""
    return {name: int(count) for name, count in re.findall(r"^# (\w+) (\d+)$", tap, re.MULTILINE)}


def test_the_package_and_its_tests_type_check():
    out = run(TSC, "-p", str(PACKAGE))
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_built_package_imports_by_its_name():
    """As an application that installed @llmops/client sees it: dist/ through package.json's exports."""
    build = run(TSC, "-p", str(PACKAGE / "tsconfig.build.json"))
    assert build.returncode == 0, build.stdout + build.stderr
    script = ("import * as llmops from '@llmops/client';"
              "const request = llmops.ChatRequest.fromPartial({ name: 'chat-model', maxTokens: 4 });"
              "const clients = llmops.createClients('127.0.0.1:1', { identity: { userId: 'u', roles: ['viewer'] } });"
              "console.log(JSON.stringify({ bytes: llmops.ChatRequest.encode(request).finish().length,"
              " clients: Object.keys(clients).sort(), unary: typeof llmops.unary }));"
              "clients.close();")
    out = run("node", "--input-type=module", "-e", script, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ('{"bytes":14,"clients":["close","deployment","experiment","inference","openai",'
                                  '"registry"],"unary":"function"}')


def test_the_node_tests_through_the_gateway(infer):
    out = run("node", "--import", "tsx", "--test", str(PACKAGE / "test" / "client.test.ts"), timeout=600,
              env={"LLMOPS_URL": infer.gateway.url, "CHAT_ENDPOINT": infer.chat["name"],
                   "CHAT_MODEL_ID": infer.chat["modelId"]})
    assert out.returncode == 0, out.stdout + out.stderr
    counts = summary(out.stdout)
    assert (counts.get("pass"), counts.get("fail"), counts.get("skipped")) == (NODE_TESTS, 0, 0), out.stdout
