#!/usr/bin/env bash
# Runs the TAP tests (test/tap/*.pl, PostgreSQL::Test::Cluster) through
# PGXS's `make prove_installcheck` for PostgreSQL PG_MAJOR, as the postgres
# OS user (the test clusters refuse to run as root): each test makes, kills
# and restarts clusters of its own.  The make runs in a copy of the files it
# needs under ETL_TEST_ROOT, owned by postgres, so that PGXS's tmp_check/
# can be written whoever owns the checkout.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
. "$HERE/../env.sh"
WORK="$ETL_TEST_ROOT/tap"
rm -rf "$WORK"
mkdir -p "$WORK/test"
cp "$REPO/Makefile" "$REPO/etl_exec.control" "$WORK/"
cp -r "$REPO/test/tap" "$REPO/test/mock_api.py" "$WORK/test/"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$WORK"
run() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cd "$WORK"
run env -i HOME="$WORK" PATH="$PGBIN:/usr/bin:/bin" LANG=C.UTF-8 ${GCOV_PREFIX:+GCOV_PREFIX="$GCOV_PREFIX"} \
    PYTHON="$PYTHON" MOCK_API_SCRIPT="$WORK/test/mock_api.py" \
    make -s prove_installcheck PG_CONFIG="$PGBIN/pg_config"
