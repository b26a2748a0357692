# Redis from Debian 12's packages (Redis 7): the `redis` service of docker-compose.yml where
# redis:7-bookworm cannot be pulled (deploy/docker/compose.debian.yml).
ARG DEBIAN_IMAGE=llmops-debian/debian:bookworm
FROM ${DEBIAN_IMAGE}
# The user first, with the official image's uid (999): the package then takes it as it is.
RUN groupadd --system --gid 999 redis \
 && useradd --system --uid 999 --gid redis --home-dir /var/lib/redis --shell /usr/sbin/nologin redis \
 && apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o redis -g redis /data
WORKDIR /data
USER 999:999
EXPOSE 6379
# As the official image runs it: every interface of the container, no protected mode (compose's
# network is the boundary; docker-compose.yml publishes it on this machine's loopback only), data in /data.
CMD ["redis-server", "--bind", "0.0.0.0", "-::*", "--protected-mode", "no", "--dir", "/data"]
