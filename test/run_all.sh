#!/usr/bin/env bash
# The whole test suite on every supported PostgreSQL major (the README's
# test command; .ci/run runs it), one after the other (they share fixed
# ports): 15 on this Debian 12 host (test/run_tests.sh), then 17 and 18 in
# Debian chroots
# (test/compat.sh, cached under /var/cache/etl_exec).  The chroots are
# prepared (debootstrap, packages; no server started) in the background,
# at low priority, while the earlier suites run.  Prints the totals and the
# time of each major, then one line "tests: N passed, M failed" over all of
# them; exits non-zero if any major failed.
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS="${ETL_CI_LOGS:-/tmp/etl_exec_ci}"
rm -rf "$LOGS"
mkdir -p "$LOGS"
MAJORS=(15 17 18)
T0=$SECONDS

# compat.sh takes a lock per chroot: a suite waits for its own chroot's
# preparation to finish, never for the other's
(
    for m in 17 18; do
        nice -n 10 ionice -c 3 bash test/compat.sh "$m" --prepare-only || echo "preparing the chroot for $m failed"
    done
) >"$LOGS/prepare.log" 2>&1 &
PREPARE_PID=$!

declare -A PASSED FAILED TOOK
run_major() {
    local m="$1" t0=$SECONDS line rc
    echo "######## PostgreSQL $m"
    set +e
    # the host's major runs everything; the others leave the benchmark and
    # the long version-independent tests to it (test/integration/conftest.py)
    if [ "$m" = 15 ]; then suite=full; else suite=compat; fi
    ETL_SUITE=$suite bash test/compat.sh "$m" 2>&1 | tee "$LOGS/suite-$m.log"
    rc=${PIPESTATUS[0]}
    set -e
    TOOK[$m]=$((SECONDS - t0))
    line=$(grep -E "^PostgreSQL $m: [0-9]+ passed, [0-9]+ failed" "$LOGS/suite-$m.log" | tail -1 || true)
    PASSED[$m]=$(sed -E 's/^[^:]*: ([0-9]+) passed.*/\1/' <<<"${line:-x: 0 passed}")
    FAILED[$m]=$(sed -E 's/^.* ([0-9]+) failed.*/\1/' <<<"${line:-x 1 failed}")
    # a non-zero exit with no failure counted is still a failure
    [ "$rc" -ne 0 ] && [ "${FAILED[$m]}" -eq 0 ] && FAILED[$m]=1
    return 0
}

for m in "${MAJORS[@]}"; do
    if [ "$m" = 18 ]; then
        wait "$PREPARE_PID" || true
        echo "######## chroot preparation (in the background):"
        grep -E '^(== |preparing|compat.sh:)' "$LOGS/prepare.log" || true
    fi
    run_major "$m"
done

echo "######## summary"
passed=0
failed=0
for m in "${MAJORS[@]}"; do
    echo "PostgreSQL $m: ${PASSED[$m]} passed, ${FAILED[$m]} failed ($((TOOK[$m] / 60)) min $((TOOK[$m] % 60)) s)"
    passed=$((passed + PASSED[$m]))
    failed=$((failed + FAILED[$m]))
done
echo "CI took $(((SECONDS - T0) / 60)) min $(((SECONDS - T0) % 60)) s (logs in $LOGS)"
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
