"""The Redis stream that carries experiment outcomes from the routers to the experiment
service when LLMOPS_REDIS_URL is set: one entry per outcome, field `outcome` holding a
serialized llmops.v1.Outcome; the experiment service reads it as one consumer group."""

STREAM = "llmops:outcomes"
GROUP = "experiment"
FIELD = b"outcome"
# A bound, not a buffer: entries are deleted once ingested, so only an experiment service down
# for a long time lets the stream reach it (the oldest outcomes are then trimmed).
MAX_ENTRIES = 1_000_000
