"""What the concurrency and shared-prefix scenarios ask: deterministic texts, so that every system
of a run, and every run, is asked the same. The in-process baseline (bench/inprocess.py) imports it
too, so it imports nothing of the platform's."""

from __future__ import annotations

import random

TENANTS = 4
# Words of the tenants' filler text, so that a system prompt reads as prose to the tokenizer (about 1.3
# SmolLM2 tokens a word) without a corpus to ship.
_WORDS = ("account", "agent", "answer", "billing", "brief", "calm", "careful", "customer", "data", "delivery",
          "direct", "document", "email", "escalate", "explain", "friendly", "guide", "help", "invoice", "issue",
          "kind", "language", "limit", "never", "order", "policy", "polite", "product", "question", "record",
          "refund", "reply", "request", "respond", "return", "safety", "service", "shipping", "short", "step",
          "support", "team", "ticket", "tone", "user", "verify", "warranty", "always", "clearly", "quickly")
FILLER_WORDS = 820  # 1,000 tokens or so with the rest of the prompt (usage.prompt_tokens, in the table, says)


def user_message(n: int) -> str:
    """The n-th request's user message: no two alike, all as long in tokens (SmolLM2 splits digits),
    and asking for more than 32 tokens so that each answer runs to max_tokens."""
    return f"Write a short story about robot number {n % 10_000:04d}."


def system_prompt(tenant: int, nonce: int) -> str:
    """A tenant's system prompt of about 1,000 SmolLM2 tokens, opening with a 16-digit number. With
    one number per tenant its prompts repeat whole; with a fresh one per request no two share more
    than the chat template's opening and a digit or two, so there is no prefix to reuse."""
    rng = random.Random(tenant)
    sentences, words = [], 0
    while words < FILLER_WORDS:
        sentence = rng.choices(_WORDS, k=rng.randint(6, 14))
        sentences.append(" ".join(sentence).capitalize() + ".")
        words += len(sentence)
    return (f"{nonce:016d}. You are the support assistant of tenant {tenant}. Follow its policy below.\n"
            + " ".join(sentences))


def chat_messages(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": user_message(n)}]


def tenant_messages(n: int, *, reuse: bool) -> list[dict[str, str]]:
    """The n-th request of the shared-prefix scenario: tenants in turn; the nonce is the tenant's own
    (reuse) or drawn per request from a seeded generator (no reuse)."""
    tenant = n % TENANTS
    nonce = tenant + 1 if reuse else random.Random(f"nonce-{n}").randrange(10**16)
    return [{"role": "system", "content": system_prompt(tenant, nonce)},
            {"role": "user", "content": user_message(n)}]
