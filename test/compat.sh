#!/usr/bin/env bash
# test/compat.sh MAJOR [--prepare-only]
#
# The whole test suite (test/run_tests.sh) on PostgreSQL MAJOR, as root:
#   15  the host's own (Debian 12): runs test/run_tests.sh here;
#   17  in a Debian 13 "trixie" chroot;
#   18  in a Debian "forky" chroot.
# The chroot is made once with debootstrap (installed on the host when
# missing) and kept in a cache outside the checkout, ETL_COMPAT_CACHE
# (default /var/cache/etl_exec; the chroot is ETL_COMPAT_CACHE/chroot-MAJOR,
# or ETL_COMPAT_CHROOT), with the packages test/setup.sh installs; stamp
# files make later runs skip both steps.  The Debian mirror is the first
# Debian URI of the host's apt sources (or ETL_COMPAT_MIRROR).  Each run
# copies the checkout's working tree (uncommitted changes included, no .git,
# no build products) to /build/etl_exec in the chroot, builds etl_exec there
# and runs the suite with PG_MAJOR=MAJOR.  /proc, /dev/shm and /dev/pts are
# mounted for the run and unmounted on exit, failure included.
#
# The chroot shares the host's network: its cluster and mock API use the
# same fixed ports as a host run, so never run two suites at once.  (PGPORT,
# MOCK_API_PORT and ETL_BENCH_*PORT are passed in when set, but the pg_regress
# suite and the TLS test use fixed ports all the same.)
# --prepare-only makes/updates the chroot and stops there (no server is
# started, so it is safe next to a running suite).  Ends with the line
# "PostgreSQL MAJOR: N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MAJOR="${1:-}"
PREPARE_ONLY=0
[ "${2:-}" = --prepare-only ] && PREPARE_ONLY=1
usage() { sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; }

say() { echo "== compat $MAJOR: $*"; }
die() { echo "compat.sh: $*" >&2; exit 1; }

case "$MAJOR" in
    15)
        [ "$PREPARE_ONLY" = 1 ] && exit 0
        say "PostgreSQL 15 is the host's own: running test/run_tests.sh here"
        export PG_MAJOR=15
        set +e
        bash "$ROOT/test/run_tests.sh" 2>&1 | tee /tmp/etl_exec_compat_15.log
        rc=${PIPESTATUS[0]}
        set -e
        totals=$(grep -E '^tests: [0-9]+ passed, [0-9]+ failed$' /tmp/etl_exec_compat_15.log | tail -1)
        [ -n "$totals" ] || totals="tests: 0 passed, 1 failed"
        echo "PostgreSQL 15: ${totals#tests: }"
        exit "$rc" ;;
    17) SUITE=trixie ;;
    18) SUITE=forky ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || die "run me as root (debootstrap, chroot and mount need it)"

CACHE="${ETL_COMPAT_CACHE:-/var/cache/etl_exec}"
CHROOT="${ETL_COMPAT_CHROOT:-$CACHE/chroot-$MAJOR}"
BUILD_DIR=/build/etl_exec
STAMP_BOOTSTRAP="$CHROOT/.etl_exec-debootstrap.done"
STAMP_PACKAGES="$CHROOT/.etl_exec-packages.done"
case "$CHROOT" in /|"") die "refusing chroot directory '$CHROOT'" ;; esac
mkdir -p "$(dirname "$CHROOT")"

declare -A TOOK=()
timed() {	# timed NAME command...: runs it, records how long it took
    local name="$1" t0=$SECONDS rc=0
    shift
    "$@" || rc=$?
    TOOK[$name]=$((SECONDS - t0))
    say "$name took ${TOOK[$name]} s"
    return "$rc"
}
timings() {
    local out="" k
    for k in debootstrap packages copy build suite; do
        [ -n "${TOOK[$k]:-}" ] && out+="$k ${TOOK[$k]} s, "
    done
    say "timings: ${out%, }"
}

