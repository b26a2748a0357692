#!/usr/bin/env bash
# `make compose-check`: docker-compose.yml for real, as a user runs it, on a Docker engine here.
#   1. the engine: docker.io and docker-compose from Debian if missing, dockerd started if not running
#   2. the images: on the official base images when this machine has or can pull them, otherwise on
#      images built from Debian's packages (deploy/docker/debian/build.sh, compose.debian.yml)
#   3. the platform under a project name of its own, on free loopback ports, until every health check passes
#   4. the seed document's section 8 workflow and a chat, through the gateway (compose_workflow.py)
#   5. everything it started removed, containers, network and volumes, whether it passed or not
#      (the images stay: the next run builds from their cache)
# COMPOSE_CHECK_IMAGES=debian takes the Debian-built bases even where the official ones can be pulled;
# COMPOSE="docker compose" runs Compose v2 instead of docker-compose.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
COMPOSE=${COMPOSE:-docker-compose}
OFFICIAL_IMAGES=(python:3.11-slim-bookworm postgres:16-bookworm redis:7-bookworm)
# The legacy builder: Debian's engine has BuildKit but no buildx for the CLI to drive it.
export DOCKER_BUILDKIT=0

step() { printf '\n== compose-check: %s (%ss)\n' "$*" "$SECONDS"; }

ensure_engine() {
  if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null \
      || { [[ $COMPOSE == docker-compose ]] && ! command -v docker-compose >/dev/null; }; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io docker-compose
  fi
  docker info >/dev/null 2>&1 && return
  # No init system to start it (a container, CI): dockerd in its own session, outliving this script.
  setsid dockerd >/var/log/llmops-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; sleep 1; done
  tail -n 20 /var/log/llmops-dockerd.log
  echo "compose-check: dockerd did not start (log: /var/log/llmops-dockerd.log)" >&2
  return 1
}

# The official images when they are here or a registry gives them in time; a registry that cannot be
# reached fails in well under the limit.
official_images() {
  [[ ${COMPOSE_CHECK_IMAGES:-} != debian ]] || return 1
  local image
  for image in "${OFFICIAL_IMAGES[@]}"; do
    docker image inspect "$image" >/dev/null 2>&1 || timeout 300 docker pull -q "$image" >/dev/null || return 1
  done
}

# What a check killed before its teardown left (SIGKILL, a machine stopped): projects named after a
# process that is gone. A check still running elsewhere on this machine is left alone.
remove_stale_projects() {
  local project pid
  for project in $(docker ps -a --format '{{.Label "com.docker.compose.project"}}' | sort -u); do
    [[ $project =~ ^llmops-check-([0-9]+)-[0-9]+$ ]] || continue
    pid=${BASH_REMATCH[1]}
    kill -0 "$pid" 2>/dev/null && continue
    echo "removing $project, left by a check that is gone"
    docker ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r docker rm -f >/dev/null
    docker volume ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker volume rm >/dev/null
    docker network ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker network rm >/dev/null
  done
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

step "Docker engine"
ensure_engine
remove_stale_projects
docker version --format 'engine {{.Server.Version}}, client {{.Client.Version}}'
echo "compose $($COMPOSE version --short)"

step "base images"
files=(-f docker-compose.yml)
if official_images; then
  echo "official images: ${OFFICIAL_IMAGES[*]}"
else
  echo "no official images (no registry here, or COMPOSE_CHECK_IMAGES=debian): building them from Debian's packages"
  deploy/docker/debian/build.sh
  files+=(-f deploy/docker/compose.debian.yml)
fi

# A project of its own (containers, network, volumes), and an env file of its own: the developer's
# .env is not read, and nothing here collides with `make up` or the PostgreSQL and Redis on this machine.
project=llmops-check-$$-$RANDOM
workdir=$(mktemp -d)
gateway_port=$(free_port)
cat >"$workdir/env" <<EOF
LLMOPS_SERVICE_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
GATEWAY_PORT=$gateway_port
POSTGRES_PORT=$(free_port)
REDIS_PORT=$(free_port)
EOF
read -ra compose <<<"$COMPOSE"  # "docker compose": two words
compose+=(--project-name "$project" --env-file "$workdir/env" "${files[@]}")

teardown() {
  local status=$?
  trap - EXIT INT TERM
  if ((status != 0)); then
    step "FAILED (exit $status): the containers and their last log lines"
    "${compose[@]}" ps || true
    "${compose[@]}" logs --no-color --tail=60 || true
  fi
  step "tear down $project"
  "${compose[@]}" down --volumes --remove-orphans --timeout 20 || true
  rm -rf "$workdir"
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "build the images"
"${compose[@]}" build

step "start $project (gateway on 127.0.0.1:$gateway_port)"
# Compose starts a service once those it depends on are healthy; the gateway is the last.
"${compose[@]}" up -d
services=$("${compose[@]}" config --services | wc -l)
deadline=$((SECONDS + 300))
while :; do
  states=$(for id in $("${compose[@]}" ps -q); do
    docker inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id"
  done)
  healthy=$(grep -c ' healthy$' <<<"$states" || true)
  ((healthy == services)) && break
  if ((SECONDS > deadline)); then
    printf 'compose-check: %s of %s services healthy after 300 s:\n%s\n' "$healthy" "$services" "$states" >&2
    exit 1
  fi
  sleep 2
done
echo "all $services services healthy"

step "the seed's workflow through the gateway"
"$PY" deploy/scripts/compose_workflow.py "http://127.0.0.1:$gateway_port"

step "passed"
