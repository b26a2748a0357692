"""The service kit every llmops service is built from: settings, database,
errors, identity/RBAC, audit, pagination, logging, metrics and the gRPC
server factory."""
