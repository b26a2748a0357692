"""Inference router: chat, completion, embeddings and health on serving
endpoints, proxied to Triton replicas over KServe v2 gRPC."""
