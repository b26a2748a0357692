"""Triton Python-backend model: text generation with llama-cpp-python on a GGUF file.

One model.py serves any GGUF: the file and the context come from config.pbtxt
parameters (gguf_path, n_ctx, n_threads; optional top_k, min_p, repeat_penalty).
The tensor contract is the TensorRT-LLM ensemble's (see config.pbtxt). The model is
decoupled: every request gets its responses through its response sender, the last
one flagged TRITONSERVER_RESPONSE_COMPLETE_FINAL. Requests run one after another
(llama.cpp contexts are not thread-safe); a cancelled request (client gone, or
cancelled) stops between tokens, so the replica is free for the next one.
"""

from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class InputError(ValueError):
    """A request the model refuses (Triton INVALID_ARG)."""


def _scalar(request, name, default=None):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if default is None:
            raise InputError(f"input {name} is required")
        return default
    array = tensor.as_numpy()
    if array.size != 1:
        raise InputError(f"input {name} must hold exactly one value, got shape {list(array.shape)}")
    return array.reshape(-1)[0]


def _text(value, name):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"input {name} is not valid UTF-8") from exc
    return str(value)


def _utf8_prefix(data: bytes) -> tuple[str, bytes]:
    """Decode the longest complete UTF-8 prefix; return it and the incomplete tail (<= 3 bytes)."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8"), data[cut:]
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace"), b""


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters might be the start of a stop word (not sent yet)."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    return hold


def _tensor(name, value, dtype):
    if dtype is np.object_:
        value = value.encode("utf-8")
    return pb_utils.Tensor(name, np.array([value], dtype=dtype))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("the llamacpp model needs model_transaction_policy { decoupled: true }")
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        gguf_path = params.get("gguf_path", "")
        if not gguf_path or not os.path.isfile(gguf_path):
            raise pb_utils.TritonModelException(f"parameter gguf_path: no GGUF file at {gguf_path!r}")
        n_ctx = int(params.get("n_ctx") or 2048)
        n_threads = int(params.get("n_threads") or 0) or None
        self.sampling = {
            "top_k": int(params.get("top_k") or 40),
            "min_p": float(params.get("min_p") or 0.05),
            "repeat_penalty": float(params.get("repeat_penalty") or 1.0),
        }

        import llama_cpp  # imported here so that a missing package fails the load, not the stub

        self._is_eog = lambda token: llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token)
        # verbose=False: llama.cpp's own log lines below ERROR are dropped.
        self.llm = llama_cpp.Llama(model_path=gguf_path, n_ctx=n_ctx, n_batch=min(512, n_ctx),
                                   n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
        # llama.cpp may round a small context up; llama-cpp-python's own buffers keep the size asked for.
        self.n_ctx = min(n_ctx, self.llm.n_ctx())
        pb_utils.Logger.log_info(f"llamacpp: loaded {os.path.basename(gguf_path)} "
                                 f"(n_ctx={self.n_ctx}, n_threads={self.llm.n_threads})")

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._generate(request, sender)
            except InputError as exc:
                self._fail(sender, str(exc), pb_utils.TritonError.INVALID_ARG)
            except Exception as exc:  # noqa: BLE001 - reported to the client, the replica keeps serving
                self._fail(sender, f"generation failed: {exc}", pb_utils.TritonError.INTERNAL)
        return None

    @staticmethod
    def _fail(sender, message, code):
        try:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code)), flags=FINAL)
        except Exception:  # noqa: BLE001 - the request may already be gone (cancelled)
            pass

    def _parse(self, request):
        prompt = _text(_scalar(request, "text_input"), "text_input")
        if not prompt:
            raise InputError("input text_input is empty")
        max_tokens = int(_scalar(request, "max_tokens"))
        if max_tokens < 1:
            raise InputError(f"input max_tokens must be at least 1, got {max_tokens}")
        temperature = float(_scalar(request, "temperature", 1.0))
        if not math.isfinite(temperature) or temperature < 0:
            raise InputError(f"input temperature must be >= 0, got {temperature}")
        top_p = float(_scalar(request, "top_p", 1.0))
        if not math.isfinite(top_p) or not 0 <= top_p <= 1:
            raise InputError(f"input top_p must be between 0 and 1, got {top_p}")
        stream = bool(_scalar(request, "stream", False))
        stops = []
        tensor = pb_utils.get_input_tensor_by_name(request, "stop_words")
        if tensor is not None:
            stops = [s for s in (_text(v, "stop_words") for v in tensor.as_numpy().reshape(-1)) if s]
        return prompt, max_tokens, temperature, top_p, stream, stops

    def _generate(self, request, sender):
        prompt, max_tokens, temperature, top_p, stream, stops = self._parse(request)
        llm = self.llm
        # BOS is added only when the GGUF asks for it; special tokens in the rendered
        # chat template (<|im_start|> ...) are parsed as such.
        prompt_tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        room = self.n_ctx - len(prompt_tokens)
        if room < 1:
            raise InputError(f"the prompt is {len(prompt_tokens)} tokens; the context holds {self.n_ctx}")
        limit = min(max_tokens, room)

        llm.set_seed(random.getrandbits(31))
        completion = []
        pending = b""      # bytes of an incomplete UTF-8 character
        text = ""          # decoded text so far (cut at a stop word once found)
        sent = 0           # characters of text already streamed
        finish = "length"
        for token in llm.generate(prompt_tokens, temp=temperature, top_p=top_p, **self.sampling):
            if request.is_cancelled():
                self._fail(sender, "request cancelled", pb_utils.TritonError.CANCELLED)
                return
            if self._is_eog(token):
                finish = "stop"
                break
            completion.append(token)
            piece = llm.detokenize([token], prev_tokens=prompt_tokens + completion[:-1])
            decoded, pending = _utf8_prefix(pending + piece)
            searched = len(text)
            text += decoded
            done = False
            for stop in stops:
                at = text.find(stop, max(0, searched - len(stop) + 1))
                if at >= 0:
                    text, done, finish = text[:at], True, "stop"
            if done or len(completion) >= limit:
                break
            if stream:
                end = len(text) - _held_back(text, stops)
                if end > sent:
                    sender.send(pb_utils.InferenceResponse(
                        output_tensors=[_tensor("text_output", text[sent:end], np.object_)]))
                    sent = end
        if pending and finish == "length":
            text += pending.decode("utf-8", errors="replace")

        final = [
            _tensor("text_output", text[sent:] if stream else text, np.object_),
            _tensor("prompt_tokens", len(prompt_tokens), np.int32),
            _tensor("completion_tokens", len(completion), np.int32),
            _tensor("finish_reason", finish, np.object_),
        ]
        sender.send(pb_utils.InferenceResponse(output_tensors=final), flags=FINAL)

    def finalize(self):
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
