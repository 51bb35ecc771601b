#!/usr/bin/env bash
# test/setup.sh [--packages-only]: installs what etl_exec and its tests need
# on Debian (as root) for PostgreSQL PG_MAJOR (default 15: Debian 12; 17 and
# 18 in test/compat.sh's chroots), then builds and installs the extension.
# postgresql-PG_MAJOR-cron is installed where Debian packages it; where it
# does not, the pg_cron tests are skipped.  On PostgreSQL 15 it also
# installs Citus (test/citus.sh).  --packages-only: no build.
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_MAJOR="${PG_MAJOR:-15}"
BUILD=1
[ "${1:-}" = --packages-only ] && BUILD=0
# test/coverage.sh has built and installed an instrumented module already
[ "${ETL_NO_BUILD:-0}" = 1 ] && BUILD=0

PACKAGES=(build-essential "postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR"
          libcurl4-openssl-dev libipc-run-perl python3 python3-pytest python3-psycopg2
          python3-requests curl nginx-light openssl)
OPTIONAL=("postgresql-$PG_MAJOR-cron")

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
packaged() { [ -n "$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | grep -v '(none)')" ]; }

missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
optional=()
for p in "${OPTIONAL[@]}"; do installed "$p" || optional+=("$p"); done
export DEBIAN_FRONTEND=noninteractive
if [ ${#missing[@]} -gt 0 ] || { [ ${#optional[@]} -gt 0 ] && ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; }; then
    apt-get update -q
fi
for p in "${optional[@]}"; do
    if packaged "$p"; then
        missing+=("$p")
    else
        echo "== $p is not packaged here: the pg_cron tests will be skipped"
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing: ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

[ "$BUILD" = 1 ] || exit 0
echo "== building etl_exec for PostgreSQL $PG_MAJOR"
make -s PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
make -s install PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
# Citus for test/integration/test_citus.py and the benchmark's --citus
# scenario: PostgreSQL 15 only, built once from the vendored source and
# cached (test/citus.sh); elsewhere it says so and the Citus tests skip
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config bash test/citus.sh
