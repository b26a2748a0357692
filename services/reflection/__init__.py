"""Reflection for the whole public API behind the gateway.

Envoy routes each llmops service to its own process, but a reflection
request names no service: this small server answers it for all of them, so
`grpcurl -plaintext <gateway> list` shows the whole API, as one server would."""
