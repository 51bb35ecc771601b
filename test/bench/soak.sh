#!/usr/bin/env bash
# test/bench/soak.sh [--no-setup] [soak.py options]: the soak benchmark
# (soak.py: 2,000 short runs through the queue, then what is left in use)
# on a cluster and mock API of its own (ETL_SOAK_ROOT, default
# /tmp/etl_exec_soak; port 55434, mock API 18095), stopped afterwards.
# Exits non-zero when a run is unaccounted for or something is left in use.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
SETUP=1
[ "${1:-}" = --no-setup ] && { SETUP=0; shift; }
[ "$SETUP" = 1 ] && bash "$REPO/test/setup.sh"
export ETL_TEST_ROOT="${ETL_SOAK_ROOT:-/tmp/etl_exec_soak}" PGPORT=55434 MOCK_API_PORT=18095
. "$REPO/test/env.sh"
bash "$REPO/test/cluster.sh" start
trap 'bash "$REPO/test/cluster.sh" stop' EXIT
"$PYTHON" "$HERE/soak.py" "$@"
