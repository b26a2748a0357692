"""OpenAI's API reference on /v1, through the real Envoy, router, Triton and llama.cpp:
the official openai SDK where it exercises the shape, raw HTTP where the exact JSON
matters, and the same parameters on the enveloped /serve/{name} API. What the router refuses
without a model behind it is tests/service/test_openai_validation.py."""

from __future__ import annotations

import base64
import os
import subprocess
import json

import numpy as np
import openai
import pytest
import requests


from ..helpers import OPENAI_HEADERS, REPO_ROOT, assert_refused, openai_client, openai_post


HI = [{"role": "user", "content": "Say hello."}]
CHAT, EMBED = "chat-model", "embedding-model"


@pytest.fixture(scope="module")
def client(infer) -> openai.OpenAI:
    return openai_client(infer.gateway)


def post(infer, path: str, body: dict) -> requests.Response:
    return openai_post(infer.gateway, path, body)


def events(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream"
    return [line[len("data: "):] for line in response.text.split("\n\n") if line]


# 1. streaming ---------------------------------------------------------------------------------------------

def test_a_stream_has_finish_reason_null_until_the_last_chunk_and_no_usage(client):
    chunks = list(client.chat.completions.create(model=CHAT, messages=HI, max_tokens=8, stream=True))
    reasons = [c.choices[0].finish_reason for c in chunks]
    assert reasons[:-1] == [None] * (len(chunks) - 1) and reasons[-1] in ("stop", "length")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()


def test_the_raw_stream_is_openais(infer):
    data = events(post(infer, "/v1/chat/completions", {"model": CHAT, "messages": HI, "max_tokens": 4,
                                                       "stream": True}))
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["delta"] == {} and len({c["id"] for c in chunks}) == 1


def test_include_usage_adds_one_final_chunk_with_empty_choices(client):
    chunks = list(client.chat.completions.create(model=CHAT, messages=HI, max_tokens=8, stream=True,
                                                 stream_options={"include_usage": True}))
    *content, last = chunks
    assert last.choices == [] and last.usage.completion_tokens >= 1
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None and len(c.choices) == 1 for c in content)
    assert content[-1].choices[0].finish_reason in ("stop", "length")


def test_include_usage_chunks_carry_usage_null(infer):
    data = events(post(infer, "/v1/completions", {"model": CHAT, "prompt": "Once upon", "max_tokens": 3,
                                                  "stream": True, "stream_options": {"include_usage": True}}))
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] <= 3
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-2]] == [None] * (len(chunks) - 2)


# 2. messages ----------------------------------------------------------------------------------------------

def test_content_parts_are_the_same_as_a_string(client):
    parts = [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello."}]
    as_parts = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": parts}],
                                              max_tokens=8, temperature=0)
    as_text = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Say\nhello."}],
                                             max_tokens=8, temperature=0)
    assert as_parts.choices[0].message.content == as_text.choices[0].message.content
    assert as_parts.usage.prompt_tokens == as_text.usage.prompt_tokens


def test_a_conversation_of_only_a_system_message_is_answered(client):
    answer = client.chat.completions.create(model=CHAT, max_tokens=4,
                                            messages=[{"role": "system", "content": "You are a poet."}])
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.prompt_tokens > 0


def test_developer_is_a_system_message(client):
    def ask(role: str) -> str:
        return client.chat.completions.create(model=CHAT, max_tokens=6, temperature=0, messages=[
            {"role": role, "content": "Answer in French."}, *HI]).choices[0].message.content
    assert ask("developer") == ask("system")


def test_the_unary_shape_is_openais(infer):
    response = post(infer, "/v1/chat/completions", {"model": CHAT, "messages": HI, "max_tokens": 2})
    body = response.json()
    assert set(body) == {"id", "object", "created", "model", "system_fingerprint", "choices", "usage"}
    assert body["choices"][0]["logprobs"] is None and body["choices"][0]["message"]["role"] == "assistant"


# 3. parameters --------------------------------------------------------------------------------------------

def test_max_completion_tokens_wins_over_max_tokens(client):
    answer = client.chat.completions.create(model=CHAT, messages=HI, max_tokens=40, max_completion_tokens=1)
    assert answer.usage.completion_tokens == 1 and answer.choices[0].finish_reason == "length"


def test_a_seed_makes_a_sampled_answer_reproducible(client):
    def sample(seed: int) -> str:
        return client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "Write a short story."}], max_tokens=16,
            temperature=1.0, seed=seed).choices[0].message.content
    assert sample(7) == sample(7)
    assert len({sample(7), sample(8), sample(9), sample(10)}) > 1


REPEAT = [{"role": "user", "content": "Write the word 'apple' twenty times, separated by spaces."}]


