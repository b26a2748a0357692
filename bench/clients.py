"""The callers each scenario times: one request each, raising load.Refused for an answer
that says no. Clients are made once, before the clock starts, and reused as real ones are."""

from __future__ import annotations

import json
import time

import aiohttp
import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput

from llmops.v1 import inference_pb2, inference_pb2_grpc
from shared.identity import SERVICE_TOKEN_KEY
from shared.settings import REPLICA_KEY_METADATA

from .load import Refused, Streamed
from .stack import USER

HEADERS = {**USER, "Content-Type": "application/json"}
GRPC_USER = (("x-user-id", USER["X-User-Id"]), ("x-user-roles", USER["X-User-Roles"]))


def _tensor(name: str, value, datatype: str) -> InferInput:  # noqa: ANN001
    dtype = {"BYTES": np.object_, "INT32": np.int32, "BOOL": np.bool_}[datatype]
    array = np.array([value.encode() if isinstance(value, str) else value], dtype=dtype)
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


class DirectTriton:
    """tritonclient's asyncio gRPC client straight to one replica: the request the router would send,
    with the replica key the router sends (a replica refuses inference without it)."""

    def __init__(self, address: str, model: str, replica_key: str) -> None:
        self.client = triton_aio.InferenceServerClient(address)
        self.model = model
        self.headers = {REPLICA_KEY_METADATA: replica_key}

    async def generate(self, prompt: str, max_tokens: int) -> str:
        inputs = [_tensor("text_input", prompt, "BYTES"), _tensor("max_tokens", max_tokens, "INT32"),
                  _tensor("stream", False, "BOOL")]

        async def one():  # noqa: ANN202
            yield {"model_name": self.model, "inputs": inputs}

        # Read to the end of the call, as the router does: leaving the stream at its last response
        # cancels it as it completes, which Triton 2.51 races (server#8078). A replica that lost
        # that race kept its model loaded on shutdown, and every rollout after this scenario waited
        # out Triton's exit timeout (10 s) for the draining replica.
        text = None
        async for result, error in self.client.stream_infer(one(), headers=self.headers):
            if error is not None:
                raise Refused(f"triton: {error}")
            text = result.as_numpy("text_output")[0].decode()
        if text is None:
            raise Refused("triton: no response")
        return text

    async def close(self) -> None:
        await self.client.close()


class RouterGrpc:
    """The router's native gRPC API (InferenceService): through Envoy as clients reach it, or on the
    router's own port with the platform's service token, as Envoy does (what the router alone costs)."""

    def __init__(self, address: str, token: str | None = None) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.metadata = GRPC_USER + (((SERVICE_TOKEN_KEY, token),) if token else ())

    async def chat(self, name: str, text: str, max_tokens: int) -> str:
        try:
            response = await self.stub.Chat(inference_pb2.ChatRequest(
                name=name, messages=[inference_pb2.ChatMessage(role="user", content=text)], max_tokens=max_tokens),
                metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise Refused(exc.code().name) from exc
        return response.choices[0].message.content

    async def close(self) -> None:
        await self.channel.close()


class Http:
    """REST through Envoy: the envelope API and OpenAI's /v1. `reuse` False: a connection per request, for a
    server that closes its connections without saying so (llama-server, after every streamed answer: aiohttp
    would write the next request into the closed socket, and fail every other request)."""

    def __init__(self, base: str, headers: dict[str, str] | None = None, *, reuse: bool = True) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=not reuse),
                                             headers=headers or HEADERS)

    async def post(self, path: str, body: dict) -> dict:
        async with self.session.post(f"{self.base}{path}", data=json.dumps(body)) as response:
            payload = await response.read()
            if response.status != 200:
                raise Refused(str(response.status))
            return json.loads(payload)

    async def chat(self, name: str, text: str, max_tokens: int) -> dict:
        return await self.post(f"/llm-ops/v1/serve/{name}/chat",
                               {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens})

    async def v1_chat(self, model: str, text: str, max_tokens: int) -> dict:
        return await self.post("/v1/chat/completions", {"model": model, "max_tokens": max_tokens,
                                                        "messages": [{"role": "user", "content": text}]})

    async def v1_stream(self, path: str, body: dict, on_first) -> dict | None:  # noqa: ANN001
        """POST an SSE stream; call on_first() at the first content delta; return the usage chunk."""
        usage, first = None, False
        async with self.session.post(f"{self.base}{path}", data=json.dumps(
                {**body, "stream": True, "stream_options": {"include_usage": True}})) as response:
            if response.status != 200:
                raise Refused(str(response.status))
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise Refused("stream error")
                if not first and chunk.get("choices") and (chunk["choices"][0].get("text")
                                                           or chunk["choices"][0].get("delta", {}).get("content")):
                    first = True
                    on_first()
                if chunk.get("usage"):
                    usage = chunk["usage"]
        return usage

    async def v1_chat_streamed(self, body: dict) -> Streamed:
        """POST a streamed /v1/chat/completions: when each chunk with content came, and the usage chunk's
        counts. A refusal carries its Retry-After; an error inside the stream raises StreamFailed."""
        began = time.perf_counter()
        token_s, usage = [], {}
        async with self.session.post(f"{self.base}/v1/chat/completions", data=json.dumps(
                {**body, "stream": True, "stream_options": {"include_usage": True}})) as response:
            if response.status != 200:
                await response.read()
                raise Refused(str(response.status), _seconds(response.headers.get("Retry-After")))
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise StreamFailed(str(chunk["error"])[:200])
                if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                    token_s.append(time.perf_counter() - began)
                usage = chunk.get("usage") or usage
        if not usage:
            raise StreamFailed("no usage chunk")
        return Streamed(token_s, completion_tokens=usage["completion_tokens"], prompt_tokens=usage["prompt_tokens"],
                        cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))

    async def close(self) -> None:
        await self.session.close()


class StreamFailed(Exception):
    """A stream that began (200) and then said it failed, or ended without its usage."""


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After in seconds; None where absent or an HTTP date (neither server here sends one)."""
    try:
        return float(retry_after) if retry_after is not None else None
    except ValueError:
        return None
