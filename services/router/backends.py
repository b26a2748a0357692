"""Triton replicas over KServe v2 gRPC: one persistent client per replica,
least-outstanding-requests balancing, a short cooldown for a replica that
failed, and the tensor contract of ARCHITECTURE.md section 8 (the same for
llama.cpp and TensorRT-LLM)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import structlog
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from shared.errors import InvalidArgument, Unavailable

from .routes import RouteTable

log = structlog.get_logger()
REPLICA_COOLDOWN_S = 5.0
# Triton's python backend when the model's stub process died (tritonserver itself still answers):
# "Stub process 'llm_0_0' is not healthy.", "The stub process has exited unexpectedly.", ...
# And a replica that is stopping (Triton unloads its models first, then drains): "Request for unknown
# model: 'llm' has no available versions". Neither is the request's fault: another replica may answer.
_REPLICA_CANNOT_SERVE = re.compile(r"stub process.*(not healthy|unhealthy|exited)|health mutex"
                                   r"|has no available versions|unknown model", re.IGNORECASE | re.DOTALL)


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


class ReplicaFailure(Exception):
    """The replica itself failed (unreachable, or its model process died), not the request:
    another replica may answer it."""


def _tensor(name: str, values: Sequence, datatype: str) -> InferInput:
    dtype = {"BYTES": np.object_, "INT32": np.int32, "FP32": np.float32, "BOOL": np.bool_}[datatype]
    array = np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=dtype)
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _triton_error(message: str) -> Exception:
    """A model error without a status code (what a stream carries): the request's fault or the replica's."""
    if "INVALID_ARG" in message or "invalid" in message.lower() or "required" in message.lower():
        return InvalidArgument(f"the model rejected the request: {message}", reason="MODEL_REJECTED_INPUT")
    return Unavailable(f"the replica failed: {message}", reason="REPLICA_FAILED")


class ReplicaPool:
    def __init__(self, *, cooldown_s: float = REPLICA_COOLDOWN_S, clock: Callable[[], float] = time.monotonic,
                 client_factory: Callable[[str], triton_aio.InferenceServerClient] = triton_aio.InferenceServerClient,
                 ) -> None:
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._client_factory = client_factory
        self._clients: dict[str, triton_aio.InferenceServerClient] = {}
        self._outstanding: dict[str, int] = {}  # only addresses with requests in flight
        self._cooling_until: dict[str, float] = {}
        self._live: set[str] | None = None  # the route table's replica addresses, once known
        self._closing: set[asyncio.Task] = set()

    def pick(self, addresses: Sequence[str], exclude: set[str], capacity: int | None = None) -> str | None:
        """The replica for the next attempt; None when every one was tried or has `capacity` in flight."""
        candidates = [a for a in addresses if a not in exclude
                      and (capacity is None or self._outstanding.get(a, 0) < capacity)]
        if not candidates:
            return None
        now = self._clock()
        healthy = [a for a in candidates if not self._cooling(a, now)]
        # A cooling replica is tried only when no other is left: a blip must not turn into an outage.
        return min(healthy or candidates, key=lambda a: self._outstanding.get(a, 0))

    def outstanding(self, address: str) -> int:
        return self._outstanding.get(address, 0)

    def cooling(self, address: str) -> bool:
        return self._cooling(address, self._clock())

    def _cooling(self, address: str, now: float) -> bool:
        until = self._cooling_until.get(address)
        if until is not None and until <= now:
            del self._cooling_until[address]
            return False
        return until is not None

    def _failed(self, address: str, message: str) -> ReplicaFailure:
        """Keep a failed replica out of rotation while the deployment service replaces it."""
        self._cooling_until[address] = self._clock() + self._cooldown_s
        log.warning("replica failed; cooling down", replica=address, cooldown_s=self._cooldown_s, error=message)
        return ReplicaFailure(message)

    def follow_table(self, table: RouteTable) -> None:
        """Let go of each replica as it leaves table's ready set."""
        table.listeners.append(lambda changed: self.retain(changed.replica_addresses()))

    def retain(self, addresses: Iterable[str]) -> None:
        """The route table changed: forget replicas that left it (their client closes once idle)."""
        self._live = set(addresses)
        for address in set(self._clients) | set(self._cooling_until):
            if address in self._live:
                continue
            self._cooling_until.pop(address, None)  # back in the table later means replaced: a fresh start
            if not self._outstanding.get(address):
                self._forget(address)

    def _forget(self, address: str) -> None:
        client = self._clients.pop(address, None)
        if client is not None:
            task = asyncio.get_running_loop().create_task(client.close(), name=f"close-replica-client-{address}")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _client(self, address: str) -> triton_aio.InferenceServerClient:
        if address not in self._clients:
            self._clients[address] = self._client_factory(address)
        return self._clients[address]

    @contextlib.asynccontextmanager
    async def _lease(self, address: str) -> AsyncIterator[triton_aio.InferenceServerClient]:
        self._outstanding[address] = self._outstanding.get(address, 0) + 1
        try:
            yield self._client(address)
        finally:
            if left := self._outstanding[address] - 1:
                self._outstanding[address] = left
            else:
                del self._outstanding[address]
                if self._live is not None and address not in self._live:
                    self._forget(address)  # it left the route table while this request ran

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
            # Errors as gRPC statuses: a stream's error message alone cannot tell the request's fault
            # (INVALID_ARG, e.g. a prompt longer than the context: 400) from the replica's (503, retried).
            responses = client.stream_infer(requests(), headers={"triton_grpc_error": "true"})
            received = False
            try:
                async for result, error in responses:
                    if error is not None:
                        # A stream's error carries Triton's message only, no status code.
                        error_text = str(error)
                        if _REPLICA_CANNOT_SERVE.search(error_text):
                            raise self._failed(address, error_text)
                        raise _triton_error(error_text)
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
            except grpc.aio.AioRpcError as exc:  # the transport, and with triton_grpc_error the model's errors
                details = exc.details() or exc.code().name.lower()
                if exc.code() == grpc.StatusCode.UNAVAILABLE or _REPLICA_CANNOT_SERVE.search(details):
                    raise self._failed(address, details) from exc
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidArgument(f"the model rejected the request: {details}",
                                          reason="MODEL_REJECTED_INPUT") from exc
                raise Unavailable(f"the replica failed{' mid-request' if received else ''}: {exc.details()}",
                                  reason="REPLICA_FAILED") from exc
            finally:
                responses.cancel()  # no-op once finished; frees the replica when the client went away

    async def embed(self, address: str, model: str, texts: list[str]) -> tuple[np.ndarray, int]:
        """The vectors, and the tokens of all texts together."""
        async with self._lease(address) as client:
            try:
                # Cancelling this call (the request's deadline, or its client gone) cancels it on the replica.
                result = await client.infer(model, [_tensor("text", texts, "BYTES")],
                                            outputs=[InferRequestedOutput("embedding"),
                                                     InferRequestedOutput("token_count")])
            except InferenceServerException as exc:
                # infer wraps gRPC errors: status() is the gRPC code ("StatusCode.UNAVAILABLE"), message() Triton's.
                message = exc.message() or str(exc)
                if exc.status() == str(grpc.StatusCode.UNAVAILABLE) or _REPLICA_CANNOT_SERVE.search(message):
                    raise self._failed(address, message) from exc
                if exc.status() == str(grpc.StatusCode.INVALID_ARGUMENT):
                    raise InvalidArgument(f"the model rejected the request: {message}",
                                          reason="MODEL_REJECTED_INPUT") from exc
                raise _triton_error(message) from exc
            return result.as_numpy("embedding"), int(result.as_numpy("token_count").sum())

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
