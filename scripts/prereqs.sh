#!/usr/bin/env bash
# Install the host tools the clean room needs, from Debian's packages, when they are missing.
#   scripts/prereqs.sh         what `make up` / `make images` need: python3-venv, make, Docker and its
#                              compose tool, debootstrap (the base image is built from Debian here)
#   scripts/prereqs.sh test    the same, plus Chromium and its driver for the review-page browser tests and
#                              PostgreSQL for the store's tests on it
# As root it runs apt-get; otherwise it prints the one command to run and exits 1. It never removes
# anything and does nothing when every tool is already there.
set -euo pipefail

want_test=0
[ "${1:-}" = test ] && want_test=1

need=()
command -v make >/dev/null || need+=(make)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v docker >/dev/null || need+=(docker.io)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
    need+=(docker-compose)
fi
# The base image is made with debootstrap unless CLEANROOM_BASE_IMAGE names one the engine can pull.
if [ -z "${CLEANROOM_BASE_IMAGE:-}" ]; then
    command -v debootstrap >/dev/null || need+=(debootstrap)
fi
if ((want_test)); then
    command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need+=(chromium)
    command -v chromedriver >/dev/null || need+=(chromium-driver)
    # tests/test_store_postgres.py starts a throwaway server (scripts/postgres.sh)
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
fi

if ((${#need[@]} == 0)); then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "prereqs: missing ${need[*]}. Install them with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${need[*]}" >&2
    if [[ " ${need[*]} " == *" debootstrap "* ]]; then
        echo "(or, instead of debootstrap, set CLEANROOM_BASE_IMAGE=python:3.11-slim where a registry is reachable)" >&2
    fi
    exit 1
fi
echo "==> prereqs: installing ${need[*]} (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}"
