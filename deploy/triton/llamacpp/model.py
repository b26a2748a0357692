"""Triton Python-backend model: text generation with llama.cpp (llama-cpp-python's bindings) on a GGUF
file, several requests at once by continuous batching, as llama.cpp's own server does.

One model.py serves any GGUF: the file and the context come from config.pbtxt parameters (gguf_path,
n_ctx: the context of one request, n_threads, slots: the requests generated at once; optional top_k,
min_p, repeat_penalty). Optional inputs, by their TensorRT-LLM names: random_seed, presence_penalty,
frequency_penalty, return_log_probs, and guided decoding (guided_decoding_guide_type json or
json_schema, guided_decoding_guide the schema) as a llama.cpp grammar; and logit_bias_token_ids with
logit_bias_values, top_logprobs (output logprobs: OpenAI's entries, as JSON, of the tokens of each
response). The tensor contract is the TensorRT-LLM ensemble's (see config.pbtxt), plus cached_tokens.

The model is decoupled: execute() checks each request, answers a bad one at once (INVALID_ARG), and
queues the others; one scheduler thread owns the llama.cpp context. Between two decode steps it gives
waiting requests the free slots (first come, first served), then decodes one batch that holds the next
token of every generating sequence and prompt chunks of new ones, at most n_batch tokens (chunked
prefill: a long prompt does not stall the others for longer than one chunk). Each sequence samples with
its own llama.cpp sampler chain (logit bias, penalties, grammar, top_k/top_p/min_p, temperature, its own
seeded random stream) and answers through its own response sender, the last response flagged
TRITONSERVER_RESPONSE_COMPLETE_FINAL; a request with the parameter report_start gets an empty response
first, as soon as the model has it. A finished or cancelled sequence (client gone, or cancelled) frees
its slot at the next step.

Prefix reuse: the KV cache is one buffer shared by the slots (kv_unified), and each slot keeps the tokens
its sequence holds after it ends. A new request takes the free slot whose tokens share the longest prefix
with its prompt, or, when another slot (busy or not) shares a longer one, a copy of that slot's prefix (a
copy within the buffer is bookkeeping, no computation); only the rest of the prompt is evaluated, and the
final response says how many prompt tokens were reused (cached_tokens).

What `random_seed` guarantees: the seed drives the request's own random stream, which no other request
draws from. The same request with the same seed gives the same text on a replica that runs nothing else
(a seeded request evaluates its whole prompt, never a reused prefix, whose last token would be computed
in a batch of another shape). With batch neighbours, the logits can differ in their last bits (the batch
holds other sequences' tokens, and attention spans a buffer of another size), which can change a sampled
token: the text is then not guaranteed bitwise.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import math
import os
import random
import re
import tempfile
import threading

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


class _LogProbs:
    """The log-probabilities of a step (after the logit bias, before penalties and sampling) for the token
    then picked and the `top` likeliest, in OpenAI's entries."""

    def __init__(self, bias, top):
        self.bias, self.top, self.last = bias, top, None

    def observe(self, logits):
        if self.bias is not None:
            logits = logits.copy()
            np.add.at(logits, self.bias[0], self.bias[1])
        peak = logits.max()
        self.last = logits - (peak + np.log(np.exp(logits - peak).sum()))

    def entry(self, token, piece, vocab_piece):
        logprobs, top = self.last, []
        if self.top:
            best = np.argpartition(-logprobs, self.top)[:self.top]
            for t in best[np.argsort(-logprobs[best])]:
                top.append(_logprob(vocab_piece(int(t)), float(logprobs[t])))
        return {**_logprob(piece, float(logprobs[token])), "top_logprobs": top}


def _logprob(piece, value):
    return {"token": piece.decode("utf-8", errors="replace"), "logprob": max(value, -9999.0), "bytes": list(piece)}


