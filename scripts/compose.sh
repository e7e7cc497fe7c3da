#!/usr/bin/env bash
# Run compose on the clean room's compose file: `docker compose` (v2) when it exists, else
# `docker-compose` (v1.29). Project name `cleanroom`, or $CLEANROOM_PROJECT.
#   scripts/compose.sh ps
#   scripts/compose.sh logs -f runner
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
args=(--project-name "${CLEANROOM_PROJECT:-cleanroom}" --file "$root/docker-compose.yml" --project-directory "$root")

if docker compose version >/dev/null 2>&1; then
    exec docker compose "${args[@]}" "$@"
elif command -v docker-compose >/dev/null 2>&1; then
    exec docker-compose "${args[@]}" "$@"
else
    echo "compose.sh: neither 'docker compose' nor 'docker-compose' is installed:" \
         "install the compose plugin (docker-compose-plugin) or docker-compose (apt-get install docker-compose)" >&2
    exit 127
fi