# the first Debian archive URI of the host's apt sources
host_mirror() {
    local f
    {
        [ -f /etc/apt/sources.list ] && grep -hE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list \
            | sed -E 's/\[[^]]*\]//; s/^[[:space:]]*deb[[:space:]]+([^[:space:]]+).*/\1/'
        for f in /etc/apt/sources.list.d/*.list; do
            [ -f "$f" ] || continue
            grep -hE '^[[:space:]]*deb[[:space:]]' "$f" \
                | sed -E 's/\[[^]]*\]//; s/^[[:space:]]*deb[[:space:]]+([^[:space:]]+).*/\1/'
        done
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            grep -hiE '^URIs:' "$f" | sed -E 's/^[Uu][Rr][Ii][Ss]:[[:space:]]*//' | tr ' \t' '\n\n'
        done
    } | sed -E 's#/+$##' | grep -E '^(https?|file)://.*/debian$' | head -1 || true
}

# --- mounts, undone on any exit ---------------------------------------------
MOUNTED=()
mount_in() {	# mount_in TARGET mount-args...
    local target="$CHROOT$1"
    shift
    mkdir -p "$target"
    # left mounted by a run that was killed: reuse it, unmount it at the end
    mountpoint -q "$target" || mount "$@" "$target"
    MOUNTED+=("$target")
}
chroot_pids() {	# processes running inside the chroot (ours: started by this script)
    local p root
    for p in /proc/[0-9]*; do
        root=$(readlink "$p/root" 2>/dev/null) || continue
        [ "$root" = "$CHROOT" ] && echo "${p#/proc/}"
    done
    return 0
}
cleanup() {
    local rc=$? i pids
    pids=$(chroot_pids)
    if [ -n "$pids" ]; then
        say "stopping processes left in the chroot: $(echo $pids)"
        kill $pids 2>/dev/null || true
        sleep 1
        pids=$(chroot_pids)
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    fi
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTED[$i]}" 2>/dev/null || umount -l "${MOUNTED[$i]}" \
            || echo "compat.sh: could not unmount ${MOUNTED[$i]}" >&2
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_all() {
    mount_in /proc -t proc proc
    mount_in /dev/shm -t tmpfs -o mode=1777,nosuid,nodev shm
    mount_in /dev/pts --bind /dev/pts
    cp /etc/resolv.conf "$CHROOT/etc/resolv.conf" 2>/dev/null || true
}

in_chroot() {
    # the harness's port settings pass through when set (see test/env.sh)
    local v pass=()
    for v in PGPORT MOCK_API_PORT ETL_BENCH_PGPORT ETL_BENCH_MOCK_API_PORT ETL_BENCH_NGINX_PORT ETL_SUITE; do
        [ -n "${!v:-}" ] && pass+=("$v=${!v}")
    done
    chroot "$CHROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive PG_MAJOR="$MAJOR" CI="${CI:-}" "${pass[@]}" "$@"
}

# Working tree -> /build/etl_exec, fresh: uncommitted changes in, .git and
# build products out.
copy_tree() {
    rm -rf "$CHROOT$BUILD_DIR"
    mkdir -p "$CHROOT$BUILD_DIR"
    tar -C "$ROOT" --exclude=./.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
        --exclude=./results --exclude=./tmp_check --exclude=./log --exclude=./regression.diffs \
        --exclude=./regression.out --exclude=__pycache__ --exclude=./test/fuzz/build --exclude=./test/fuzz/findings \
        -cf - . | tar -C "$CHROOT$BUILD_DIR" -xf -
}

