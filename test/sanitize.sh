#!/usr/bin/env bash
# test/sanitize.sh [PYTEST ARGS...]: the integration suite (test/integration)
# against etl_exec built with -fsanitize=address,undefined and loaded into a
# real PostgreSQL server (Debian's postgresql-PG_MAJOR, default 15, with the
# ASan runtime preloaded).  Exits non-zero if any test failed or any
# sanitizer report was found; the last line is
#   sanitize: N passed, M failed, K sanitizer reports, C crashes
# ETL_SUITE=compat leaves out the long tests conftest.py lists (CI does).
# Extra arguments go to pytest (e.g. -k 'core and not timeouts' while
# developing; CI runs it without any).  As root, on Debian; installs what is
# missing with apt-get (test/setup.sh --packages-only).
#
# How: the server is Debian's own binary, run with LD_PRELOAD of gcc's
# libasan (the runtime the module was compiled against) and, after it,
# test/sanitize/preload.c: without it a preloaded ASan deadlocks in glibc's
# gettext lock at start-up, and UBSan loses its options (see that file).
# It runs from a private copy of the PostgreSQL installation
# (SANITIZE_PG_TREE, default /var/cache/etl_exec/pg15-sanitize, made afresh
# from /usr/lib/postgresql/15 and /usr/share/postgresql/15 on every run, a
# second) in which bin/postgres is a wrapper that sets LD_PRELOAD for the
# server alone, and into which the sanitized etl_exec (and Citus, from
# test/citus.sh's cache) is installed: the system's installation is not
# touched.  The module is built in a scratch copy of the sources (the
# checkout's objects stay as they are).  Before the suite, a canary module
# (test/sanitize/canary.c) makes one UBSan and one ASan report, to prove
# that reports are made and found; they are set aside, not counted.
#
# ASan stops the process at its first report (abort_on_error=1: the
# postmaster sees a crash, restarts, and the tests fail loudly) and writes
# it to $SANITIZE_ROOT/reports/asan.PID; UBSan reports and goes on
# (halt_on_error=0: one run lists them all) to stderr, i.e. the server log
# (it ignores log_path beside ASan).  The script counts the ASan files and
# every sanitizer report and crash (SIGSEGV, SIGABRT, ...) in the server
# logs, the Citus nodes' included.  Leak checking is off: a backend's
# memory lives until it exits, by design.
#
# Only the module is instrumented: the server is Debian's build, so ASan
# sees the module's own accesses and every malloc/free and libc string or
# memory call in the process, but not overruns inside one palloc'd chunk
# (a memory context's block is one malloc).
#
# Settings (environment): SANITIZE_ROOT (default /tmp/etl_exec_sanitize:
# build/, reports/, pytest.log, and the cluster in cluster/ unless
# ETL_TEST_ROOT is set), PGPORT (default 56432), MOCK_API_PORT (default
# 18280), SANITIZE_PG_TREE.  Defaults differ from test/env.sh's, so it can
# run beside the main suite.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
SRC="$(pwd)"
T0=$SECONDS

export PG_MAJOR="${PG_MAJOR:-15}"
SAN_ROOT="${SANITIZE_ROOT:-/tmp/etl_exec_sanitize}"
export ETL_TEST_ROOT="${ETL_TEST_ROOT:-$SAN_ROOT/cluster}"
export PGPORT="${PGPORT:-56432}"
export MOCK_API_PORT="${MOCK_API_PORT:-18280}"
SYS_LIB="/usr/lib/postgresql/$PG_MAJOR"
SYS_SHARE="/usr/share/postgresql/$PG_MAJOR"
PG_TREE="${SANITIZE_PG_TREE:-/var/cache/etl_exec/pg$PG_MAJOR-sanitize}"
export PGBIN="$PG_TREE$SYS_LIB/bin"
PG_CONFIG="$PGBIN/pg_config"
BUILD="$SAN_ROOT/build"
REPORTS="$SAN_ROOT/reports"
SANFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -g -O1"

