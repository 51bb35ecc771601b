#!/usr/bin/env bash
# Runs the TAP tests (PostgreSQL::Test::Cluster) as the postgres OS user:
# each test makes, kills and restarts clusters of its own.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/../env.sh"
PGXS_DIR="$(dirname "$("$PGBIN/pg_config" --pgxs)")/.."
WORK="$ETL_TEST_ROOT/tap"
rm -rf "$WORK"
mkdir -p "$WORK"
cp -r "$HERE"/*.pl "$HERE/../mock_api.py" "$WORK/"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$WORK"
cd "$WORK"
run() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
run env -i HOME="$WORK" PATH="$PGBIN:/usr/bin:/bin" LANG=C.UTF-8 \
    PERL5LIB="$PGXS_DIR/test/perl" PG_REGRESS="$PGXS_DIR/test/regress/pg_regress" \
    TESTDIR="$WORK" PYTHON="$PYTHON" MOCK_API_SCRIPT="$WORK/mock_api.py" \
    prove -v --timer ./*.pl
