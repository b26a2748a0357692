"""Triton Python-backend model: echo (see config.pbtxt). A word is a token: the
prompt's words are the prompt tokens, and the answer is its first max_tokens words."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
WORKERS = 64  # requests answered at once; more wait for a thread


def _tensor(name, value, dtype):
    return pb_utils.Tensor(name, np.array([value], dtype=dtype))


def _scalar(request, name, default=None):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if default is None:
            raise ValueError(f"input {name} is required")
        return default
    return tensor.as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.delay_s = float(params.get("delay_ms", {}).get("string_value") or 0) / 1000
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="echo")

    def execute(self, requests):
        for request in requests:
            self.pool.submit(self._answer, request)
        return None

    def _answer(self, request):
        sender = request.get_response_sender()
        try:
            text = _scalar(request, "text_input")
            words = (text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)).split()
            max_tokens = int(_scalar(request, "max_tokens"))
            if not words or max_tokens < 1:
                raise ValueError("input text_input must hold a word and max_tokens must be at least 1")
        except ValueError as exc:
            error = pb_utils.TritonError(f"INVALID_ARG: {exc}", pb_utils.TritonError.INVALID_ARG)
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            return
        if self.delay_s:
            time.sleep(self.delay_s)
        answer = words[:max_tokens]
        stream = bool(_scalar(request, "stream", False))
        if stream:
            for i, word in enumerate(answer[:-1]):
                sender.send(pb_utils.InferenceResponse([_tensor("text_output", (" " if i else "") + word, object)]))
        last = (" " if len(answer) > 1 else "") + answer[-1] if stream else " ".join(answer)
        sender.send(pb_utils.InferenceResponse([
            _tensor("text_output", last, object),
            _tensor("prompt_tokens", len(words), np.int32),
            _tensor("completion_tokens", len(answer), np.int32),
            _tensor("finish_reason", "length" if len(words) > max_tokens else "stop", object),
        ]), flags=FINAL)

    def finalize(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