die() { echo "sanitize: $*" >&2; echo "sanitize: 0 passed, 1 failed, 0 sanitizer reports, 0 crashes"; exit 1; }
step() { echo "== [$((SECONDS - T0)) s] $*"; }

[ "$(id -u)" = 0 ] || die "run it as root (it installs packages and runs the server as postgres)"

step "packages (test/setup.sh --packages-only)"
bash test/setup.sh --packages-only || die "test/setup.sh --packages-only failed"
LIBASAN="$(readlink -f "$(gcc -print-file-name=libasan.so)")"
if [ ! -f "$LIBASAN" ]; then
    # gcc's runtime (libasan8 on Debian 12) comes with gcc; make sure
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q && apt-get install -y -q --no-install-recommends gcc
    LIBASAN="$(readlink -f "$(gcc -print-file-name=libasan.so)")"
fi
[ -f "$LIBASAN" ] || die "no ASan runtime for gcc ($(gcc -print-file-name=libasan.so))"
. test/env.sh      # PGHOST, PGDATA, MOCK_API, PYTHON for our ETL_TEST_ROOT/PGPORT

# one run at a time uses the private tree
mkdir -p "$(dirname "$PG_TREE")" "$SAN_ROOT"
exec 9>"$PG_TREE.lock"
flock -n 9 || { echo "== waiting for another test/sanitize.sh ($PG_TREE.lock)"; flock 9; }

step "private PostgreSQL tree: $PG_TREE (copy of $SYS_LIB and $SYS_SHARE)"
bash test/cluster.sh stop >/dev/null 2>&1 || true   # a previous run's server, if left
rm -rf "$PG_TREE"
mkdir -p "$PG_TREE/usr/lib/postgresql" "$PG_TREE/usr/share/postgresql" || die "cannot create $PG_TREE"
cp -a "$SYS_LIB" "$PG_TREE/usr/lib/postgresql/" || die "copying $SYS_LIB failed"
cp -a "$SYS_SHARE" "$PG_TREE/usr/share/postgresql/" || die "copying $SYS_SHARE failed"
# pg_config answers relative to itself: headers through /usr/include, so
# PGXS builds (this module, Citus) work against the copy
ln -s /usr/include "$PG_TREE/usr/include"
# the server alone runs with ASan preloaded: bin/postgres becomes a wrapper
mkdir -p "$PG_TREE/sanitize"
gcc -shared -fPIC -O2 -o "$PG_TREE/sanitize/libsanitize_preload.so" test/sanitize/preload.c \
    || die "building test/sanitize/preload.c failed"
mv "$PGBIN/postgres" "$PGBIN/postgres.real"
cat >"$PGBIN/postgres" <<WRAPPER
#!/bin/bash
# written by test/sanitize.sh: Debian's postgres with the ASan runtime preloaded
export LD_PRELOAD="$LIBASAN:$PG_TREE/sanitize/libsanitize_preload.so\${LD_PRELOAD:+:\$LD_PRELOAD}"
exec -a "\$0" "$PGBIN/postgres.real" "\$@"
WRAPPER
chmod 755 "$PGBIN/postgres"
"$PGBIN/pg_config" --pkglibdir | grep -q "^$PG_TREE/" || die "the copy's pg_config does not answer relative to itself"

step "building etl_exec with $SANFLAGS in $BUILD"
rm -rf "$BUILD"
mkdir -p "$BUILD"
tar -C "$SRC" --exclude='*.o' --exclude='*.so' --exclude='*.gcno' --exclude='*.gcda' --exclude='*.bc' \
    -cf - Makefile etl_exec.control src sql | tar -C "$BUILD" -xf - || die "copying the sources failed"
( cd "$BUILD" && make -s -j"$(nproc)" PG_CONFIG="$PG_CONFIG" COPT="$SANFLAGS" && \
  make -s install PG_CONFIG="$PG_CONFIG" COPT="$SANFLAGS" ) >"$SAN_ROOT/build.log" 2>&1 \
    || { cat "$SAN_ROOT/build.log"; die "the sanitized build failed"; }
