# Python 3.11 from Debian 12's packages: what the services' and the gateway's images build FROM
# (their PYTHON_IMAGE argument) on a machine that cannot pull python:3.11-slim-bookworm.
# deploy/docker/debian/build.sh builds it on the base image made from Debian's packages.
ARG DEBIAN_IMAGE=llmops-debian/debian:bookworm
FROM ${DEBIAN_IMAGE}
# python-is-python3: `python`, as the official image names it. libpython3.11: the Triton Python
# backend stub (nvidia-pytriton) links it; the official image's Python is built shared, Debian's is not.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 libpython3.11 \
 && rm -rf /var/lib/apt/lists/*
# pip verifies PyPI with the system's CA bundle, which holds the certificate authorities of the
# machine that built the base image (build.sh): a TLS-inspecting proxy's, where there is one.
ENV LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
