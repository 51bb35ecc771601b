#!/usr/bin/env bash
# test/citus_cluster.sh start|stop|available DB: a throwaway Citus cluster on
# this machine -- a coordinator and two workers, each a PostgreSQL cluster of
# its own (PGBIN; owned by the postgres OS user, fsync off) with citus
# preloaded -- for the Citus tests and benchmark.  `start DB` creates DB on
# all three with the citus extension, and etl_exec on the coordinator, and
# adds the workers to the coordinator.
#
#   CITUS_ROOT   data directories and logs (default $ETL_TEST_ROOT/citus)
#   CITUS_PORT   the coordinator's port (default PGPORT + 10); the workers
#                listen on the next two
#
# `available` exits 0 when Citus can run here (PostgreSQL 15 with citus.so
# installed: test/citus.sh), else prints why and exits 1.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/env.sh"
CITUS_ROOT="${CITUS_ROOT:-$ETL_TEST_ROOT/citus}"
CITUS_PORT="${CITUS_PORT:-$((PGPORT + 10))}"
SOCK="$CITUS_ROOT/socket"
NODES=(coord w1 w2)

as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
port_of() { echo $((CITUS_PORT + $1)); }
sql() {	# sql NODE_INDEX DB STATEMENT...
    local i=$1 db=$2
    shift 2
    local a=()
    for s in "$@"; do a+=(-c "$s"); done
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$(port_of "$i")" -U postgres -d "$db" "${a[@]}"
}

available() {
    local major
    major="$("$PGBIN/pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')"
    if [ "$major" != 15 ]; then
        echo "Citus tests run on PostgreSQL 15 only (the vendored Citus 13.2.2 targets it); this is $major"
        return 1
    fi
    if [ ! -f "$("$PGBIN/pg_config" --pkglibdir)/citus.so" ]; then
        echo "Citus is not installed for PostgreSQL $major (test/citus.sh installs it)"
        return 1
    fi
}

start_node() {	# start_node NODE_INDEX: one retry, and the server's own words on failure
    local i=$1 dir="$CITUS_ROOT/${NODES[$1]}" log="$CITUS_ROOT/${NODES[$1]}.log"
    for attempt in 1 2; do
        if as_postgres "$PGBIN/pg_ctl" -D "$dir" -l "$log" -w -t 120 start >/dev/null; then
            return 0
        fi
        echo "== Citus: ${NODES[$i]} (port $(port_of "$i")) did not start (attempt $attempt); its log:" >&2
        tail -20 "$log" >&2 || true
        sleep 2
    done
    return 1
}

start() {
    local db="${1:?start needs a database name}"
    available || exit 1
    stop >/dev/null 2>&1 || true
    rm -rf "$CITUS_ROOT"
    mkdir -p "$CITUS_ROOT" "$SOCK"
    [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$CITUS_ROOT"
    for i in 0 1 2; do
        local dir="$CITUS_ROOT/${NODES[$i]}"
        as_postgres "$PGBIN/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$CITUS_ROOT/initdb-${NODES[$i]}.log"
        cat >>"$dir/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $(port_of "$i")
unix_socket_directories = '$SOCK'
shared_preload_libraries = 'citus'
max_worker_processes = 16
max_prepared_transactions = 100
log_line_prefix = '%m [%p] %b '
fsync = off
CONF
        start_node "$i"
        sql "$i" postgres "CREATE DATABASE $db"
        sql "$i" "$db" "CREATE EXTENSION citus"
    done
    sql 0 "$db" "CREATE EXTENSION etl_exec" \
        "SELECT citus_set_coordinator_host('127.0.0.1', $(port_of 0))" \
        "SELECT citus_add_node('127.0.0.1', $(port_of 1))" \
        "SELECT citus_add_node('127.0.0.1', $(port_of 2))"
    echo "== Citus running: coordinator host=$SOCK port=$(port_of 0), workers on $(port_of 1) and $(port_of 2) (logs in $CITUS_ROOT)"
}

stop() {
    for n in "${NODES[@]}"; do
        if [ -f "$CITUS_ROOT/$n/postmaster.pid" ]; then
            as_postgres "$PGBIN/pg_ctl" -D "$CITUS_ROOT/$n" -m fast -w stop >/dev/null || true
        fi
    done
}

case "${1:-}" in
    start) start "${2:-}" ;;
    stop) stop ;;
    available) available ;;
    *) echo "usage: $0 start DB|stop|available" >&2; exit 2 ;;
esac
