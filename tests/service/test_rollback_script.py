"""The seed's ./infra/scripts/serving_rollback.sh, against the real gateway."""

from __future__ import annotations

import os
import subprocess
import uuid

import requests

from ..helpers import ADMIN, ON_SQLITE_ONLY, REPO_ROOT, approved_model, deploy, deploy_body, wait_status

pytestmark = ON_SQLITE_ONLY  # the rollback script, a client, not the repositories

SCRIPT = REPO_ROOT / "infra" / "scripts" / "serving_rollback.sh"


def run(gateway, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLMOPS_BASE_URL": gateway.api, "LLMOPS_ROLLBACK_TIMEOUT": "20"}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_rolls_back_and_waits_until_serving(gateway):
    first, second = approved_model(gateway), approved_model(gateway)
    ep = deploy(gateway, deploy_body(first["id"])).json()["data"]
    url = f"{gateway.api}/serving/endpoints/{ep['id']}"
    requests.patch(url, json={"modelId": second["id"]}, headers=ADMIN).raise_for_status()
    wait_status(gateway, ep["id"], "healthy")
    out = run(gateway, ep["id"])
    assert out.returncode == 0, out.stderr
    assert f"endpoint {ep['id']} rolled back and healthy" in out.stdout
    data = requests.get(url, headers=ADMIN).json()["data"]
    assert (data["modelId"], data["status"]) == (first["id"], "healthy")


def test_unknown_endpoint(gateway):
    missing = str(uuid.uuid4())
    out = run(gateway, missing)
    assert out.returncode == 2
    assert f"serving endpoint {missing} not found" in out.stderr


def test_nothing_to_roll_back(gateway):
    model = approved_model(gateway)
    ep = deploy(gateway, deploy_body(model["id"])).json()["data"]
    out = run(gateway, ep["id"])
    assert out.returncode == 1
    assert "nothing to roll back" in out.stderr


def test_usage():
    out = subprocess.run([str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 2 and "usage:" in out.stderr