# --- preparation: debootstrap, then the packages of test/setup.sh ----------
do_debootstrap() {
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap on the host"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    fi
    local mirror="${ETL_COMPAT_MIRROR:-$(host_mirror)}" script=
    [ -n "$mirror" ] || die "no Debian URI in the host's apt sources (set ETL_COMPAT_MIRROR)"
    # debootstrap knows a suite by its script; a release newer than the
    # host's debootstrap is bootstrapped like sid
    [ -e "/usr/share/debootstrap/scripts/$SUITE" ] || script=/usr/share/debootstrap/scripts/sid
    say "debootstrap $SUITE into $CHROOT from the host's mirror $mirror"
    # a half-made chroot from an interrupted run: start over (nothing is
    # mounted in it, as mounts happen only after the stamp exists)
    rm -rf --one-file-system "$CHROOT"
    debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$CHROOT" "$mirror" $script \
        >"$CACHE/debootstrap-$MAJOR.log" 2>&1 \
        || { tail -30 "$CACHE/debootstrap-$MAJOR.log"; die "debootstrap failed (log: $CACHE/debootstrap-$MAJOR.log)"; }
    # services never start in the chroot: the suite starts what it needs
    printf '#!/bin/sh\nexit 101\n' >"$CHROOT/usr/sbin/policy-rc.d"
    chmod 755 "$CHROOT/usr/sbin/policy-rc.d"
    # the mirror's Release dates may be off from this clock; no recommends
    cat >"$CHROOT/etc/apt/apt.conf.d/99etl-exec" <<'APT'
Acquire::Check-Valid-Until "false";
Acquire::Check-Date "false";
APT::Install-Recommends "false";
Acquire::Languages "none";
APT
    touch "$STAMP_BOOTSTRAP"
}

do_packages() {
    say "installing the test suite's packages for PostgreSQL $MAJOR (test/setup.sh --packages-only)"
    local log="$CACHE/packages-$MAJOR.log"
    if ! in_chroot bash "$BUILD_DIR/test/setup.sh" --packages-only >"$log" 2>&1; then
        tail -30 "$log"
        die "installing the packages failed (log: $log)"
    fi
    grep '^== ' "$log" || true
    in_chroot apt-get clean
    sha256sum <"$ROOT/test/setup.sh" >"$STAMP_PACKAGES"
}

do_build() {
    say "building etl_exec against PostgreSQL $MAJOR"
    in_chroot make -C "$BUILD_DIR" -s PG_CONFIG="/usr/lib/postgresql/$MAJOR/bin/pg_config"
}

do_suite() {
    say "running test/run_tests.sh with PG_MAJOR=$MAJOR"
    set +e
    in_chroot bash "$BUILD_DIR/test/run_tests.sh" 2>&1 | tee "$CACHE/suite-$MAJOR.log"
    SUITE_RC=${PIPESTATUS[0]}
    set -e
}

exec 9>"$CHROOT.lock"
if ! flock -n 9; then
    say "waiting for another compat.sh run on $CHROOT"
    flock 9
fi

if [ -f "$STAMP_BOOTSTRAP" ]; then
    say "reusing the chroot $CHROOT"
else
    timed debootstrap do_debootstrap
fi
mount_all
copy_tree
if [ -f "$STAMP_PACKAGES" ] && sha256sum <"$ROOT/test/setup.sh" | cmp -s - "$STAMP_PACKAGES"; then
    say "packages already installed"
else
    timed packages do_packages
fi
if [ "$PREPARE_ONLY" = 1 ]; then
    say "prepared"
    timings
    exit 0
fi
timed copy copy_tree

if ! timed build do_build; then
    say "etl_exec does not build against PostgreSQL $MAJOR"
    timings
    echo "PostgreSQL $MAJOR: 0 passed, 1 failed (build)"
    exit 1
fi
SUITE_RC=1
timed suite do_suite
totals=$(grep -E '^tests: [0-9]+ passed, [0-9]+ failed$' "$CACHE/suite-$MAJOR.log" | tail -1 || true)
[ -n "$totals" ] || totals="tests: 0 passed, 1 failed"
timings
echo "PostgreSQL $MAJOR: ${totals#tests: }"
if [ "$SUITE_RC" -ne 0 ]; then
    grep -qE ' [1-9][0-9]* failed$' <<<"$totals" || echo "PostgreSQL $MAJOR: the suite exited with status $SUITE_RC"
    exit 1
fi
