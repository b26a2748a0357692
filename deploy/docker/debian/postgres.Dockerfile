# PostgreSQL from Debian 12's packages (PostgreSQL 15): the `postgres` service of docker-compose.yml
# where postgres:16-bookworm cannot be pulled (deploy/docker/compose.debian.yml). It reads the same
# POSTGRES_DB, POSTGRES_USER and POSTGRES_PASSWORD, and keeps its data in the same volume path.
ARG DEBIAN_IMAGE=llmops-debian/debian:bookworm
FROM ${DEBIAN_IMAGE}
# The user first, with the official image's uid (999): the package then takes it as it is. No cluster
# from the package's install: the entry point initialises PGDATA, on the volume, once.
RUN groupadd --system --gid 999 postgres \
 && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql --shell /bin/bash postgres \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-common \
 && sed -ri 's/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
USER 999:999
EXPOSE 5432
# SIGINT: a fast shutdown (the official image's), not SIGTERM's wait for every client to leave.
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint.sh"]
CMD ["postgres"]
