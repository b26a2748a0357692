"""Triton replicas over KServe v2 gRPC: one persistent client per replica,
least-outstanding-requests balancing, and the tensor contract of
ARCHITECTURE.md section 8 (the same for llama.cpp and TensorRT-LLM)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from shared.errors import InvalidArgument, Unavailable


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]


@dataclass(frozen=True)
class Chunk:
    """A text delta; the last chunk of a generation carries the counts."""

    text: str
    final: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""


class ReplicaRefused(Exception):
    """The replica could not be reached before anything was sent: try another."""


def _tensor(name: str, values: Sequence, datatype: str) -> InferInput:
    dtype = {"BYTES": np.object_, "INT32": np.int32, "FP32": np.float32, "BOOL": np.bool_}[datatype]
    array = np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=dtype)
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _triton_error(exc: Exception) -> Exception:
    message = str(exc)
    if "INVALID_ARG" in message or "invalid" in message.lower() or "required" in message.lower():
        return InvalidArgument(f"the model rejected the request: {message}", reason="MODEL_REJECTED_INPUT")
    return Unavailable(f"the replica failed: {message}", reason="REPLICA_FAILED")


class ReplicaPool:
    def __init__(self) -> None:
        self._clients: dict[str, triton_aio.InferenceServerClient] = {}
        self._outstanding: dict[str, int] = {}

    def pick(self, addresses: Sequence[str], exclude: set[str]) -> str | None:
        candidates = [a for a in addresses if a not in exclude]
        if not candidates:
            return None
        return min(candidates, key=lambda a: self._outstanding.get(a, 0))

    def outstanding(self, address: str) -> int:
        return self._outstanding.get(address, 0)

    def _client(self, address: str) -> triton_aio.InferenceServerClient:
        if address not in self._clients:
            self._clients[address] = triton_aio.InferenceServerClient(address)
        return self._clients[address]

    @contextlib.asynccontextmanager
    async def _lease(self, address: str) -> AsyncIterator[triton_aio.InferenceServerClient]:
        self._outstanding[address] = self._outstanding.get(address, 0) + 1
        try:
            yield self._client(address)
        finally:
            self._outstanding[address] -= 1

    async def generate(self, address: str, model: str, prompt: str, sampling: Sampling,
                       request_id: str) -> AsyncIterator[Chunk]:
        """Stream a generation from one replica. Closing the iterator cancels it on the replica."""
        inputs = [_tensor("text_input", [prompt], "BYTES"), _tensor("max_tokens", [sampling.max_tokens], "INT32"),
                  _tensor("temperature", [sampling.temperature], "FP32"), _tensor("top_p", [sampling.top_p], "FP32"),
                  _tensor("stream", [True], "BOOL")]
        if sampling.stop:
            inputs.append(_tensor("stop_words", list(sampling.stop), "BYTES"))

        async def requests():
            yield {"model_name": model, "inputs": inputs, "request_id": request_id}

        async with self._lease(address) as client:
            responses = client.stream_infer(requests())
            received = False
            try:
                async for result, error in responses:
                    if error is not None:
                        raise _triton_error(error)
                    received = True
                    message = result.get_response()
                    final = message.parameters["triton_final_response"].bool_param
                    text = result.as_numpy("text_output")
                    chunk_text = text[0].decode() if text is not None and len(text) else ""
                    if final:
                        yield Chunk(chunk_text, final=True,
                                    prompt_tokens=int(result.as_numpy("prompt_tokens")[0]),
                                    completion_tokens=int(result.as_numpy("completion_tokens")[0]),
                                    finish_reason=result.as_numpy("finish_reason")[0].decode())
                        return
                    yield Chunk(chunk_text)
            except grpc.aio.AioRpcError as exc:
                if not received and exc.code() == grpc.StatusCode.UNAVAILABLE:
                    raise ReplicaRefused(exc.details()) from exc
                raise Unavailable(f"the replica failed mid-request: {exc.details()}", reason="REPLICA_FAILED") from exc
            finally:
                responses.cancel()  # no-op once finished; frees the replica when the client went away

    async def embed(self, address: str, model: str, texts: list[str]) -> np.ndarray:
        async with self._lease(address) as client:
            try:
                result = await client.infer(model, [_tensor("text", texts, "BYTES")],
                                            outputs=[InferRequestedOutput("embedding")])
            except InferenceServerException as exc:
                if "failed to connect" in str(exc).lower() or "unavailable" in str(exc).lower():
                    raise ReplicaRefused(str(exc)) from exc
                raise _triton_error(exc) from exc
            return result.as_numpy("embedding")

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
