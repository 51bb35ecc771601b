#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root), for
# PostgreSQL PG_MAJOR (default 15; test/compat.sh runs it for 17 and 18 in
# Debian chroots): installs
# what is missing, builds and installs etl_exec, starts a throwaway cluster
# and the mock API, runs pg_regress, the module-graph check, the integration
# tests (real workers),
# the TAP tests (server kills and restarts), the Debian package (built,
# installed, a job through it, removed), a benchmark smoke run and the
# soak, then
# prints one line of totals.  Exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT="$(pwd)"

bash test/setup.sh || { echo "setup failed"; exit 1; }
bash test/cluster.sh start || { echo "could not start the test cluster"; exit 1; }
trap 'bash "$ROOT/test/cluster.sh" stop' EXIT
. test/env.sh

LOG="$ETL_TEST_ROOT/logs"
mkdir -p "$LOG"
passed=0
failed=0
suites_failed=()

count() {	# count <suite> <passed> <failed>
    passed=$((passed + $2))
    failed=$((failed + $3))
    [ "$3" -gt 0 ] && suites_failed+=("$1")
    return 0
}

echo "== pg_regress: the SQL surface"
# TAP_TESTS= : pg_regress alone here, the TAP tests have their own step
if make -s installcheck TAP_TESTS= PG_CONFIG="$PGBIN/pg_config" >"$LOG/regress.log" 2>&1; then :; fi
cat "$LOG/regress.log"
ok=$(grep -cE '^(ok [0-9]+ +- |test +[a-z_]+ +\.\.\. ok)' "$LOG/regress.log" || true)
bad=$(grep -cE '^(not ok|test +[a-z_]+ +\.\.\. FAILED)' "$LOG/regress.log" || true)
if ! grep -qE 'All [0-9]+ tests passed' "$LOG/regress.log" && [ "$bad" -eq 0 ]; then bad=1; fi
[ "$bad" -gt 0 ] && [ -f regression.diffs ] && cat regression.diffs
count pg_regress "$ok" "$bad"

echo "== module graph: every call between source files points down"
if NO_BUILD=1 bash test/check_module_graph.sh; then count module_graph 1 0; else count module_graph 0 1; fi

echo "== integration tests: real workers against the mock API"
"$PYTHON" -m pytest -p no:cacheprovider -q -rfEs test/integration 2>&1 | tee "$LOG/pytest.log"
line=$(grep -E '[0-9]+ (passed|failed)' "$LOG/pytest.log" | tail -1)
p=$(echo "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
f=0
for n in $(echo "$line" | grep -oE '[0-9]+ (failed|error|errors)' | grep -oE '[0-9]+'); do f=$((f + n)); done
[ -z "$line" ] && f=1
count pytest "${p:-0}" "${f:-0}"

if ls test/tap/*.pl >/dev/null 2>&1; then
    echo "== TAP tests (make prove_installcheck): crashes, immediate shutdowns, restarts"
    bash test/tap/run.sh 2>&1 | tee "$LOG/tap.log"
    p=$(grep -oE '^ok [0-9]+' "$LOG/tap.log" | wc -l)
    f=$(grep -cE '^not ok [0-9]+' "$LOG/tap.log" || true)
    grep -q '^Result: PASS' "$LOG/tap.log" || [ "$f" -gt 0 ] || f=1
    count tap "$p" "$f"
fi

# the Debian package of this major: built, installed into a server with
# nothing else of ours, a real job through it, removed (test/package.sh)
echo "== Debian package: dpkg-buildpackage, install, a real job, dpkg -r"
bash test/package.sh 2>&1 | tee "$LOG/package.log"
rc=${PIPESTATUS[0]}
line=$(grep -E '^package: [0-9]+ passed, [0-9]+ failed' "$LOG/package.log" | tail -1)
p=$(echo "$line" | sed -E 's/^package: ([0-9]+) passed.*/\1/')
f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
[ -z "$line" ] && p=0 && f=1
[ "$rc" -ne 0 ] && [ "${f:-0}" -eq 0 ] && f=1
count package "${p:-0}" "${f:-1}"

# ETL_SUITE=compat (the other majors' runs, test/run_all.sh): the benchmark is
# the host major's, as are the long version-independent tests (conftest.py)
if [ -x test/bench/smoke.sh ] && [ "${ETL_SUITE:-full}" != compat ]; then
    echo "== benchmark smoke run"
    if bash test/bench/smoke.sh 2>&1 | tee "$LOG/bench.log"; then count bench 1 0; else count bench 0 1; fi
fi

# the soak (2,000 short runs through the queue; nothing left in use): the
# host major's, like the benchmark
# (test/run_all.sh runs it as a step of its own: ETL_SOAK=0 here)
if [ -x test/bench/soak.sh ] && [ "${ETL_SUITE:-full}" != compat ] && [ "${ETL_SOAK:-1}" != 0 ]; then
    echo "== soak: 2,000 short runs through the queue"
    if bash test/bench/soak.sh --no-setup 2>&1 | tee "$LOG/soak.log"; then count soak 1 0; else count soak 0 1; fi
fi

[ ${#suites_failed[@]} -gt 0 ] && echo "failing suites: ${suites_failed[*]} (logs in $LOG, server log $ETL_TEST_ROOT/server.log)"
echo "PostgreSQL $PG_MAJOR ($("$PGBIN/postgres" --version 2>/dev/null || echo "$PGBIN"))"
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