PKGLIB="$("$PG_CONFIG" --pkglibdir)"
readelf -d "$PKGLIB/etl_exec.so" | grep -q 'libasan\.so' || die "$PKGLIB/etl_exec.so is not linked with libasan"
readelf -d "$PKGLIB/etl_exec.so" | grep -q 'libubsan\.so' || die "$PKGLIB/etl_exec.so is not linked with libubsan"
gcc -shared -fPIC $SANFLAGS -I"$("$PG_CONFIG" --includedir-server)" -o "$PKGLIB/etl_sanitize_canary.so" \
    test/sanitize/canary.c || die "building test/sanitize/canary.c failed"
# Citus for test_citus.py, from test/citus.sh's cache (built there once)
PG_CONFIG="$PG_CONFIG" bash test/citus.sh || die "test/citus.sh failed"

# reports: one file per process that reported, <log_path>.<pid>
rm -rf "$REPORTS"
mkdir -p "$REPORTS"
chown postgres:postgres "$REPORTS"
export ASAN_OPTIONS="log_path=$REPORTS/asan:abort_on_error=1:detect_leaks=0:detect_stack_use_after_return=0:disable_coredump=1:print_suppressions=0"
# (UBSan ignores a log_path beside the ASan runtime: its reports go to the
# server log, where they are looked for)
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=0:report_error_type=1"

step "cluster (test/cluster.sh: $ETL_TEST_ROOT, port $PGPORT, mock API $MOCK_API_PORT)"
bash test/cluster.sh start || die "could not start the sanitized cluster (see $ETL_TEST_ROOT/server.log)"
trap 'bash "$SRC/test/cluster.sh" stop >/dev/null 2>&1' EXIT
pm=$(head -1 "$PGDATA/postmaster.pid")
grep -q libasan "/proc/$pm/maps" || die "the server ($pm) does not have the ASan runtime loaded"

