#!/usr/bin/env bash
# Everything `make up` does, on a fresh machine too: the host tools (scripts/prereqs.sh), then at the
# same time the host's .venv with the cleanroom CLI (`make install`) and the images
# (containers/build.py), then start the clean room (api + runner) and wait until both are healthy; on
# the first start, create an admin token and save it as the `admin` profile of the host's CLI.
# Each stage's time is printed at the end.
#   scripts/up.sh                 (what `make up` runs)
#   CLEANROOM_UP_TIMEOUT=300 scripts/up.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
compose="$root/scripts/compose.sh"
timeout="${CLEANROOM_UP_TIMEOUT:-180}"

# ---- stage times: "name start end" lines, printed as a table when the script ends (or fails)
now() { date +%s.%N; }
t0="$(now)"
stages=()
stage_start=""
stage_name=""
begin() { stage_name="$1"; stage_start="$(now)"; echo "==> [up $(since "$t0")] $1${2:+: $2}"; }
end_stage() { stages+=("$stage_name $stage_start $(now)"); stage_name=""; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
report() {
    local rc=$? line name start end status
    [ -n "$stage_name" ] && stages+=("$stage_name $stage_start $(now) failed")
    echo "==> stage times (install and images run at the same time)"
    for line in "${stages[@]}"; do
        read -r name start end status <<<"$line"
        awk -v n="$name" -v a="$start" -v b="$end" -v t="$t0" -v s="${status:-}" \
            'BEGIN { printf "    %-14s %7.1fs  (from %6.1fs to %6.1fs) %s\n", n, b - a, a - t, b - t, s }'
    done
    awk -v t="$t0" -v b="$(now)" -v rc="$rc" 'BEGIN { printf "    %-14s %7.1fs  (exit %d)\n", "total", b - t, rc }'
}
trap report EXIT

begin prereqs "host tools (scripts/prereqs.sh)"
bash scripts/prereqs.sh
end_stage

# The venv and the images need nothing from each other: build them at the same time. build.py is
# stdlib only and brings its own pip for `pip download` when this python3 has none.
mkdir -p containers/.build
install_log=containers/.build/install.log
echo "==> [up $(since "$t0")] install: make install, in the background (log: $install_log)"
install_start="$(now)"
# Its own end time, for the table: `wait` returns only once the images are built too. Niced: the
# images are the longer path (base, then deps, then app), and the CLI is needed only at the end.
(nice -n 10 make --no-print-directory install >"$install_log" 2>&1 && now >"$install_log.end") &
install_pid=$!
begin images "containers/build.py"
python3 containers/build.py
end_stage
if ! wait "$install_pid"; then
    stages+=("install $install_start $(now) failed")
    echo "up.sh: make install failed; the end of $install_log:" >&2
    tail -n 40 "$install_log" >&2
    exit 1
fi
stages+=("install $install_start $(cat "$install_log.end")")
echo "==> [up $(since "$t0")] install: done"

begin "compose-up" "starting the clean room (compose project ${CLEANROOM_PROJECT:-cleanroom})"
"$compose" up -d --remove-orphans
end_stage
begin healthy "waiting until api and runner are healthy"

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
end_stage

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
    begin profile "creating the admin token and saving it as profile 'admin'"
    # The token goes straight from the api container into the profile, never through a variable or the terminal.
    "$compose" exec -T api cleanroom admin rotate-token \
        | "$cli" profile save admin --url "$url" --token-stdin \
        || fail "could not create the admin profile"
    end_stage
fi

echo "clean room is up at $url (admin profile: admin)"
