#!/usr/bin/env bash
# test/coverage.sh (`make coverage`): line coverage of every file of src/
# from the whole suite on PostgreSQL PG_MAJOR (default 15).  Builds
# etl_exec with gcov instrumentation (make COVERAGE=1), installs it, runs
# test/run_tests.sh with that build (the servers' processes write their
# counts under GCOV_PREFIX, which the postgres OS user may write), then
# prints gcov's figure per file and the total.  Rebuilds the plain module
# afterwards.  Exits non-zero when the suite failed.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PG_MAJOR="${PG_MAJOR:-15}"
PG_CONFIG="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
export GCOV_PREFIX="${GCOV_PREFIX:-/tmp/etl_exec_coverage}"

bash test/setup.sh --packages-only || exit 1
PG_CONFIG="$PG_CONFIG" bash test/citus.sh || exit 1     # (setup.sh does it after its build)
rm -rf "$GCOV_PREFIX"
mkdir -p "$GCOV_PREFIX"
chmod 1777 "$GCOV_PREFIX"          # every server process, as postgres, writes here
make -s clean PG_CONFIG="$PG_CONFIG"
make -s COVERAGE=1 PG_CONFIG="$PG_CONFIG" || exit 1
make -s install COVERAGE=1 PG_CONFIG="$PG_CONFIG" || exit 1

# the suite, with this build (ETL_NO_BUILD: setup.sh installs packages only)
ETL_NO_BUILD=1 bash test/run_tests.sh
rc=$?

# the counts, next to the objects gcov reads them with
find "$GCOV_PREFIX" -name '*.gcda' -path '*/src/*' -exec cp {} src/ \;
echo "== line coverage of src/ (gcov, from the whole suite)"
gcov -n -o src src/*.c 2>/dev/null | awk '
    /^File .src\// { file = $2; gsub(/\x27/, "", file) }
    /^Lines executed:/ && file != "" {
        split($2, a, ":"); pct = a[2]; sub(/%/, "", pct); n = $4
        hit = pct * n / 100; total += n; covered += hit
        printf "  %-22s %6.1f %% of %5d lines\n", file, pct, n
        file = ""
    }
    END { printf "  %-22s %6.1f %% of %5d lines\n", "total", 100 * covered / total, total }'

# the annotated sources (#####: a line never run), to see what stays uncovered
# (gcov finds the sources by the paths the objects hold, relative to ROOT)
mkdir -p "$GCOV_PREFIX/report"
(cd "$ROOT" && gcov -o src src/*.c >/dev/null 2>&1 && mv ./*.gcov "$GCOV_PREFIX/report/")
echo "(annotated sources: $GCOV_PREFIX/report/*.gcov)"

make -s clean PG_CONFIG="$PG_CONFIG"
make -s PG_CONFIG="$PG_CONFIG" && make -s install PG_CONFIG="$PG_CONFIG"
exit $rc
