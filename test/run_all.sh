#!/usr/bin/env bash
# The whole test suite on every supported PostgreSQL major (the README's
# test command; .ci/run runs it), one after the other (they share fixed
# ports): 15 on this Debian 12 host (test/run_tests.sh), then 17 and 18 in
# Debian chroots
# (test/compat.sh, cached under /var/cache/etl_exec); then, on 15, the
# fuzzing harnesses briefly and the integration suite under sanitizers.  The chroots are
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
    # (the soak is a step of its own below, to keep each major's suite short)
    ETL_SOAK=0 ETL_SUITE=$suite bash test/compat.sh "$m" 2>&1 | tee "$LOGS/suite-$m.log"
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

# run_step NAME LOG_LINE_PREFIX COMMAND...: a step beyond the majors' suites,
# counted from its last line "<prefix>: N passed, M failed[, K ..., C ...]"
# (every number after "failed" -- sanitizer reports, crashes -- counts as
# failed too)
STEPS=()
run_step() {
    local name="$1" prefix="$2" t0=$SECONDS line rc
    shift 2
    echo "######## $name"
    set +e
    "$@" 2>&1 | tee "$LOGS/$prefix.log"
    rc=${PIPESTATUS[0]}
    set -e
    STEPS+=("$name")
    TOOK[$name]=$((SECONDS - t0))
    line=$(grep -E "^$prefix: [0-9]+ passed, [0-9]+ failed" "$LOGS/$prefix.log" | tail -1 || true)
    PASSED[$name]=$(sed -E 's/^[^:]*: ([0-9]+) passed.*/\1/' <<<"${line:-x: 0 passed}")
    FAILED[$name]=0
    for n in $(sed -E 's/^.* passed, //' <<<"${line:-1 failed}" | grep -oE '[0-9]+'); do
        FAILED[$name]=$((FAILED[$name] + n))
    done
    [ "$rc" -ne 0 ] && [ "${FAILED[$name]}" -eq 0 ] && FAILED[$name]=1
    return 0
}

# the soak: 2,000 short runs through the queue, nothing left in use (on 15,
# a cluster of its own)
run_step "soak (test/bench/soak.sh: 2,000 runs)" soak bash test/bench/soak.sh --no-setup

# the parsers of untrusted bytes under libFuzzer (test/fuzz), briefly, and
# the integration suite once against a build with ASan and UBSan in a real
# server (test/sanitize.sh): on the host's 15
run_step "fuzzing (test/fuzz, ${ETL_FUZZ_SECONDS:-20} s a harness)" fuzz \
    make -s -C test/fuzz fuzz FUZZ_SECONDS="${ETL_FUZZ_SECONDS:-20}" PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
# (ETL_SUITE=compat: without the long wall-clock loops of conftest.py's
# SLOW list, as on 17 and 18, to keep CI within its time; `make sanitize`
# runs them all: 476 tests, about 12 minutes on 2 cores)
run_step "integration tests under ASan and UBSan (test/sanitize.sh)" sanitize \
    env ETL_SUITE=compat bash test/sanitize.sh

# each failing test by name, so a summary that counts one also says which
echo "######## failing tests"
grep -E '^(FAILED test/|not ok |ERROR test/)|\.\.\. FAILED' "$LOGS"/suite-*.log "$LOGS"/soak.log \
    "$LOGS"/fuzz.log "$LOGS"/sanitize.log 2>/dev/null | sort | uniq -c || true

echo "######## summary"
passed=0
failed=0
for m in "${MAJORS[@]}"; do
    echo "PostgreSQL $m: ${PASSED[$m]} passed, ${FAILED[$m]} failed ($((TOOK[$m] / 60)) min $((TOOK[$m] % 60)) s)"
    passed=$((passed + PASSED[$m]))
    failed=$((failed + FAILED[$m]))
done
for s in "${STEPS[@]}"; do
    echo "$s: ${PASSED[$s]} passed, ${FAILED[$s]} failed ($((TOOK[$s] / 60)) min $((TOOK[$s] % 60)) s)"
    passed=$((passed + PASSED[$s]))
    failed=$((failed + FAILED[$s]))
done
echo "CI took $(((SECONDS - T0) / 60)) min $(((SECONDS - T0) % 60)) s (logs in $LOGS)"
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
