#!/usr/bin/env bash
# The base images compose.debian.yml builds on, made from Debian's packages for a machine that
# cannot pull from a container registry (README "Without a container registry"):
#   deploy/docker/debian/build.sh          # REBUILD=1 makes the base anew (Debian's latest updates)
#   llmops-debian/debian:bookworm          Debian 12 minbase (mmdebstrap), what PostgreSQL and Redis build on
#   llmops-debian/python:3.11-bookworm     python.Dockerfile on it, what the platform's images build on
# Needs root (mmdebstrap, installed if missing) and a Debian mirror (DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR).
set -euo pipefail
cd "$(dirname "$0")"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
BASE=llmops-debian/debian:bookworm

if [[ -n ${REBUILD:-} ]] || ! docker image inspect "$BASE" >/dev/null 2>&1; then
  command -v mmdebstrap >/dev/null || { apt-get update -q && apt-get install -y -q mmdebstrap; }
  hooks=()
  # This machine's own certificate authorities (a TLS-inspecting proxy's, where there is one):
  # pip in the images then reaches PyPI as it does here.
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    # shellcheck disable=SC2016  # $1 is mmdebstrap's: the root filesystem it is making
    hooks+=(--customize-hook='sync-in /usr/local/share/ca-certificates /usr/local/share/ca-certificates'
            --customize-hook='chroot "$1" update-ca-certificates')
  fi
  # What debian:bookworm-slim leaves out too: documentation, manual pages, translations.
  mmdebstrap --quiet --variant=minbase --include=ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    "${hooks[@]}" bookworm - \
    "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" "deb $SECURITY bookworm-security main" \
    | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' - "$BASE"
fi
docker build --quiet --build-arg DEBIAN_IMAGE="$BASE" -f python.Dockerfile -t llmops-debian/python:3.11-bookworm .
