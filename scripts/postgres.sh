#!/usr/bin/env bash
# A throwaway PostgreSQL server from Debian's package, for the tests and for trying the room on it.
#   scripts/postgres.sh install      install Debian's `postgresql` when it is missing (as root; otherwise
#                                    print the one command to run and exit 1)
#   scripts/postgres.sh start DIR    initialise a cluster in DIR (a new or empty folder), start it on a free
#                                    loopback port with its socket in DIR, create the database `cleanroom`,
#                                    and print its URL (the only line on stdout)
#   scripts/postgres.sh stop DIR     stop that server and remove DIR
# The cluster trusts local connections (it is a test server: nothing else can reach a loopback port
# of this machine's user... and nothing in it is kept). The server never runs as root: as root the
# folder is handed to the `postgres` user that the package created, and the server runs as that user.
set -euo pipefail

die() { echo "postgres.sh: $*" >&2; exit 1; }

bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
    done
    return 1
}

install() {
    bindir >/dev/null && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "postgres.sh: PostgreSQL is not installed. Install it with:" >&2
        echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends postgresql" >&2
        exit 1
    fi
    echo "==> postgres.sh: installing postgresql (Debian package)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends postgresql >&2
    bindir >/dev/null || die "the postgresql package installed no initdb"
}

# run a command as the server's user: `postgres` when we are root, else ourselves
as_server() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local dir="$1" bin port
    bin="$(bindir)" || die "PostgreSQL is not installed (scripts/postgres.sh install)"
    mkdir -p "$dir"
    [ -z "$(ls -A "$dir")" ] || die "$dir is not empty"
    dir="$(cd "$dir" && pwd)"
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || die "no 'postgres' user (the postgresql package creates it)"
        chown postgres: "$dir"
        chmod 700 "$dir"
        # the server's user must reach the folder: open the path's parents for traversal only
        local p="$dir"
        while p="$(dirname "$p")" && [ "$p" != / ]; do
            runuser -u postgres -- test -x "$p" || chmod o+x "$p"
        done
    fi
    as_server "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    for _ in 1 2 3 4 5; do
        port="$(free_port)"
        # durability off: a throwaway server for tests (fsync, full pages), which makes it several times faster
        if as_server "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c full_page_writes=off \
                -c synchronous_commit=off -c max_connections=300 -c shared_buffers=64MB" >/dev/null; then
            as_server "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
                -c "CREATE DATABASE cleanroom" >/dev/null
            echo "$port" >"$dir/port"
            echo "postgresql://postgres@127.0.0.1:$port/cleanroom"
            return 0
        fi
        grep -q "could not bind\|already in use" "$dir/server.log" 2>/dev/null || break
    done
    tail -n 20 "$dir/server.log" >&2 || true
    die "the server did not start (log above)"
}

stop() {
    local dir="$1" bin
    [ -d "$dir/data" ] || { rm -rf "$dir"; return 0; }
    bin="$(bindir)" || die "PostgreSQL is not installed"
    as_server "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}

case "${1:-}" in
    install) install ;;
    start) [ -n "${2:-}" ] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [ -n "${2:-}" ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
