"""Triton Python-backend model: text generation with llama-cpp-python on a GGUF file.

One model.py serves any GGUF: the file and the context come from config.pbtxt
parameters (gguf_path, n_ctx, n_threads; optional top_k, min_p, repeat_penalty).
Optional inputs, by their TensorRT-LLM names: random_seed, presence_penalty,
frequency_penalty, return_log_probs, and guided decoding (guided_decoding_guide_type
json or json_schema, guided_decoding_guide the schema) as a llama.cpp grammar; and
logit_bias_token_ids with logit_bias_values, top_logprobs (output logprobs: OpenAI's
entries, as JSON, of the tokens of each response).
The tensor contract is the TensorRT-LLM ensemble's (see config.pbtxt). The model is
decoupled: every request gets its responses through its response sender, the last
one flagged TRITONSERVER_RESPONSE_COMPLETE_FINAL; a request with the parameter
report_start gets an empty response first, as soon as the model has it. Requests run
one after another (llama.cpp contexts are not thread-safe); a cancelled request
(client gone, or cancelled) stops between tokens, so the replica is free for the next one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import tempfile

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# Guided decoding's bounds, the router's (services/router/structured_output.py, which says how they
# were measured) checked again here, the last line before llama.cpp: the converter writes a repetition
# out as nested groups (maxLength 100000: 100000 deep, which overflowed the grammar parser's recursion;
# 10**9 would be gigabytes), and llama.cpp takes no more than 1000 of them.
MAX_REPETITIONS = 1000
MAX_GRAMMAR_BYTES = 128 * 1024
MAX_GRAMMAR_NESTING = 1000
# A grammar's text less its string literals, character classes and comments: what is left holds its groups.
_NOT_GROUPS = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|#[^\n]*')


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


def _grammar_nesting(grammar):
    """How deep the groups of a GBNF grammar nest, at most (a rule a line, as the converter writes them)."""
    deepest = depth = 0
    for found in re.finditer(r"[()\n]", _NOT_GROUPS.sub("", grammar)):
        char = found[0]
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
        elif char == "\n":
            depth = 0
    return deepest


def _bounded(build_repetition):
    """The converter's _build_repetition, refusing to write out a repetition llama.cpp would refuse: every
    repetition it writes (a length, a count, a pattern's {m,n}) goes through this one function."""

    def build(item_rule, min_items, max_items, *args, **kwargs):
        if max(min_items, max_items or 0) > MAX_REPETITIONS:
            raise InputError(f"the JSON schema asks for a repetition of {max(min_items, max_items or 0)} (a length, "
                             f"a count or a pattern's {{m,n}}); at most {MAX_REPETITIONS}")
        return build_repetition(item_rule, min_items, max_items, *args, **kwargs)

    return build


@contextlib.contextmanager
def _stderr_kept():
    """The lines written to the process's stderr in the block, kept instead (llama.cpp's grammar parser writes
    why it refuses a grammar there, then the whole grammar: up to 128 KiB in the replica's log each time)."""
    lines = []
    with tempfile.TemporaryFile() as kept:
        saved = os.dup(2)
        os.dup2(kept.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            kept.seek(0)
            lines += kept.read(4096).decode("utf-8", "replace").splitlines()


def _tensor(name, value, dtype):
    if dtype is np.object_:
        value = value.encode("utf-8")
    return pb_utils.Tensor(name, np.array([value], dtype=dtype))


class _Logits:
    """Adds the logit bias, and keeps the log-probabilities of the step (after the bias, before
    sampling) for the token it then picks and the `top` likeliest."""

    def __init__(self, bias, top):
        self.bias, self.top, self.last = bias, top, None

    def __call__(self, _input_ids, logits):
        if self.bias is not None:
            logits = logits.copy()
            np.add.at(logits, self.bias[0], self.bias[1])
        if self.top is not None:
            peak = logits.max()
            self.last = logits - (peak + np.log(np.exp(logits - peak).sum()))
        return logits

    def entry(self, token, piece, vocab_piece):
        """OpenAI's log-probability entry of the token just picked."""
        if self.last is None:
            return None
        logprobs = self.last
        top = []
        if self.top:
            best = np.argpartition(-logprobs, self.top)[:self.top]
            for t in best[np.argsort(-logprobs[best])]:
                top.append(_logprob(vocab_piece(int(t)), float(logprobs[t])))
        return {**_logprob(piece, float(logprobs[token])), "top_logprobs": top}


def _logprob(piece, value):
    return {"token": piece.decode("utf-8", errors="replace"), "logprob": max(value, -9999.0), "bytes": list(piece)}


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
        from llama_cpp import llama_grammar

        llama_grammar._build_repetition = _bounded(llama_grammar._build_repetition)
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
                if json.loads(request.parameters() or "{}").get("report_start"):
                    # Before anything else: should this request take the model process down, the router
                    # knows that it was on it (not retried on another replica), not sent to a dead one.
                    sender.send(pb_utils.InferenceResponse(output_tensors=[]))
                self._generate(request, sender)
            except InputError as exc:
                # A stream's error carries the message alone, not the code: the prefix tells the
                # router that the request was at fault (a 400), not the replica (a 503, retried).
                self._fail(sender, f"INVALID_ARG: {exc}", pb_utils.TritonError.INVALID_ARG)
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
        options = {}
        for name in ("presence_penalty", "frequency_penalty"):
            value = float(_scalar(request, name, 0.0))
            if not math.isfinite(value) or not -2 <= value <= 2:
                raise InputError(f"input {name} must be between -2 and 2, got {value}")
            options[name] = value
        guide_type = _text(_scalar(request, "guided_decoding_guide_type", b""), "guided_decoding_guide_type")
        if guide_type:
            options["grammar"] = self._grammar(guide_type, _text(_scalar(request, "guided_decoding_guide", b""),
                                                                 "guided_decoding_guide"))
        logits = self._logits(request)
        if logits is not None:
            options["logits_processor"] = [logits]
        seeded = pb_utils.get_input_tensor_by_name(request, "random_seed") is not None
        # llama.cpp seeds are 32-bit, and 0xFFFFFFFF asks it for a random one: fold into the others.
        seed = int(_scalar(request, "random_seed")) % 0xFFFFFFFF if seeded else random.getrandbits(31)
        return prompt, max_tokens, temperature, top_p, stream, stops, (seed, seeded), options

    def _logits(self, request):
        """The logit bias and log-probabilities the request asks for, as a llama.cpp logits processor."""
        ids = pb_utils.get_input_tensor_by_name(request, "logit_bias_token_ids")
        values = pb_utils.get_input_tensor_by_name(request, "logit_bias_values")
        bias = None
        if ids is not None or values is not None:
            if ids is None or values is None:
                raise InputError("inputs logit_bias_token_ids and logit_bias_values go together")
            ids, values = ids.as_numpy().reshape(-1).astype(np.int64), values.as_numpy().reshape(-1).astype(np.float32)
            if len(ids) != len(values):
                raise InputError(f"{len(ids)} logit_bias_token_ids but {len(values)} logit_bias_values")
            vocab = self.llm.n_vocab()
            if len(ids) and (ids.min() < 0 or ids.max() >= vocab):
                wrong = int(ids[(ids < 0) | (ids >= vocab)][0])
                raise InputError(f"logit_bias token id {wrong} is not in the vocabulary ({vocab} tokens)")
            if not np.isfinite(values).all() or np.abs(values).max(initial=0) > 100:
                raise InputError("logit_bias values must be between -100 and 100")
            bias = (ids, values)
        want = bool(_scalar(request, "return_log_probs", False))
        top = int(_scalar(request, "top_logprobs", 0))
        if not 0 <= top <= 20:
            raise InputError(f"input top_logprobs must be between 0 and 20, got {top}")
        if bias is None and not want:
            return None
        return _Logits(bias, top if want else None)

    def _grammar(self, guide_type, guide):
        import llama_cpp

        try:
            if guide_type == "json":
                grammar = llama_cpp.LlamaGrammar.from_string(llama_cpp.llama_grammar.JSON_GBNF, verbose=False)
            elif guide_type == "json_schema":
                grammar = llama_cpp.LlamaGrammar.from_json_schema(guide, verbose=False)
            else:
                raise InputError(f"input guided_decoding_guide_type must be json or json_schema, "
                                 f"got {guide_type[:32]!r}")
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - the schema is the caller's: say why it cannot be used
            raise InputError(f"the JSON schema cannot be turned into a grammar: {str(exc)[:200]}") from exc
        self._check_grammar(llama_cpp, grammar._grammar, grammar._root)
        return grammar

    def _check_grammar(self, llama_cpp, text, root):
        """llama.cpp's own parser on the grammar, before generation: llama-cpp-python adds the NULL sampler of a
        grammar it refuses to the sampler chain unchecked, which crashes the model process. Bounded first:
        the parser recurses once for each nested group."""
        size = len(text.encode("utf-8"))
        if size > MAX_GRAMMAR_BYTES:
            raise InputError(f"the JSON schema makes a grammar of {size} bytes; at most {MAX_GRAMMAR_BYTES}")
        nesting = _grammar_nesting(text)
        if nesting > MAX_GRAMMAR_NESTING:
            raise InputError(f"the JSON schema makes a grammar that nests {nesting} groups deep; "
                             f"at most {MAX_GRAMMAR_NESTING}")
        with _stderr_kept() as said:
            sampler = llama_cpp.llama_sampler_init_grammar(self.llm._model.vocab, text.encode("utf-8"),
                                                           root.encode("utf-8"))
        if not sampler:
            why = next((line.partition("parsing grammar:")[2] for line in said if "parsing grammar:" in line),
                       said[0] if said else "")
            raise InputError(f"llama.cpp refuses the grammar of this JSON schema: {why.strip()[:200]}")
        llama_cpp.llama_sampler_free(sampler)

    def _generate(self, request, sender):
        prompt, max_tokens, temperature, top_p, stream, stops, (seed, seeded), options = self._parse(request)
        llm = self.llm
        # BOS is added only when the GGUF asks for it; special tokens in the rendered
        # chat template (<|im_start|> ...) are parsed as such.
        prompt_tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        room = self.n_ctx - len(prompt_tokens)
        if room < 1:
            raise InputError(f"the prompt is {len(prompt_tokens)} tokens; the context holds {self.n_ctx}")
        limit = min(max_tokens, room)

        llm.set_seed(seed)
        if seeded:
            # Reusing the cached prefix recomputes the last prompt token alone, whose numbers differ
            # slightly from the batched ones: enough to change a sampled token. A seeded request
            # evaluates its whole prompt, so the same request gives the same text.
            llm.reset()
        logits = next(iter(options.get("logits_processor") or ()), None)
        logged = []        # log-probability entries not sent yet
        completion = []
        pending = b""      # bytes of an incomplete UTF-8 character
        text = ""          # decoded text so far (cut at a stop word once found)
        sent = 0           # characters of text already streamed
        finish = "length"
        for token in llm.generate(prompt_tokens, temp=temperature, top_p=top_p, **self.sampling, **options):
            if request.is_cancelled():
                pb_utils.Logger.log_info(f"llamacpp: request cancelled after {len(completion)} of {limit} tokens")
                self._fail(sender, "request cancelled", pb_utils.TritonError.CANCELLED)
                return
            if self._is_eog(token):
                finish = "stop"
                break
            completion.append(token)
            piece = llm.detokenize([token], prev_tokens=prompt_tokens + completion[:-1])
            if logits is not None and logits.top is not None:
                logged.append(logits.entry(token, piece, lambda t: llm.detokenize([t])))
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
                    outputs = [_tensor("text_output", text[sent:end], np.object_)]
                    if logged:
                        outputs.append(_tensor("logprobs", json.dumps(logged), np.object_))
                        logged = []
                    sender.send(pb_utils.InferenceResponse(output_tensors=outputs))
                    sent = end
        if pending and finish == "length":
            text += pending.decode("utf-8", errors="replace")

        final = [
            _tensor("text_output", text[sent:] if stream else text, np.object_),
            _tensor("prompt_tokens", len(prompt_tokens), np.int32),
            _tensor("completion_tokens", len(completion), np.int32),
            _tensor("finish_reason", finish, np.object_),
        ]
        if logits is not None and logits.top is not None:
            final.append(_tensor("logprobs", json.dumps(logged), np.object_))
        sender.send(pb_utils.InferenceResponse(output_tensors=final), flags=FINAL)

    def finalize(self):
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
