#!/usr/bin/env bash
# test/cluster.sh start|stop: a throwaway PostgreSQL cluster of major
# PG_MAJOR (default 15; owned by the postgres OS user, as the server refuses
# to run as root) and the bundled mock API, both on this machine only.
# pg_cron is preloaded when postgresql-PG_MAJOR-cron is installed; without it
# the pg_cron tests skip themselves.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/env.sh"

as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
    stop >/dev/null 2>&1 || true
    rm -rf "$ETL_TEST_ROOT"
    mkdir -p "$ETL_TEST_ROOT" "$PGHOST"
    [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$ETL_TEST_ROOT"
    as_postgres "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$ETL_TEST_ROOT/initdb.log"
    cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$PGHOST'
max_worker_processes = 16
log_line_prefix = '%m [%p] %b '
fsync = off
CONF
    if [ -f "$("$PGBIN/pg_config" --pkglibdir)/pg_cron.so" ]; then
        cat >>"$PGDATA/postgresql.conf" <<CONF
shared_preload_libraries = 'pg_cron'
cron.database_name = 'postgres'
cron.host = '$PGHOST'
CONF
    else
        echo "== pg_cron is not installed for PostgreSQL $PG_MAJOR: not preloaded, the pg_cron tests will be skipped"
    fi
    as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -l "$ETL_TEST_ROOT/server.log" -w start >/dev/null
    echo "== PostgreSQL running: host=$PGHOST port=$PGPORT (log: $ETL_TEST_ROOT/server.log)"

    "$PYTHON" "$HERE/mock_api.py" --port "$MOCK_API_PORT" --pidfile "$ETL_TEST_ROOT/mock_api.pid" \
        >"$ETL_TEST_ROOT/mock_api.log" 2>&1 &
    for _ in $(seq 50); do
        curl -sf "$MOCK_API/__health" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -sf "$MOCK_API/__health" >/dev/null || { echo "mock API did not start"; cat "$ETL_TEST_ROOT/mock_api.log"; exit 1; }
    echo "== mock API running: $MOCK_API"
}

stop() {
    if [ -f "$ETL_TEST_ROOT/mock_api.pid" ]; then
        kill "$(cat "$ETL_TEST_ROOT/mock_api.pid")" 2>/dev/null || true
    fi
    if [ -f "$PGDATA/postmaster.pid" ]; then
        as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null || true
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