def _common_prefix(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class _Job:
    """One request: what it asks, checked, and its progress once it holds a slot."""

    def __init__(self, sender, tokens, limit, stream, stops, sampler, logprobs, seeded):
        self.sender, self.tokens, self.limit = sender, tokens, limit
        self.stream, self.stops, self.sampler, self.logprobs, self.seeded = stream, stops, sampler, logprobs, seeded
        self.slot = None
        self.fed = 0            # prompt tokens in the slot's KV cache (reused or evaluated)
        self.cached = 0         # of them, reused from a cache
        self.next_token = None  # sampled, not yet in the KV cache
        self.completion = []
        self.logged = []        # log-probability entries not sent yet
        self.pending = b""      # bytes of an incomplete UTF-8 character
        self.text = ""          # decoded text so far (cut at a stop word once found)
        self.sent = 0           # characters of text already streamed
        self.finish = "length"


class _Slot:
    def __init__(self, seq_id):
        self.seq_id = seq_id
        self.tokens = []  # what this sequence's KV cache holds, by position
        self.job = None
        self.used = 0     # when it last took a job (step count): the least recently used is reused first


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("the llamacpp model needs model_transaction_policy { decoupled: true }")
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        gguf_path = params.get("gguf_path", "")
        if not gguf_path or not os.path.isfile(gguf_path):
            raise pb_utils.TritonModelException(f"parameter gguf_path: no GGUF file at {gguf_path!r}")
        self.n_ctx = int(params.get("n_ctx") or 2048)
        n_threads = int(params.get("n_threads") or 0) or max(1, min(4, os.cpu_count() or 1))
        n_slots = int(params.get("slots") or 1)
        self.sampling = {
            "top_k": int(params.get("top_k") or 40),
            "min_p": float(params.get("min_p") or 0.05),
            "repeat_penalty": float(params.get("repeat_penalty") or 1.0),
        }

        import llama_cpp  # imported here so that a missing package fails the load, not the stub
        from llama_cpp import _logger, llama_grammar

        self.lib = llama_cpp
        _logger.set_verbose(False)  # llama.cpp's own log lines below ERROR are dropped
        llama_grammar._build_repetition = _bounded(llama_grammar._build_repetition)
        llama_cpp.llama_backend_init()
        self.model = llama_cpp.llama_model_load_from_file(gguf_path.encode(), llama_cpp.llama_model_default_params())
        if not self.model:
            raise pb_utils.TritonModelException(f"llama.cpp cannot load {gguf_path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_batch = min(512, self.n_ctx)
        cparams = llama_cpp.llama_context_default_params()
        # One buffer for all slots, each request's context n_ctx: every slot can hold a full context at once.
        cparams.n_ctx, cparams.n_seq_max, cparams.kv_unified = self.n_ctx * n_slots, n_slots, True
        cparams.n_batch = cparams.n_ubatch = self.n_batch
        cparams.n_threads = cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise pb_utils.TritonModelException(f"llama.cpp cannot make a context of {cparams.n_ctx} tokens")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.slots = [_Slot(i) for i in range(n_slots)]
        self.waiting = collections.deque()
        self.wakeup = threading.Condition()
        self.stopping = False
        self.steps = 0
        # On the replica's metrics port, for autoscaling by occupancy: a batching replica's CPU is as busy
        # with one request as with `slots` of them.
        self.metrics = pb_utils.MetricFamily(name="llmops_replica_requests", kind=pb_utils.MetricFamily.GAUGE,
                                             description="Requests in this replica's model: running (in a slot) "
                                                         "or waiting for one; slots: how many run at once.")
        self.gauges = {state: self.metrics.Metric(labels={"state": state}) for state in ("running", "waiting", "slots")}
        self.gauges["slots"].set(n_slots)
        self.shown = (0, 0)
        self.scheduler = threading.Thread(target=self._run, name="llamacpp-scheduler", daemon=True)
        self.scheduler.start()
        pb_utils.Logger.log_info(f"llamacpp: loaded {os.path.basename(gguf_path)} (n_ctx={self.n_ctx} per request, "
                                 f"slots={n_slots}, n_threads={n_threads})")

    # -------------------------------------------------------------------------------- requests in

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                if json.loads(request.parameters() or "{}").get("report_start"):
                    # Before anything else: should this request take the model process down, the router
                    # knows that it was on it (not retried on another replica), not sent to a dead one.
                    sender.send(pb_utils.InferenceResponse(output_tensors=[]))
                job = self._parse(request, sender)  # the request is not kept: its sender answers it
            except InputError as exc:
                # A stream's error carries the message alone, not the code: the prefix tells the
                # router that the request was at fault (a 400), not the replica (a 503, retried).
                self._fail(sender, f"INVALID_ARG: {exc}", pb_utils.TritonError.INVALID_ARG)
                continue
            except Exception as exc:  # noqa: BLE001 - reported to the client, the replica keeps serving
                self._fail(sender, f"generation failed: {exc}", pb_utils.TritonError.INTERNAL)
                continue
            with self.wakeup:
                self.waiting.append(job)
                self.wakeup.notify()
        return None

    @staticmethod
    def _fail(sender, message, code):
        try:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code)), flags=FINAL)
        except Exception:  # noqa: BLE001 - the request may already be gone (cancelled)
            pass

    def _parse(self, request, sender):
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
        penalties = {}
        for name in ("presence_penalty", "frequency_penalty"):
            value = float(_scalar(request, name, 0.0))
            if not math.isfinite(value) or not -2 <= value <= 2:
                raise InputError(f"input {name} must be between -2 and 2, got {value}")
            penalties[name] = value
        guide_type = _text(_scalar(request, "guided_decoding_guide_type", b""), "guided_decoding_guide_type")
        guide = _text(_scalar(request, "guided_decoding_guide", b""), "guided_decoding_guide")
        bias, logprobs = self._bias_and_logprobs(request)
        seeded = pb_utils.get_input_tensor_by_name(request, "random_seed") is not None
        # llama.cpp seeds are 32-bit, and 0xFFFFFFFF asks it for a random one: fold into the others.
        seed = int(_scalar(request, "random_seed")) % 0xFFFFFFFF if seeded else random.getrandbits(31)

        # BOS is added only when the GGUF asks for it; special tokens in the rendered chat template
        # (<|im_start|> ...) are parsed as such.
        tokens = self._tokenize(prompt.encode("utf-8"))
        room = self.n_ctx - len(tokens)
        if room < 1:
            raise InputError(f"the prompt is {len(tokens)} tokens; the context holds {self.n_ctx}")
        # Last: the grammar is a sampler of llama.cpp's, which the chain owns from here (nothing raises after).
        grammar = self._grammar(guide_type, guide) if guide_type else None
        sampler = self._sampler(temperature, top_p, seed, penalties, grammar, bias)
        return _Job(sender, tokens, min(max_tokens, room), stream, stops, sampler, logprobs, seeded)

    def _tokenize(self, data):
        size = len(data) + 2
        while True:
            buffer = (self.lib.llama_token * size)()
            n = self.lib.llama_tokenize(self.vocab, data, len(data), buffer, size, True, True)
            if n >= 0:
                return buffer[:n]
            size = -n

    def _bias_and_logprobs(self, request):
        """The logit bias (ids, values) the request asks for, and its log-probabilities helper, if any."""
        ids = pb_utils.get_input_tensor_by_name(request, "logit_bias_token_ids")
        values = pb_utils.get_input_tensor_by_name(request, "logit_bias_values")
        bias = None
        if ids is not None or values is not None:
            if ids is None or values is None:
                raise InputError("inputs logit_bias_token_ids and logit_bias_values go together")
            ids, values = ids.as_numpy().reshape(-1).astype(np.int64), values.as_numpy().reshape(-1).astype(np.float32)
            if len(ids) != len(values):
                raise InputError(f"{len(ids)} logit_bias_token_ids but {len(values)} logit_bias_values")
            if len(ids) and (ids.min() < 0 or ids.max() >= self.n_vocab):
                wrong = int(ids[(ids < 0) | (ids >= self.n_vocab)][0])
                raise InputError(f"logit_bias token id {wrong} is not in the vocabulary ({self.n_vocab} tokens)")
            if not np.isfinite(values).all() or np.abs(values).max(initial=0) > 100:
                raise InputError("logit_bias values must be between -100 and 100")
            bias = (ids, values)
        want = bool(_scalar(request, "return_log_probs", False))
        top = int(_scalar(request, "top_logprobs", 0))
        if not 0 <= top <= 20:
            raise InputError(f"input top_logprobs must be between 0 and 20, got {top}")
        return bias, (_LogProbs(bias, top) if want else None)

    def _sampler(self, temperature, top_p, seed, penalties, grammar, bias):
        """The request's own sampler chain, in llama-cpp-python's order (so that a request samples as it did
        when the model ran one at a time): logit bias, penalties, grammar, then greedy or top-k, top-p,
        min-p, temperature and a random draw of the request's own seed."""
        lib = self.lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        steps = []
        if bias is not None:
            entries = (lib.llama_logit_bias * len(bias[0]))(*(lib.llama_logit_bias(int(t), float(v))
                                                              for t, v in zip(*bias)))
            steps.append(lib.llama_sampler_init_logit_bias(self.n_vocab, len(entries), entries))
        steps.append(lib.llama_sampler_init_penalties(self.n_vocab, 64, self.sampling["repeat_penalty"],
                                                      penalties["frequency_penalty"], penalties["presence_penalty"]))
        if grammar is not None:
            steps.append(grammar)
        if temperature == 0:
            steps.append(lib.llama_sampler_init_greedy())
        else:
            steps += [lib.llama_sampler_init_top_k(self.sampling["top_k"]), lib.llama_sampler_init_top_p(top_p, 1),
                      lib.llama_sampler_init_min_p(self.sampling["min_p"], 1), lib.llama_sampler_init_temp(temperature),
                      lib.llama_sampler_init_dist(seed)]
        for step in steps:
            lib.llama_sampler_chain_add(chain, step)  # the chain owns them from here
        return chain

    def _grammar(self, guide_type, guide):
        """The grammar sampler of a guided request: llama.cpp's JSON grammar, or one from the JSON schema."""
        try:
            if guide_type == "json":
                text, root = self.lib.llama_grammar.JSON_GBNF, "root"
            elif guide_type == "json_schema":
                grammar = self.lib.LlamaGrammar.from_json_schema(guide, verbose=False)
                text, root = grammar._grammar, grammar._root
            else:
                raise InputError(f"input guided_decoding_guide_type must be json or json_schema, "
                                 f"got {guide_type[:32]!r}")
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - the schema is the caller's: say why it cannot be used
            raise InputError(f"the JSON schema cannot be turned into a grammar: {str(exc)[:200]}") from exc
        return self._grammar_sampler(text, root)

    def _grammar_sampler(self, text, root):
        """llama.cpp's own parser on the grammar, before generation: a grammar it refuses gives a NULL sampler,
        which crashes the process once in a chain. Bounded first: the parser recurses once for each nested
        group."""
        size = len(text.encode("utf-8"))
        if size > MAX_GRAMMAR_BYTES:
            raise InputError(f"the JSON schema makes a grammar of {size} bytes; at most {MAX_GRAMMAR_BYTES}")
        nesting = _grammar_nesting(text)
        if nesting > MAX_GRAMMAR_NESTING:
            raise InputError(f"the JSON schema makes a grammar that nests {nesting} groups deep; "
                             f"at most {MAX_GRAMMAR_NESTING}")
        with _stderr_kept() as said:
            sampler = self.lib.llama_sampler_init_grammar(self.vocab, text.encode("utf-8"), root.encode("utf-8"))
        if not sampler:
            why = next((line.partition("parsing grammar:")[2] for line in said if "parsing grammar:" in line),
                       said[0] if said else "")
            raise InputError(f"llama.cpp refuses the grammar of this JSON schema: {why.strip()[:200]}")
        return sampler

    # -------------------------------------------------------------------------------- the scheduler

    def _run(self):
        while True:
            self._show()
            with self.wakeup:
                while not self.stopping and not self.waiting and not any(s.job for s in self.slots):
                    self.wakeup.wait()
                if self.stopping:
                    return
                admitted = self._admit()
            try:
                for job in admitted:
                    self._place(job)
                self._show()
                self._step()
            except Exception as exc:  # noqa: BLE001 - the step failed: its requests are told, the model goes on
                self.lib.llama_memory_clear(self.memory, True)  # what the cache holds is no longer known
                for slot in self.slots:
                    slot.tokens = []
                    if slot.job is not None:
                        self._end(slot, error=(f"generation failed: {exc}", pb_utils.TritonError.INTERNAL))
                for job in admitted:
                    if job.slot is None:  # not placed yet
                        self.lib.llama_sampler_free(job.sampler)
                        self._fail(job.sender, f"generation failed: {exc}", pb_utils.TritonError.INTERNAL)

    def _show(self):
        """The metrics of what runs and waits, when they changed."""
        now = (sum(1 for s in self.slots if s.job is not None), len(self.waiting))
        if now != self.shown:
            self.gauges["running"].set(now[0])
            self.gauges["waiting"].set(now[1])
            self.shown = now

    def _admit(self):
        """Waiting requests for the free slots, first come first served (called with the lock held)."""
        free = sum(1 for s in self.slots if s.job is None)
        return [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]

    def _place(self, job):
        """Give the job the free slot that reuses most of its prompt, copying a longer prefix from another
        slot where one holds it."""
        lib, tokens = self.lib, job.tokens
        free = [s for s in self.slots if s.job is None]
        # A seeded request evaluates its whole prompt (what `random_seed` guarantees, in the docstring).
        reuse = (lambda slot: 0) if job.seeded else (lambda slot: _common_prefix(slot.tokens, tokens))
        slot = max(free, key=lambda s: (reuse(s), -s.used))
        kept = reuse(slot)
        donor = max(self.slots, key=reuse)
        shared = reuse(donor)
        if shared > kept:  # a prefix another slot holds: the cells are shared, not computed again
            lib.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
            lib.llama_memory_seq_cp(self.memory, donor.seq_id, slot.seq_id, 0, shared)
            slot.tokens, kept = donor.tokens[:shared], shared
        # At least the prompt's last token is evaluated: its logits pick the first token.
        kept = min(kept, len(tokens) - 1)
        if not lib.llama_memory_seq_rm(self.memory, slot.seq_id, kept, -1):
            lib.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
            kept = 0
        del slot.tokens[kept:]
        job.slot, job.fed, job.cached = slot, kept, kept
        slot.job, slot.used = job, self.steps

    def _step(self):
        """One decode: the next token of every generating sequence, then prompt chunks, at most n_batch
        tokens; then each sequence with logits in it samples its next token."""
        self.steps += 1
        batch, outputs = self.batch, []
        n = 0

        def add(slot, token, logits):
            nonlocal n
            batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, len(slot.tokens), 1
            batch.seq_id[n][0], batch.logits[n] = slot.seq_id, logits
            slot.tokens.append(token)
            n += 1

        active = [s for s in self.slots if s.job is not None]
        for slot in active:
            job = slot.job
            if self._cancelled(slot):
                continue
            if job.next_token is not None:
                outputs.append((slot, n))
                add(slot, job.next_token, True)
                job.next_token = None
        for slot in sorted((s for s in active if s.job is not None and s.job.fed < len(s.job.tokens)),
                           key=lambda s: s.used):
            job = slot.job
            take = min(len(job.tokens) - job.fed, self.n_batch - n)
            for i in range(job.fed, job.fed + take):
                last = i == len(job.tokens) - 1
                if last:
                    outputs.append((slot, n))
                add(slot, job.tokens[i], last)
            job.fed += take
            if n == self.n_batch:
                break
        if not n:
            return
        batch.n_tokens = n
        status = self.lib.llama_decode(self.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        for slot, index in outputs:
            try:
                self._sampled(slot, index)
            except Exception as exc:  # noqa: BLE001 - this request's failure, not its neighbours'
                self._end(slot, error=(f"generation failed: {exc}", pb_utils.TritonError.INTERNAL))

    def _cancelled(self, slot):
        if not slot.job.sender.is_cancelled():
            return False
        pb_utils.Logger.log_info(f"llamacpp: request cancelled after {len(slot.job.completion)} "
                                 f"of {slot.job.limit} tokens")
        self._end(slot, error=("request cancelled", pb_utils.TritonError.CANCELLED))
        return True

    def _sampled(self, slot, index):
        lib, job = self.lib, slot.job
        if job.logprobs is not None:
            job.logprobs.observe(np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, index),
                                                       shape=(self.n_vocab,)))
        token = lib.llama_sampler_sample(job.sampler, self.ctx, index)
        if lib.llama_vocab_is_eog(self.vocab, token):
            job.finish = "stop"
            self._end(slot)
            return
        job.completion.append(token)
        piece = self._piece(token)
        if job.logprobs is not None:
            job.logged.append(job.logprobs.entry(token, piece, self._piece))
        decoded, job.pending = _utf8_prefix(job.pending + piece)
        searched = len(job.text)
        job.text += decoded
        done = False
        for stop in job.stops:
            at = job.text.find(stop, max(0, searched - len(stop) + 1))
            if at >= 0:
                job.text, done, job.finish = job.text[:at], True, "stop"
        if done or len(job.completion) >= job.limit:
            self._end(slot)
            return
        job.next_token = token
        if job.stream:
            end = len(job.text) - _held_back(job.text, job.stops)
            if end > job.sent:
                outputs = [_tensor("text_output", job.text[job.sent:end], np.object_)]
                if job.logged:
                    outputs.append(_tensor("logprobs", json.dumps(job.logged), np.object_))
                    job.logged = []
                job.sender.send(pb_utils.InferenceResponse(output_tensors=outputs))
                job.sent = end

    def _piece(self, token):
        buffer = ctypes.create_string_buffer(64)
        n = self.lib.llama_token_to_piece(self.vocab, token, buffer, 64, 0, False)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = self.lib.llama_token_to_piece(self.vocab, token, buffer, -n, 0, False)
        return buffer.raw[:n]

    def _end(self, slot, error=None):
        """The job leaves its slot: answered (the final response), or failed with `error` (message, code).
        The slot keeps its tokens for the next prompt that starts the same way."""
        job, slot.job = slot.job, None
        self.lib.llama_sampler_free(job.sampler)
        if error is not None:
            self._fail(job.sender, *error)
            return
        if job.pending and job.finish == "length":
            job.text += job.pending.decode("utf-8", errors="replace")
        final = [
            _tensor("text_output", job.text[job.sent:] if job.stream else job.text, np.object_),
            _tensor("prompt_tokens", len(job.tokens), np.int32),
            _tensor("completion_tokens", len(job.completion), np.int32),
            _tensor("finish_reason", job.finish, np.object_),
            _tensor("cached_tokens", job.cached, np.int32),
        ]
        if job.logprobs is not None:
            final.append(_tensor("logprobs", json.dumps(job.logged), np.object_))
        try:
            job.sender.send(pb_utils.InferenceResponse(output_tensors=final), flags=FINAL)
        except Exception:  # noqa: BLE001 - the request may already be gone (cancelled)
            pass

    def finalize(self):
        scheduler = getattr(self, "scheduler", None)
        if scheduler is None:
            return
        with self.wakeup:
            self.stopping = True
            self.wakeup.notify()
        scheduler.join(timeout=30)
        for slot in self.slots:
            if slot.job is not None:
                self._end(slot, error=("the model is unloading", pb_utils.TritonError.UNAVAILABLE))
        while self.waiting:
            self._fail(self.waiting.popleft().sender, "the model is unloading", pb_utils.TritonError.UNAVAILABLE)
        self.gauges.clear()  # Triton's rule: a family's metrics go before the family
        del self.metrics
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)
