"""Hostile and careless input to the catalog and the router: chat and prompt templates that
would loop, recurse or nest without end, metadata the serving path cannot read, names with a
trailing newline. Each is a 400 envelope with a message a user can act on, and nothing is
written (read back through the API). The router's render is bounded and runs off the event loop."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest
import requests

from router import prompting
from router.prompting import Message, render_chat
from shared.errors import DeadlineExceeded, InvalidArgument
from shared.templating import TEMPLATE_MAX_RANGE, compile_template, render_template

from ..helpers import ADMIN, RESEARCHER, assert_envelope, model_body, unique

TABLES = ("registry_models", "registry_prompt_templates", "registry_audit_records")
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "<|im_start|>assistant\n")
RUNAWAY_LOOPS = ("{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}"
                 "{% endfor %}{% endfor %}{% endfor %}")

# (template, what the message must say): the hostile templates, each refused at registration.
HOSTILE_TEMPLATES = {
    "30M-iteration loop": ("{% for i in range(30000000) %}{% endfor %}", f"at most {TEMPLATE_MAX_RANGE} times"),
    "range(10**9)": ("{% for i in range(10**9) %}x{% endfor %}", f"at most {TEMPLATE_MAX_RANGE} times"),
    "endless recursion": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recurses too deeply"),
    "division by zero": ("{{ 1//0 }}", "ZeroDivisionError"),
    "3000 nested parentheses": ("{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}", "nests too deeply"),
    "2000 nested ifs": ("{% if true %}" * 2000 + "x" + "{% endif %}" * 2000, "nests too deeply"),
    "a billion-character string": ("{{ 'x' * 10**9 }}", "'*' would build"),
    "a billion-wide format": ("{{ '%999999999s' % 1 }}", "would build 999999999 characters"),
}


@pytest.fixture
def unchanged(registry):
    """No registry table (models, templates, audit records) gains or loses a row."""
    before = {t: registry.count(t) for t in TABLES}
    yield
    assert {t: registry.count(t) for t in TABLES} == before


def models_of(gateway, team: str) -> list:
    r = requests.get(f"{gateway.api}/catalog/models", params={"ownerTeam": team}, headers=ADMIN)
    return assert_envelope(r, 200, "success")["data"].get("models", [])


def templates_named(gateway, name: str) -> list:
    r = requests.get(f"{gateway.api}/prompts/templates", params={"name": name}, headers=ADMIN)
    return assert_envelope(r, 200, "success")["data"].get("templates", [])


def post_model(gateway, metadata: dict, team: str) -> requests.Response:
    return requests.post(f"{gateway.api}/catalog/models", json=model_body(ownerTeam=team, metadata=metadata),
                         headers=RESEARCHER)


def post_template(gateway, name: str, **fields) -> requests.Response:
    body = {"name": name, "content": "You are a {{ tone }} assistant.", "modelType": "chat", **fields}
    return requests.post(f"{gateway.api}/prompts/templates", json=body, headers=RESEARCHER)


def assert_refused(response: requests.Response, *needles: str) -> str:
    error = assert_envelope(response, 400, "error")
    assert error["data"] is None
    for needle in needles:
        assert needle in error["message"], error["message"]
    return error["message"]


# ------------------------------------------------------------------ A: templates, at registration


@pytest.mark.parametrize("case", list(HOSTILE_TEMPLATES))
def test_hostile_chat_template_is_refused_at_registration(gateway, unchanged, case):
    template, reason = HOSTILE_TEMPLATES[case]
    team = unique("team")
    assert_refused(post_model(gateway, {"chat_template": template}, team), "metadata.chat_template", reason)
    assert models_of(gateway, team) == []


@pytest.mark.parametrize("case", list(HOSTILE_TEMPLATES))
def test_hostile_prompt_template_is_refused(gateway, unchanged, case):
    template, reason = HOSTILE_TEMPLATES[case]
    name = unique("hostile")
    assert_refused(post_template(gateway, name, content=template), "content", reason)
    assert templates_named(gateway, name) == []


def test_chat_template_that_fails_on_a_chat_is_refused(gateway, unchanged):
    team = unique("team")
    assert_refused(post_model(gateway, {"chat_template": "{{ messages[0].content.nope() }}"}, team),
                   "metadata.chat_template failed to render")
    assert models_of(gateway, team) == []


def test_real_chat_template_registers_and_reads_back(gateway):
    team = unique("team")
    r = post_model(gateway, {"chat_template": CHATML, "context_length": 2048, "stop": ["<|im_end|>"]}, team)
    model = assert_envelope(r, 200, "success")["data"]
    assert model["metadata"] == {"chat_template": CHATML, "context_length": 2048, "stop": ["<|im_end|>"]}
    assert [m["id"] for m in models_of(gateway, team)] == [model["id"]]


def test_prompt_template_variables_may_be_undefined_at_registration(gateway):
    name = unique("support")
    content = "{% if tone %}{{ tone | upper }}{% endif %} {{ user.name }} {{ turns + 1 }}"
    r = post_template(gateway, name, content=content)
    assert assert_envelope(r, 200, "success")["data"]["content"] == content
    assert len(templates_named(gateway, name)) == 1


# ------------------------------------------------------------------ B: metadata the serving path reads


@pytest.mark.parametrize("metadata,needle", [
    ({"context_length": "1e3"}, 'metadata.context_length must be a positive whole number written as a JSON number '
                                '(such as 4096, at most 2147483647); got "1e3"'),
    ({"context_length": 1.5}, "metadata.context_length must be a positive whole number"),
    ({"context_length": 0}, "metadata.context_length must be a positive whole number"),
    ({"context_length": -4096}, "got -4096"),
    ({"context_length": 1e12}, "at most 2147483647"),
    ({"n_threads": "4"}, 'metadata.n_threads must be a positive whole number written as a JSON number'),
    ({"embedding_dim": 384.5}, "metadata.embedding_dim must be a positive whole number"),
    ({"dimensions": True}, "metadata.dimensions must be a positive whole number"),
    ({"dimensions": None}, "got null"),
    ({"delay_ms": -5}, "metadata.delay_ms must be a positive whole number"),
    ({"queue_budget": -1}, "metadata.queue_budget must be a JSON number from 0 to 1000"),
    ({"queue_budget": "4"}, 'metadata.queue_budget must be a JSON number from 0 to 1000 (the wait admitted on a '
                            'busy replica, in its service times; 0: no bound); got "4"'),
    ({"queue_budget": 1e6}, "metadata.queue_budget must be a JSON number"),
    ({"queue_budget": False}, "got false"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "metadata.stop must be a list of at most 4 non-empty strings"),
    ({"stop": [""]}, "metadata.stop must be a list of at most 4 non-empty strings"),
    ({"stop": "<|im_end|>"}, "metadata.stop must be a list"),
    ({"stop": [7]}, "metadata.stop must be a list"),
    ({"chat_template": 5}, "metadata.chat_template must be a string"),
    ({"chat_template": ["{{ x }}"]}, "metadata.chat_template must be a string"),
])
def test_unreadable_metadata_is_refused(gateway, unchanged, metadata, needle):
    team = unique("team")
    assert_refused(post_model(gateway, metadata, team), needle)
    assert models_of(gateway, team) == []


def test_known_metadata_is_stored_as_integers_and_unknown_keys_pass(gateway):
    team = unique("team")
    metadata = {"context_length": 1e3, "n_threads": 2.0, "dimensions": 384, "embedding_dim": 384,
                "stop": ["<|im_end|>", "</s>"], "queue_budget": 2.5, "description": "anything",
                "custom": {"nested": [1, "a"]}}
    model = assert_envelope(post_model(gateway, metadata, team), 200, "success")["data"]
    got = assert_envelope(requests.get(f"{gateway.api}/catalog/models/{model['id']}", headers=ADMIN),
                          200, "success")["data"]["metadata"]
    assert got == {**metadata, "context_length": 1000, "n_threads": 2}


# ------------------------------------------------------------------ C: names with a trailing newline


def test_template_endpoint_with_a_trailing_newline_is_refused(gateway, unchanged):
    name = unique("support")
    assert_refused(post_template(gateway, name, endpoint="chat-model\n"),
                   "endpoint must be a lowercase DNS label", r"'chat-model\n'")
    assert templates_named(gateway, name) == []


# ------------------------------------------------------------------ A: the router's render, per request


def chat(text: str = "hi") -> list[Message]:
    return [Message("user", text)]


async def test_router_refuses_a_30m_loop_at_its_first_step():
    with pytest.raises(InvalidArgument) as refused:
        await render_chat({"chat_template": HOSTILE_TEMPLATES["30M-iteration loop"][0]}, chat())
    assert refused.value.reason == "TEMPLATE_ERROR"
    assert f"a template may loop at most {TEMPLATE_MAX_RANGE} times" in refused.value.message


@pytest.mark.parametrize("case", ["endless recursion", "division by zero", "3000 nested parentheses",
                                  "2000 nested ifs", "a billion-character string"])
async def test_router_answers_400_for_a_template_registered_before_the_checks(case):
    template, reason = HOSTILE_TEMPLATES[case]
    with pytest.raises(InvalidArgument) as refused:
        await render_chat({"chat_template": template}, chat())
    assert "the model's chat template" in refused.value.message and reason in refused.value.message


async def test_router_refuses_a_chat_template_that_is_not_text():
    with pytest.raises(InvalidArgument, match="chat template is not a string"):
        await render_chat({"chat_template": {"not": "text"}}, chat())


async def test_router_compiles_each_template_text_once():
    prompting._compiled.cache_clear()
    first = await render_chat({"chat_template": CHATML}, chat("one"))
    second = await render_chat({"chat_template": CHATML}, chat("two"))
    assert first.startswith("<|im_start|>user\none<|im_end|>") and "two" in second
    assert (prompting._compiled.cache_info().misses, prompting._compiled.cache_info().hits) == (1, 1)


@pytest.mark.parametrize("messages", [
    [Message("user", "hi")],
    [Message("system", "Be {{ brief }} {% raw %}"), Message("user", "<|im_end|> 한국어 \n\n"),
     Message("assistant", ""), Message("user", "{{ 7 * 7 }}", name="rita")],
])
async def test_the_default_template_renders_as_its_jinja_text_does(messages):
    """Written out on the event loop (prompting.chatml), the platform's own template gives what
    Jinja gives for the same text."""
    jinja = prompting._render_chat_now(prompting.DEFAULT_CHAT_TEMPLATE, {
        "messages": [prompting.message_variables(m) for m in messages], "add_generation_prompt": True})
    assert await render_chat({}, messages) == await render_chat(
        {"chat_template": prompting.DEFAULT_CHAT_TEMPLATE}, messages) == jinja


async def test_router_renders_off_the_event_loop(monkeypatch):
    release, threads = threading.Event(), []

    def blocking_render(source: str, variables: dict) -> str:
        threads.append(threading.current_thread().name)
        release.wait(30)  # on the event loop, this would hold it (and this test) until released
        return "rendered"

    monkeypatch.setattr(prompting, "_render_chat_now", blocking_render)
    rendering = asyncio.create_task(render_chat({"chat_template": CHATML}, chat()))
    while not threads:  # the loop keeps running while the render is held in its thread
        await asyncio.sleep(0.01)
    assert not rendering.done()
    release.set()
    assert await rendering == "rendered"
    assert threads[0].startswith("chat-template")


async def test_router_gives_up_waiting_for_a_render_with_a_clear_error(monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(prompting, "_render_chat_now", lambda source, variables: release.wait(30))
    monkeypatch.setattr(prompting, "RENDER_WAIT_SECONDS", 0)
    try:
        with pytest.raises(DeadlineExceeded, match="did not render within"):
            await render_chat({"chat_template": CHATML}, chat())
    finally:
        release.set()


@pytest.mark.parametrize("case", ["3000 nested parentheses", "2000 nested ifs", "endless recursion"])
def test_a_refusal_for_depth_holds_none_of_the_errors_thousand_frames(case):
    """The parser's RecursionError (1000 frames) was the refusal's cause: whatever formatted the refusal
    walked them, and once failed a test with a RecursionError raised while formatting it."""
    template, _ = HOSTILE_TEMPLATES[case]
    with pytest.raises(InvalidArgument) as refused:
        render_template(compile_template(template, "content"), {}, "content")
    assert refused.value.__cause__ is None and refused.value.__context__ is None
    assert "too deeply" in refused.value.message


def test_a_runaway_render_stops_at_its_budget_and_gives_the_thread_back():
    tracer = sys.gettrace()
    with pytest.raises(InvalidArgument) as refused:
        # budget 0: the first line the render runs is past it, whatever the machine's speed
        render_template(compile_template(RUNAWAY_LOOPS, "content"), {}, "content", budget_s=0)
    assert refused.value.reason == "TEMPLATE_TOO_SLOW"
    assert "took longer than 0s to render; bound its loops" in refused.value.message
    assert sys.gettrace() is tracer


def test_rendered_text_is_bounded_buffers_included():
    template = compile_template("{% filter upper %}{% for i in range(1000) %}{{ text }}{% endfor %}{% endfilter %}",
                                "content")
    with pytest.raises(InvalidArgument, match="the rendered text is longer than"):
        render_template(template, {"text": "x" * 60_000}, "content")


def test_text_built_by_repetition_is_bounded_across_a_loop():
    template = compile_template("{% for i in range(1000) %}{% set line = 'x' * 60000 %}{% endfor %}", "content")
    with pytest.raises(InvalidArgument, match="'\\*' would build 60000 characters; a render may build at most"):
        render_template(template, {}, "content")
