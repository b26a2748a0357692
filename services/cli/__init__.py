"""The llmops command line: the platform's public API as noun-verb commands, over
native gRPC to the gateway port, with the caller's identity as metadata."""
