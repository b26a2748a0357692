"""Deployment service: serving endpoints, their revisions, rollback, and the
runtimes (local Triton processes, Kubernetes) that run them."""