step "canary: one UBSan and one ASan report must be made and found"
psql_() { "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
# a backend that loads etl_exec maps the sanitized build and both runtimes
maps=$(psql_ -d postgres -c "LOAD 'etl_exec'" -c "SELECT pg_read_file('/proc/self/maps')") \
    || die "could not load etl_exec into a backend"
for want in "$PKGLIB/etl_exec.so" libasan libubsan; do
    grep -qF "$want" <<<"$maps" || die "a backend that loaded etl_exec does not map $want"
done
psql_ -d postgres -c "CREATE DATABASE sanitize_canary" || die "canary: CREATE DATABASE failed"
psql_ -d sanitize_canary \
    -c "CREATE FUNCTION canary_ubsan(int) RETURNS int AS '$PKGLIB/etl_sanitize_canary.so', 'sanitize_canary_ubsan' LANGUAGE C STRICT" \
    -c "CREATE FUNCTION canary_asan(int) RETURNS int AS '$PKGLIB/etl_sanitize_canary.so', 'sanitize_canary_asan' LANGUAGE C STRICT" \
    -c "SELECT canary_ubsan(40)" >/dev/null || die "canary: the UBSan function failed"
psql_ -d sanitize_canary -c "SELECT canary_asan(16)" >/dev/null 2>&1    # the backend aborts
for _ in $(seq 100); do psql_ -d postgres -c "SELECT 1" >/dev/null 2>&1 && break; sleep 0.2; done   # crash restart
psql_ -d postgres -c "DROP DATABASE sanitize_canary" || die "canary: the server did not come back"
grep -qs 'canary.c:[0-9:]* runtime error: shift exponent 40' "$ETL_TEST_ROOT/server.log" || die "canary: no UBSan report in $ETL_TEST_ROOT/server.log"
grep -ls 'heap-buffer-overflow' "$REPORTS"/asan.* >/dev/null || die "canary: no ASan report in $REPORTS"
mkdir -p "$SAN_ROOT/canary"
rm -f "$SAN_ROOT/canary"/*
mv "$REPORTS"/* "$SAN_ROOT/canary/"
cp "$ETL_TEST_ROOT/server.log" "$SAN_ROOT/canary/server.log"
log_from=$(($(stat -c %s "$ETL_TEST_ROOT/server.log") + 1))   # the canary's crash is not counted
echo "   both found (kept in $SAN_ROOT/canary/)"

deselect=()
# test_tls.py's nginx listens on fixed ports (18443, 18444): if another
# suite holds them right now, leave it out rather than collide
if ss -Hltn 2>/dev/null | grep -qE '127\.0\.0\.1:1844[34]\b'; then
    echo "== ports 18443/18444 are in use (another suite's test_tls.py?): test_tls.py is left out of this run"
    deselect=(--ignore=test/integration/test_tls.py)
fi

step "integration tests under the sanitizers"
"$PYTHON" -m pytest -p no:cacheprovider -q -rfEs "${deselect[@]}" test/integration "$@" 2>&1 | tee "$SAN_ROOT/pytest.log"
line=$(grep -E '[0-9]+ (passed|failed|error|errors|deselected|skipped)' "$SAN_ROOT/pytest.log" | tail -1)
passed=$(echo "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || true)
passed=${passed:-0}
failed=0
for n in $(echo "$line" | grep -oE '[0-9]+ (failed|error|errors)' | grep -oE '[0-9]+'); do failed=$((failed + n)); done
[ -z "$line" ] && failed=1
step "tests done"

bash test/cluster.sh stop >/dev/null 2>&1
trap - EXIT

# the reports: ASan's files, and the server logs (the main cluster's after
# the canary, and the Citus nodes') for reports on stderr (UBSan's, and
# ASan's from a process where UBSan had reported first) and for crashes
reports=0
crashes=0
for f in "$REPORTS"/asan.*; do
    [ -s "$f" ] || continue
    k=$(grep -cE '^==[0-9]+==ERROR: ' "$f" || true)
    [ "$k" -gt 0 ] || k=1       # something was written: count it
    reports=$((reports + k))
    echo "== sanitizer report: $f"
    head -60 "$f"
done
scan_log() {	# scan_log FILE [FROM_BYTE]
    local f=$1 from=${2:-1} k c
    [ -f "$f" ] || return 0
    tail -c +"$from" "$f" >"$SAN_ROOT/scan.tmp"
    k=$(grep -cE '==[0-9]+==ERROR: [A-Za-z]+Sanitizer|runtime error: ' "$SAN_ROOT/scan.tmp" || true)
    c=$(grep -cE 'terminated by signal (4|6|7|8|11):' "$SAN_ROOT/scan.tmp" || true)
    if [ "$k" -gt 0 ] || [ "$c" -gt 0 ]; then
        echo "== in $f:"
        grep -E -A 25 '==[0-9]+==ERROR: [A-Za-z]+Sanitizer|runtime error: ' "$SAN_ROOT/scan.tmp" | head -200
        grep -E -A 1 'terminated by signal (4|6|7|8|11):' "$SAN_ROOT/scan.tmp" | head -20
    fi
    reports=$((reports + k))
    crashes=$((crashes + c))
    rm -f "$SAN_ROOT/scan.tmp"
}
scan_log "$ETL_TEST_ROOT/server.log" "$log_from"
for f in "$ETL_TEST_ROOT"/citus/*.log; do scan_log "$f"; done

echo "== logs: $SAN_ROOT/pytest.log, $ETL_TEST_ROOT/server.log, reports in $REPORTS ($((SECONDS - T0)) s in all)"
[ "$crashes" -gt 0 ] && echo "== $crashes server processes crashed (SIGSEGV, SIGABRT, ...): see above"
echo "sanitize: $passed passed, $failed failed, $reports sanitizer reports, $crashes crashes"
[ "$failed" -eq 0 ] && [ "$reports" -eq 0 ] && [ "$crashes" -eq 0 ]
