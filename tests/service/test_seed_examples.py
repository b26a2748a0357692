"""The seed document's own Python examples (tests/seed/serving-examples.ko.md,
a copy of the user document), run as written with only the base URL and the
placeholder ids changed, against the real gateway."""

from __future__ import annotations

import re

from ..helpers import (
    ON_SQLITE_ONLY, SEED, SEED_ENDPOINT_ID, SEED_HOST, SEED_MODEL_ID, approved_model, deploy, deploy_body, run_example,
)

pytestmark = ON_SQLITE_ONLY  # the seed document's client code, not the repositories


def python_block(heading: str) -> str:
    """The first ```python block after the given heading."""
    text = SEED.read_text()
    start = text.index(heading)
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_section_1_2_deploy_with_python(gateway, capsys):
    model = approved_model(gateway)
    code = python_block("### 1.2 Python").replace(SEED_HOST, gateway.url).replace(SEED_MODEL_ID, model["id"])
    # Each database of the suite runs this once; the seed's route is the same every time.
    out = run_example(code, capsys)
    assert re.match(r"Endpoint deployed: [0-9a-f-]{36} at /llm-ops/v1/serve/chat-model\n", out), out


def test_section_6_3_rollback_with_python(gateway, capsys):
    first, second = approved_model(gateway), approved_model(gateway)
    ep = deploy(gateway, deploy_body(first["id"])).json()["data"]
    import requests
    requests.patch(f"{gateway.api}/serving/endpoints/{ep['id']}", json={"modelId": second["id"]},
                   headers={"X-User-Id": "admin", "X-User-Roles": "admin"}).raise_for_status()
    code = python_block("### 6.3 Python").replace(SEED_HOST, gateway.url).replace(SEED_ENDPOINT_ID, ep["id"])
    out = run_example(code, capsys)
    assert out == f"Endpoint {ep['id']} rolled back successfully\nRollback status: rollback\n"


def test_section_6_3_unknown_endpoint_prints_the_envelope_message(gateway, capsys):
    code = python_block("### 6.3 Python").replace(SEED_HOST, gateway.url)
    out = run_example(code, capsys)
    assert out == f"Error: Rollback failed: serving endpoint {SEED_ENDPOINT_ID} not found\n"