@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty"])
def test_penalties_change_what_a_greedy_answer_repeats(client, penalty):
    def answer(**extra) -> str:
        return client.chat.completions.create(model=CHAT, messages=REPEAT, max_tokens=24, temperature=0,
                                              **extra).choices[0].message.content
    plain = answer()
    assert answer(**{penalty: 2.0}) != plain
    assert answer(**{penalty: 0.0}) == plain


def test_what_has_no_effect_is_accepted(infer):
    body = {"model": CHAT, "messages": HI, "max_tokens": 2, "n": 1, "logit_bias": {}, "tools": [],
            "tool_choice": "none", "parallel_tool_calls": False, "store": False, "service_tier": "auto",
            "user": "u-1", "metadata": {"k": "v"}, "modalities": ["text"], "logprobs": False,
            "response_format": {"type": "text"}, "x_not_openai": {"anything": 1}}
    assert post(infer, "/v1/chat/completions", body).status_code == 200


def test_json_schema_output_parses_and_matches(client):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    answer = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Is the sky blue?"}], max_tokens=32, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "yes_no", "schema": schema}})
    assert json.loads(answer.choices[0].message.content) in ({"answer": "yes"}, {"answer": "no"})


def test_json_object_output_is_json(client):
    answer = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Describe a cat."}], max_tokens=48, temperature=0,
        response_format={"type": "json_object"})
    text = answer.choices[0].message.content
    assert text.lstrip().startswith("{")
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_n_choices_are_generated_side_by_side_and_a_seed_repeats_them(client):
    def ask():
        return client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Write a story."}],
                                              max_tokens=8, temperature=1.0, seed=3, n=3)
    answer = ask()
    texts = [c.message.content for c in answer.choices]
    assert [c.index for c in answer.choices] == [0, 1, 2] and len(set(texts)) > 1
    assert 3 <= answer.usage.completion_tokens <= 24
    assert [c.message.content for c in ask().choices] == texts


def test_n_streamed_choices_interleave_by_index(client):
    chunks = list(client.chat.completions.create(model=CHAT, messages=HI, max_tokens=6, n=2, stream=True,
                                                 stream_options={"include_usage": True}))
    *content, usage = chunks
    assert usage.choices == [] and usage.usage.completion_tokens >= 2
    for index in (0, 1):
        mine = [c.choices[0] for c in content if c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert [c.finish_reason is not None for c in mine] == [False] * (len(mine) - 1) + [True]


def test_completions_take_n(client):
    answer = client.completions.create(model=CHAT, prompt="Once upon a time", max_tokens=4, n=2, seed=1,
                                       temperature=1.0)
    assert [c.index for c in answer.choices] == [0, 1]


COMMA = 28  # "," in SmolLM2's vocabulary


def test_logit_bias_forces_and_bans_a_token(client):
    def answer(bias: dict[str, float], content: str = "Say hello.", max_tokens: int = 3) -> str:
        return client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": content}],
                                              max_tokens=max_tokens, temperature=0,
                                              logit_bias=bias).choices[0].message.content
    assert answer({str(COMMA): 100}) == ",,,"
    fruits = "Repeat exactly: apple, banana, cherry"
    assert "apple, banana" in answer({}, fruits, 16)
    assert "," not in answer({str(COMMA): -100}, fruits, 16)


def test_logprobs_give_each_token_and_its_likeliest_alternatives(client):
    answer = client.chat.completions.create(model=CHAT, messages=HI, max_tokens=6, temperature=0, logprobs=True,
                                            top_logprobs=3)
    entries = answer.choices[0].logprobs.content
    assert len(entries) == answer.usage.completion_tokens
    assert "".join(e.token for e in entries) == answer.choices[0].message.content
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3 and bytes(e.bytes).decode() == e.token
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        assert e.top_logprobs[0].token == e.token  # greedy: the likeliest is the one picked
    assert client.chat.completions.create(model=CHAT, messages=HI, max_tokens=2).choices[0].logprobs is None


def test_streamed_logprobs_come_with_their_text(client):
    chunks = list(client.chat.completions.create(model=CHAT, messages=HI, max_tokens=6, temperature=0,
                                                 logprobs=True, stream=True))
    text = [c for c in chunks if c.choices[0].delta.content]
    assert text and all("".join(e.token for e in c.choices[0].logprobs.content) == c.choices[0].delta.content
                        for c in text)


