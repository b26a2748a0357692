"""Triton replicas over KServe v2 gRPC: one persistent channel per replica,
least-outstanding-requests balancing, admission by slots and standing queue
(admission.py), a short cooldown for a replica that failed, and the tensor
contract of docs/architecture.md section 8 (the same for llama.cpp and
TensorRT-LLM).

Requests are KServe's protobuf messages, built here with typed contents and read
from raw outputs, on the stubs tritonclient generates. Its InferInput/InferResult
wrappers (numpy arrays per tensor, an async generator per stream) cost about a
tenth of the router's throughput (make bench, echo model, concurrency 16)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import structlog
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

from shared.errors import DomainError, InvalidArgument, Unavailable
from shared.settings import REPLICA_KEY_METADATA

from .admission import Admission
from .routes import RouteTable

log = structlog.get_logger()
REPLICA_COOLDOWN_S = 5.0
STATUS_WAIT_S = 1.0
# Observed with Triton 2.51 (tests/e2e, a llama.cpp replica): when the model's stub process dies, Triton
# answers the request that was on it "Stub process 'llm_0_0' is not healthy." about 1 s later, and every
# later request the same words, also after 1 s; it never restarts the stub, and the model stays READY. So
# the words cannot tell a request that crashed the model from one sent to a model already dead: the model
# says when it has a request (REPORT_START), and a failure after that is this request's (MODEL_CRASHED).
REPORT_START = "report_start"
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
    # Optional inputs of the TensorRT-LLM ensemble, sent only when set (a model without them
    # is not sent tensors it does not declare).
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # Guided decoding: "json" (any JSON object) or "json_schema" (guide is the schema's JSON).
    guide_type: str = ""
    guide: str = ""
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0

    def optional_inputs(self) -> list[InputTensor]:
        inputs = []
        if self.seed is not None:  # OpenAI's seed is signed; Triton's random_seed is UINT64
            inputs.append(_tensor("random_seed", [self.seed % 2**64], "UINT64"))
        for name in ("presence_penalty", "frequency_penalty"):
            if (value := getattr(self, name)) is not None:
                inputs.append(_tensor(name, [value], "FP32"))
        if self.guide_type:
            inputs.append(_tensor("guided_decoding_guide_type", [self.guide_type], "BYTES"))
            if self.guide:
                inputs.append(_tensor("guided_decoding_guide", [self.guide], "BYTES"))
        if self.logit_bias:
            inputs.append(_tensor("logit_bias_token_ids", [t for t, _ in self.logit_bias], "INT32"))
            inputs.append(_tensor("logit_bias_values", [v for _, v in self.logit_bias], "FP32"))
        if self.logprobs:
            inputs.append(_tensor("return_log_probs", [True], "BOOL"))
            if self.top_logprobs:
                inputs.append(_tensor("top_logprobs", [self.top_logprobs], "INT32"))
        return inputs


@dataclass(frozen=True)
class Chunk:
    """A text delta; the last chunk of a generation carries the counts."""

    text: str
    final: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    # With Sampling.logprobs: OpenAI's entries {token, logprob, bytes, top_logprobs} of this chunk's tokens.
    logprobs: tuple[dict, ...] = ()
    cached_tokens: int = 0  # of prompt_tokens, those whose KV cache the replica reused (0 if it does not say)


class ReplicaFailure(Exception):
    """The replica itself failed (unreachable, or its model process died), not the request:
    another replica may answer it."""


InputTensor = service_pb2.ModelInferRequest.InferInputTensor
_CONTENTS = {"BYTES": "bytes_contents", "INT32": "int_contents", "UINT64": "uint64_contents",
             "FP32": "fp32_contents", "BOOL": "bool_contents"}
# As tritonclient's own channels: a batch of embeddings can be larger than gRPC's 4 MiB default.
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)]


def _tensor(name: str, values: Sequence, datatype: str) -> InputTensor:
    tensor = InputTensor(name=name, datatype=datatype, shape=[len(values)])
    getattr(tensor.contents, _CONTENTS[datatype]).extend(v.encode() if isinstance(v, str) else v for v in values)
    return tensor


def _outputs(response: service_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
    """Each output by name, from raw_output_contents (how Triton answers), as tritonclient decodes them."""
    decoded = {}
    for output, raw in zip(response.outputs, response.raw_output_contents):
        if output.datatype == "BYTES":
            decoded[output.name] = deserialize_bytes_tensor(raw)
        else:
            decoded[output.name] = np.frombuffer(raw, dtype=triton_to_np_dtype(output.datatype)).reshape(output.shape)
    return decoded


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class ReplicaChannel:
    """One replica's channel, the KServe stub on it, and the metadata of every call: the replica key,
    without which a replica refuses inference (Settings.replica_key)."""

    def __init__(self, address: str, replica_key: str = "") -> None:
        self.channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.metadata = ((REPLICA_KEY_METADATA, replica_key),) if replica_key else ()

    async def close(self) -> None:
        await self.channel.close()


# Triton's refusal of a tensor its model does not declare (2.51, the echo model sent logit_bias:
# "unexpected inference input 'logit_bias_values' for model 'llm'"), and the request's parameter
# behind each of Sampling.optional_inputs: a model without the input cannot honour the parameter.
_UNEXPECTED_INPUT = re.compile(r"unexpected inference input '([^']*)'")
OPTIONAL_INPUT_PARAMS = {
    "random_seed": "seed", "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
    "guided_decoding_guide_type": "response_format", "guided_decoding_guide": "response_format",
    "logit_bias_token_ids": "logit_bias", "logit_bias_values": "logit_bias",
    # Both come of logprobs (on /v1/completions, logprobs: k sets both), and Triton names either.
    "return_log_probs": "logprobs", "top_logprobs": "logprobs",
}


def _triton_error(message: str) -> Exception:
    """A model error without a status code (what a stream carries): the request's fault or the replica's.
    The platform's models start a refusal with "INVALID_ARG: "; Triton's own say "invalid" or "required",
    or name an input the model lacks (the parameter that sent it is one it cannot honour: a 400, which
    neither the router nor an SDK retries)."""
    unexpected = _UNEXPECTED_INPUT.search(message)
    if unexpected and (param := OPTIONAL_INPUT_PARAMS.get(unexpected[1])):
        return InvalidArgument(f"{param}: this endpoint's model does not support it (it takes no "
                               f"{unexpected[1]} input)", reason="UNSUPPORTED_PARAMETER", param=param)
    if message.startswith("INVALID_ARG: ") or "invalid" in message.lower() or "required" in message.lower():
        return InvalidArgument(f"the model rejected the request: {message.removeprefix('INVALID_ARG: ')}",
                               reason="MODEL_REJECTED_INPUT")
    return Unavailable(f"the replica failed: {message}", reason="REPLICA_FAILED")


def _crashed(failure: ReplicaFailure) -> DomainError:
    """The replica failed while its model had the request: the request may be what killed it, so it is not
    tried on another replica (it could kill that one too), and clients are told not to try it again."""
    return DomainError(f"the replica's model process stopped while it had this request ({failure}); the request "
                       "is not tried again, since it may be what stopped it", reason="MODEL_CRASHED",
                       should_retry=False)


async def _read_status(responses: grpc.aio.StreamStreamCall) -> bool:
    """After the last response, wait for the call to end (Triton ends it once the request stream is
    half-closed and the request is answered). False if it did not end in time: cancel it then."""
    try:
        async with asyncio.timeout(STATUS_WAIT_S):
            async for _ in responses:
                pass
    except TimeoutError:
        return False
    except grpc.aio.AioRpcError:
        pass
    return True


class ReplicaPool:
    def __init__(self, *, cooldown_s: float = REPLICA_COOLDOWN_S, clock: Callable[[], float] = time.monotonic,
                 client_factory: Callable[[str], ReplicaChannel] = ReplicaChannel) -> None:
        self._cooldown_s = cooldown_s
        self.admission = Admission()
        self._clock = clock
        self._client_factory = client_factory
        self._clients: dict[str, ReplicaChannel] = {}
        self._outstanding: dict[str, int] = {}  # only addresses with requests in flight
        self._terms: dict[str, tuple[int, float]] = {}  # (slots, queue budget) of the route that last picked it
        self._cooling_until: dict[str, float] = {}
        self._live: set[str] | None = None  # the route table's replica addresses, once known
        self._closing: set[asyncio.Task] = set()

    def pick(self, addresses: Sequence[str], exclude: set[str], *, slots: int = 1, queue: int | None = None,
             queue_budget: float = 0.0) -> str | None:
        """The replica for the next attempt, the one with the fewest in flight; None when every one was
        tried, has its `slots` running and `queue` more waiting, or a queue that stands beyond
        `queue_budget` service times (admission.py). All replicas of a route have the same slots, so the
        fewest in flight is also the least load relative to capacity."""
        now = self._clock()
        candidates = [a for a in addresses if a not in exclude and self._admits(a, slots, queue, queue_budget, now)]
        if not candidates:
            return None
        healthy = [a for a in candidates if not self._cooling(a, now)]
        # A cooling replica is tried only when no other is left: a blip must not turn into an outage.
        chosen = min(healthy or candidates, key=lambda a: self._outstanding.get(a, 0))
        self._terms[chosen] = (slots, queue_budget)
        return chosen

    def _admits(self, address: str, slots: int, queue: int | None, queue_budget: float, now: float) -> bool:
        return ((queue is None or self._outstanding.get(address, 0) < slots + queue)
                and self.admission.admits(address, slots=slots, budget=queue_budget, now=now))

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
        self.admission.forget(address)
        self._terms.pop(address, None)
        client = self._clients.pop(address, None)
        if client is not None:
            task = asyncio.get_running_loop().create_task(client.close(), name=f"close-replica-client-{address}")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _client(self, address: str) -> ReplicaChannel:
        if address not in self._clients:
            self._clients[address] = self._client_factory(address)
        return self._clients[address]

    @contextlib.asynccontextmanager
    async def _lease(self, address: str) -> AsyncIterator[ReplicaChannel]:
        """One request on the replica: counted in flight, and followed by admission (admission.py)
        under the terms of the route that picked it (one slot and no budget for a request sent
        without pick)."""
        slots, budget = self._terms.get(address, (1, 0.0))
        self._outstanding[address] = self._outstanding.get(address, 0) + 1
        ticket = self.admission.started(address, slots=slots, budget=budget, now=self._clock())
        succeeded = False
        try:
            yield self._client(address)
            succeeded = True
        finally:
            self.admission.finished(address, ticket, succeeded=succeeded, now=self._clock())
            left = self._outstanding[address] - 1
            if left:
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
        inputs += sampling.optional_inputs()

        request = service_pb2.ModelInferRequest(model_name=model, id=request_id, inputs=inputs)
        # The llama.cpp model then answers an empty response first, once it has the request (others ignore it).
        request.parameters[REPORT_START].bool_param = True

        async with self._lease(address) as client:
            # Not Triton's triton_grpc_error header (errors as gRPC statuses): in 2.51, streams ending
            # with an error status at once now and then segfault the server. Errors come as messages.
            # Written here: no task to drain a request iterator.
            responses = client.stub.ModelStreamInfer(metadata=client.metadata)
            received = started = False
            # Cancel the call only while it is open. A cancel racing the end of a call is a known way to
            # crash Triton 2.51 (server#8078): once the last response is in, the call's status is read instead.
            ended = False
            try:
                with contextlib.suppress(asyncio.InvalidStateError):  # the call ended already: reading raises why
                    await responses.write(request)
                    await responses.done_writing()
                async for message in responses:
                    if message.error_message:  # the last response of this request: the call ends
                        ended = await _read_status(responses)
                        if _REPLICA_CANNOT_SERVE.search(message.error_message):
                            failure = self._failed(address, message.error_message)
                            raise _crashed(failure) if started else failure
                        raise _triton_error(message.error_message)
                    response = message.infer_response
                    if not response.outputs and not response.parameters["triton_final_response"].bool_param:
                        started = True  # the model's word that it has the request (REPORT_START)
                        continue
                    received = True
                    outputs = _outputs(response)
                    if not response.parameters["triton_final_response"].bool_param:
                        yield self._chunk(outputs)
                        continue
                    ended = await _read_status(responses)
                    if sampling.logprobs and "logprobs" not in outputs:  # e.g. a TensorRT-LLM ensemble
                        raise InvalidArgument(f"the model of this endpoint ({model}) does not return "
                                              "log-probabilities in the platform's form",
                                              reason="LOGPROBS_UNSUPPORTED", param="logprobs")
                    yield self._chunk(outputs, final=True)
                    return
            except grpc.aio.AioRpcError as exc:  # the transport: the call has ended
                ended = True
                failure = self._call_failed(address, exc, lambda _: Unavailable(
                    f"the replica failed{' mid-request' if received else ''}: {exc.details()}",
                    reason="REPLICA_FAILED"))
                raise (_crashed(failure) if started and isinstance(failure, ReplicaFailure) else failure) from exc
            finally:
                if not ended:
                    responses.cancel()  # the client went away mid-generation: free the replica

    @staticmethod
    def _chunk(outputs: dict[str, np.ndarray], final: bool = False) -> Chunk:
        text, logprobs = outputs.get("text_output", ()), outputs.get("logprobs", ())
        chunk = Chunk(_text(text[0]) if len(text) else "",
                      logprobs=tuple(json.loads(logprobs[0])) if len(logprobs) else ())
        if not final:
            return chunk
        cached = outputs.get("cached_tokens", ())  # the llama.cpp model's; TensorRT-LLM's ensemble has none
        return dataclasses.replace(chunk, final=True, prompt_tokens=int(outputs["prompt_tokens"][0]),
                                   completion_tokens=int(outputs["completion_tokens"][0]),
                                   finish_reason=_text(outputs["finish_reason"][0]),
                                   cached_tokens=int(cached[0]) if len(cached) else 0)

    async def embed(self, address: str, model: str, inputs: list[str] | list[list[int]],
                    request_id: str = "") -> tuple[np.ndarray, int]:
        """The vectors of `inputs`, strings or token-id arrays, and the tokens of all of them together."""
        if inputs and not isinstance(inputs[0], str):  # the ids one after another, and each input's count
            tensors = [_tensor("token_ids", [t for ids in inputs for t in ids], "INT32"),
                       _tensor("token_id_lengths", [len(ids) for ids in inputs], "INT32")]
        else:
            tensors = [_tensor("text", inputs, "BYTES")]
        for tensor in tensors:
            tensor.shape.insert(0, 1)  # one row each, [1, n]: the model batches requests (max_batch_size > 0)
        request = service_pb2.ModelInferRequest(model_name=model, id=request_id, inputs=tensors)
        request.outputs.add(name="embedding")
        request.outputs.add(name="token_count")
        async with self._lease(address) as client:
            try:
                # Cancelling this call (the request's deadline, or its client gone) cancels it on the replica.
                response = await client.stub.ModelInfer(request, metadata=client.metadata)
            except grpc.aio.AioRpcError as exc:  # the gRPC code, and Triton's message as its details
                raise self._call_failed(address, exc, _triton_error, param="input") from exc
            outputs = _outputs(response)
            return outputs["embedding"][0], int(outputs["token_count"].sum())  # the row of [1, n, dim]

    def _call_failed(self, address: str, exc: grpc.aio.AioRpcError, otherwise: Callable[[str], Exception],
                     param: str | None = None) -> Exception:
        """A call to a replica that ended with a gRPC error: the replica's failure (another may answer),
        the request's fault (INVALID_ARGUMENT, about `param` where the call has one the model reads),
        or `otherwise(details)`."""
        details = exc.details() or exc.code().name.lower()
        if exc.code() == grpc.StatusCode.UNAVAILABLE or _REPLICA_CANNOT_SERVE.search(details):
            return self._failed(address, details)
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidArgument(f"the model rejected the request: {details}", reason="MODEL_REJECTED_INPUT",
                                   param=param)
        return otherwise(details)

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
