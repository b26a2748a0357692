#!/usr/bin/env python3
"""What `make compose-check` asks of the platform docker-compose.yml started, through its gateway.

    compose_workflow.py GATEWAY_URL      e.g. http://127.0.0.1:18080

1. The bundled chat model registered by a researcher and approved by a reviewer (README, First calls):
   compose, unlike `make up`, registers nothing (deploy/scripts/bundled_models.py says what it is).
2. The seed document's section 8 (tests/seed/serving-examples.ko.md) as it is written, its inference
   call uncommented, with only the host and the model id replaced: deploy chat-model, wait until it is
   healthy, its health check, a chat.
3. One more chat, whose answer must hold text.
Exit 0 when all of it did what a user would see; otherwise 1 and what went wrong.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from bundled_models import BUNDLED

SEED = Path(__file__).resolve().parents[2] / "tests" / "seed" / "serving-examples.ko.md"
SEED_HOST = "https://dev.llm-ops.local"
SEED_MODEL_ID = "123e4567-e89b-12d3-a456-426614174000"
TIMEOUT_S = 120


class WorkflowFailed(Exception):
    pass


def call(method: str, url: str, body: dict | None = None, *, user: str = "admin", roles: str = "admin") -> dict:
    """One REST call with a trusted-headers identity; the envelope's data, or WorkflowFailed saying why."""
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json", "X-User-Id": user,
                                              "X-User-Roles": roles})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 (the gateway we started)
            envelope = json.load(response)
    except urllib.error.HTTPError as exc:
        raise WorkflowFailed(f"{method} {url}: HTTP {exc.code} {exc.read().decode(errors='replace')}") from exc
    if envelope.get("status") != "success":
        raise WorkflowFailed(f"{method} {url}: {envelope}")
    return envelope["data"]


def register_approved_chat_model(api: str) -> str:
    """The bundled chat model (inside the services' image), as `make up` registers it, by hand."""
    spec = next(model for model in BUNDLED if model["type"] == "chat")
    model = call("POST", f"{api}/catalog/models", spec, user="rita", roles="researcher")
    for status in ("pending_review", "approved"):
        model = call("PATCH", f"{api}/catalog/models/{model['id']}/status", {"status": status},
                     user="victor", roles="reviewer")
    if model["status"] != "approved":
        raise WorkflowFailed(f"the model is {model['status']}, not approved")
    print(f"model {model['id']} registered and approved")
    return model["id"]


def seed_section_8(gateway: str, model_id: str) -> None:
    """Section 8 as written (the inference call uncommented), in a fresh interpreter; its printout checked."""
    text = SEED.read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index("## 8. 전체 워크플로우"):], re.S).group(1)
    code = code.replace(SEED_HOST, gateway).replace(SEED_MODEL_ID, model_id).replace('"""\n', "")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    print(result.stdout, end="")
    out = result.stdout
    expected = ["Endpoint is healthy!", "Health status: healthy", "Inference response: {'status': 'success'"]
    missing = [line for line in expected if line not in out]
    if result.returncode != 0 or missing or not out.rstrip().endswith("Workflow completed successfully!"):
        raise WorkflowFailed(f"section 8: exit {result.returncode}, missing {missing}\n{result.stderr}")


def chat(api: str) -> None:
    data = call("POST", f"{api}/serve/chat-model/chat",
                {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 16, "temperature": 0},
                user="user123", roles="researcher")
    answer = data["choices"][0]["message"]["content"]
    if not answer.strip():
        raise WorkflowFailed(f"the chat answered no text: {data}")
    print(f"chat: {answer.strip()!r} ({data['usage']['completion_tokens']} tokens)")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    gateway = argv[0].rstrip("/")
    api = f"{gateway}/llm-ops/v1"
    try:
        model_id = register_approved_chat_model(api)
        seed_section_8(gateway, model_id)
        chat(api)
    except WorkflowFailed as exc:
        print(f"compose workflow failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