def test_completion_logprobs_in_the_legacy_shape(infer):
    body = post(infer, "/v1/completions", {"model": CHAT, "prompt": "The capital of France is", "max_tokens": 4,
                                           "temperature": 0, "logprobs": 2}).json()
    choice = body["choices"][0]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert len(logprobs["token_logprobs"]) == body["usage"]["completion_tokens"]
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
    offsets = logprobs["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets)
    assert_refused(post(infer, "/v1/completions", {"model": CHAT, "prompt": "Hi", "logprobs": 1, "echo": True}),
                   "echo")


@pytest.mark.parametrize("n", [1, 3])
def test_a_token_id_outside_the_vocabulary_is_a_400(infer, n):
    response = post(infer, "/v1/chat/completions", {"model": CHAT, "messages": HI, "n": n,
                                                    "logit_bias": {"9999999": 5}})
    assert response.status_code == 400 and "vocabulary" in response.json()["error"]["message"]


# completions ----------------------------------------------------------------------------------------------

def test_echo_prepends_the_prompt(client):
    answer = client.completions.create(model=CHAT, prompt="The capital of France is", max_tokens=3, echo=True)
    assert answer.choices[0].text.startswith("The capital of France is")
    streamed = list(client.completions.create(model=CHAT, prompt="The capital of France is", max_tokens=3,
                                              echo=True, stream=True))
    assert streamed[0].choices[0].text == "The capital of France is"
    assert [c.choices[0].finish_reason for c in streamed[:-1]] == [None] * (len(streamed) - 1)


def test_a_one_element_prompt_list_is_a_prompt(client):
    answer = client.completions.create(model=CHAT, prompt=["Once upon a time"], max_tokens=2)
    assert answer.usage.completion_tokens <= 2 and answer.object == "text_completion"


# 4. errors ------------------------------------------------------------------------------------------------

def test_a_json_body_sent_as_a_form_is_read_as_json(infer):
    # curl -d without -H sends application/x-www-form-urlencoded; the body decides.
    response = requests.post(f"{infer.gateway.url}/v1/chat/completions", timeout=60,
                             data=json.dumps({"model": CHAT, "messages": HI, "max_tokens": 1}),
                             headers={**OPENAI_HEADERS, "content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 1


# 5. embeddings --------------------------------------------------------------------------------------------

def test_base64_embeddings_decode_to_the_floats(client, infer):
    texts = ["hello world", "bonjour"]
    # Without encoding_format the SDK asks for base64 and decodes it itself.
    decoded = client.embeddings.create(model=EMBED, input=texts)
    assert isinstance(client.embeddings.create(model=EMBED, input=texts, encoding_format="base64").data[0].embedding,
                      str)
    floats = post(infer, "/v1/embeddings", {"model": EMBED, "input": texts, "encoding_format": "float"}).json()
    raw = post(infer, "/v1/embeddings", {"model": EMBED, "input": texts, "encoding_format": "base64"}).json()
    for i in range(2):
        expected = np.array(floats["data"][i]["embedding"], dtype=np.float32)
        assert np.frombuffer(base64.b64decode(raw["data"][i]["embedding"]), dtype="<f4").tolist() == \
            expected.tolist()
        assert np.allclose(decoded.data[i].embedding, expected)
    assert floats["usage"]["total_tokens"] == floats["usage"]["prompt_tokens"] > 0


def test_dimensions_the_model_has_are_accepted_and_others_refused(infer):
    assert post(infer, "/v1/embeddings", {"model": EMBED, "input": "x", "dimensions": 384}).status_code == 200
    error = assert_refused(post(infer, "/v1/embeddings", {"model": EMBED, "input": "x", "dimensions": 128}),
                           "dimensions")
    assert "384" in error["message"]


# 7. the enveloped API and native gRPC ---------------------------------------------------------------------

def envelope(infer, path: str, body: dict) -> requests.Response:
    return requests.post(f"{infer.gateway.url}/llm-ops/v1/serve/{CHAT}/{path}", json=body, headers=OPENAI_HEADERS,
                         timeout=120)


def test_the_envelope_api_takes_the_same_parameters(infer):
    story = [{"role": "user", "content": "Write a short story."}]

    def chat(**extra) -> dict:
        response = envelope(infer, "chat", {"messages": story, "max_tokens": 12, **extra})
        assert response.status_code == 200, response.text
        return response.json()["data"]
    assert chat(temperature=1.0, seed=11)["choices"][0]["message"]["content"] == \
        chat(temperature=1.0, seed=11)["choices"][0]["message"]["content"]
    assert chat(max_completion_tokens=1)["usage"]["completion_tokens"] == 1
    assert [c["index"] for c in chat(n=2, max_tokens=2)["choices"]] == [0, 1]
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    data = chat(temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    assert isinstance(json.loads(data["choices"][0]["message"]["content"])["ok"], bool)


# the official openai npm package --------------------------------------------------------------------------

def test_the_openai_npm_package(infer):
    out = subprocess.run(["node", "--test", str(REPO_ROOT / "tests" / "js" / "openai_sdk.test.mjs")],
                         capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                         env={**os.environ, "BASE_URL": infer.gateway.url, "CHAT_MODEL": CHAT,
                              "EMBEDDING_MODEL": EMBED})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "# pass 4" in out.stdout and "# fail 0" in out.stdout, out.stdout
