"""llmops chat against a real model: the `infer` stack (real Triton serving SmolLM2
through the router and Envoy). Its own module because that stack is heavy."""

from __future__ import annotations

import re
import subprocess

from ..helpers import LLMOPS, cli_env, ok_json, one_line_error, run_cli

GREEDY = ("--temperature", "0", "--seed", "7", "--max-tokens", "24")


def chat(infer, home, *args: str, user: str | None = "chatty", stdin: str | None = None) -> subprocess.CompletedProcess:
    identity = ["--user", user] if user else []
    command = [str(LLMOPS), "--url", infer.gateway.grpc_address, *identity, "chat", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL, env=cli_env(home))


def test_chat_streams_the_answer_the_unary_call_gives(infer, tmp_path):
    streamed = chat(infer, tmp_path, "chat-model", "Name three colours.", *GREEDY)
    assert streamed.returncode == 0, streamed.stderr
    whole = ok_json(chat(infer, tmp_path, "chat-model", "Name three colours.", *GREEDY, "-o", "json"))
    answer = whole["choices"][0]["message"]["content"]
    assert answer.strip()
    assert streamed.stdout == answer + "\n"
    usage = re.search(r"(\d+) prompt \+ (\d+) completion tokens", streamed.stderr)
    assert usage, streamed.stderr
    assert (int(usage[1]), int(usage[2])) == (whole["usage"]["prompt_tokens"], whole["usage"]["completion_tokens"])


def test_chat_with_a_system_prompt_and_the_message_from_stdin(infer, tmp_path):
    result = chat(infer, tmp_path, "chat-model", "-", "--system", "Answer in one word.", "-o", "json", *GREEDY,
                  stdin="What colour is the sky?")
    response = ok_json(result)
    assert response["object"] == "chat.completion" and response["model"] == "chat-model"
    assert response["usage"]["prompt_tokens"] > 10  # the system prompt and the message from stdin both went in


def test_chat_on_an_unknown_endpoint_is_one_line(infer, tmp_path):
    assert "NOT_FOUND" in one_line_error(chat(infer, tmp_path, "no-such-endpoint", "hi"))


def test_chat_without_identity_is_refused(infer, tmp_path):
    assert "MISSING_IDENTITY" in one_line_error(chat(infer, tmp_path, "chat-model", "hi", user=None))


def test_a_bad_sampling_value_is_exit_2(tmp_path):
    result = run_cli("chat", "chat-model", "hi", "--top-p", "2", home=tmp_path)
    assert result.returncode == 2, result.stderr
