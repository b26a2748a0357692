"""Serving runtimes: what turns an endpoint revision into running Triton replicas."""
