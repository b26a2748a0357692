"""Talking to a Triton replica with tritonclient.grpc, as the router does: input
tensors for the bundled generation model and one streamed generation request."""

from __future__ import annotations

import queue
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from shared.settings import REPLICA_KEY_METADATA, Settings

RESPONSE_TIMEOUT_S = 60.0


def replica_headers(settings: Settings) -> dict[str, str]:
    """What the router presents to a replica the platform started (Settings.replica_key), as gRPC metadata."""
    return {REPLICA_KEY_METADATA: settings.replica_key()}


@dataclass
class Triton:
    url: str            # gRPC host:port
    http: str           # http://host:port
    llm: str            # Triton model names
    embedding: str
    process: subprocess.Popen
    log: Path


def infer_input(name: str, values: list, datatype: str) -> grpcclient.InferInput:
    dtype = {"BYTES": np.object_, "INT32": np.int32, "UINT64": np.uint64, "FP32": np.float32, "BOOL": np.bool_}[datatype]
    array = np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=dtype)
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def generation_inputs(prompt: str | None, *, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                      stop_words: list[str] | None = None, stream: bool | None = None) -> list:
    inputs = []
    if prompt is not None:
        inputs.append(infer_input("text_input", [prompt], "BYTES"))
    inputs += [infer_input("max_tokens", [max_tokens], "INT32"),
               infer_input("temperature", [temperature], "FP32"),
               infer_input("top_p", [top_p], "FP32")]
    if stop_words:
        inputs.append(infer_input("stop_words", stop_words, "BYTES"))
    if stream is not None:
        inputs.append(infer_input("stream", [stream], "BOOL"))
    return inputs


@dataclass
class Response:
    outputs: dict[str, np.ndarray]
    final: bool

    def text(self) -> str:
        return self.outputs["text_output"][0].decode()

    def scalar(self, name: str):
        value = self.outputs[name][0]
        return value.decode() if isinstance(value, bytes) else int(value)


def stream_call(triton: Triton, inputs: list, *, cancel_after: int | None = None,
                headers: dict[str, str] | None = None) -> list[Response]:
    """Send one request over a gRPC stream (decoupled models take no unary ModelInfer);
    collect its responses up to the final one. Raises InferenceServerException on an error
    response. With cancel_after=n, cancel the request after n responses. `headers`: gRPC
    metadata, such as the replica key a platform's replica demands (replica_headers)."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(triton.url)
    try:
        client.start_stream(callback=lambda result, error: responses.put((result, error)), headers=headers)
        client.async_stream_infer(triton.llm, inputs)
        got: list[Response] = []
        while True:
            result, error = responses.get(timeout=RESPONSE_TIMEOUT_S)
            if error is not None:
                raise error
            message = result.get_response()
            final = message.parameters["triton_final_response"].bool_param
            got.append(Response({o.name: result.as_numpy(o.name) for o in message.outputs}, final))
            if final or (cancel_after is not None and len(got) >= cancel_after):
                return got
    finally:
        client.stop_stream(cancel_requests=cancel_after is not None)
        client.close()
