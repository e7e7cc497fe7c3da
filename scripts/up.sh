#!/usr/bin/env bash
# Build the images, start the clean room (api + runner) and wait until both are healthy; on the first
# start, create an admin token and save it as the `admin` profile of the host's cleanroom CLI.
#   scripts/up.sh                 (what `make up` runs)
#   CLEANROOM_UP_TIMEOUT=300 scripts/up.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
compose="$root/scripts/compose.sh"
timeout="${CLEANROOM_UP_TIMEOUT:-180}"

python="python3"
[ -x "$root/.venv/bin/python" ] && python="$root/.venv/bin/python"
"$python" containers/build.py

echo "==> starting the clean room (compose project ${CLEANROOM_PROJECT:-cleanroom})"
"$compose" up -d --remove-orphans

fail() {
    echo >&2
    echo "up.sh: $1" >&2
    echo "---- last log lines ----" >&2
    "$compose" logs --tail 60 >&2 || true
    exit 1
}

# healthy | starting | unhealthy | exited | restarting (3) | missing
service_state() {
    local id
    id="$("$compose" ps -q "$1" 2>/dev/null || true)"
    [ -n "$id" ] || { echo missing; return; }
    docker inspect --format \
        '{{if ne .State.Status "running"}}{{.State.Status}}{{else if .State.Health}}{{.State.Health.Status}}{{else}}running{{end}} {{.RestartCount}}' \
        "$id" 2>/dev/null || echo missing
}

start=$SECONDS
last_print=-100
while :; do
    api="$(service_state api)"
    runner="$(service_state runner)"
    elapsed=$((SECONDS - start))
    line="waiting for services: api=${api% *} runner=${runner% *} (${elapsed}s of ${timeout}s)"
    if [ -t 1 ]; then
        printf '\r%-78s' "$line"
    elif ((elapsed - last_print >= 10)); then
        echo "$line"
        last_print=$elapsed
    fi
    [ "${api% *}" = healthy ] && [ "${runner% *}" = healthy ] && break
    for state in "$api" "$runner"; do
        case "${state% *}" in
            exited | dead) fail "a service stopped (api=${api% *} runner=${runner% *})" ;;
        esac
        # A few restarts are normal: the runner exits until the api has written its token.
        if [ "${state#* }" -ge 10 ] 2>/dev/null; then
            fail "a service keeps restarting (api=${api% *} runner=${runner% *})"
        fi
    done
    ((elapsed < timeout)) || fail "services not healthy after ${timeout}s (api=${api% *} runner=${runner% *})"
    sleep 2
done
[ -t 1 ] && echo

# Where the api is published on this host (CLEANROOM_BIND / CLEANROOM_PORT may come from .env).
published="$("$compose" port api 8000 | tail -n 1)"
port="${published##*:}"
url="http://127.0.0.1:${port:-${CLEANROOM_PORT:-8000}}"

profiles="${CLEANROOM_HOME:-$HOME/.cleanroom}/profiles"
cli="cleanroom"
[ -x "$root/.venv/bin/cleanroom" ] && cli="$root/.venv/bin/cleanroom"
if [ -f "$profiles/admin.json" ] && ! CLEANROOM_URL="$url" "$cli" --profile admin whoami >/dev/null 2>&1; then
    # a profile from an earlier room (make destroy): its token and pinned key are dead
    echo "==> the saved admin profile does not work with this room: replacing it"
    rm -f "$profiles/admin.json"
fi
if [ ! -f "$profiles/admin.json" ]; then
    command -v "$cli" >/dev/null || fail "the cleanroom CLI is not installed on this host: run make install"
    echo "==> creating the admin token and saving it as profile 'admin'"
    # The token goes straight from the api container into the profile, never through a variable or the terminal.
    "$compose" exec -T api cleanroom admin rotate-token \
        | "$cli" profile save admin --url "$url" --token-stdin \
        || fail "could not create the admin profile"
fi

echo "clean room is up at $url (admin profile: admin)"
