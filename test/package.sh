#!/usr/bin/env bash
# test/package.sh: the Debian package, end to end, for PostgreSQL PG_MAJOR
# (default 15; test/run_tests.sh runs it for each major, in the chroots
# too).  As root:
#
#   1. installs the build dependencies (debian/control) from Debian's registry
#   2. copies the source tree (the files git knows, and new ones it does not
#      ignore) to a scratch directory, updates debian/control for the
#      majors installed here (pg_buildext updatecontrol) and builds the
#      binary package with `dpkg-buildpackage -us -uc -b`
#   3. removes every file of etl_exec's that `make install` put into the
#      server, so that nothing of ours is there but the package
#   4. installs postgresql-PG_MAJOR-etl-exec and runs its autopkgtest
#      (debian/tests/installed-job: CREATE EXTENSION, a real job, exact rows)
#   5. removes the package (`dpkg -r`) and checks that every file it
#      installed is gone
#   6. puts the build tree's module back (`make install`), as the steps after
#      this one expect it
#
# The last line is "package: N passed, M failed" (one check per step);
# exits non-zero on any failure.  Logs in PACKAGE_ROOT (default
# $ETL_TEST_ROOT/package).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
SRC="$(pwd)"
. test/env.sh
PG_CONFIG="$PGBIN/pg_config"
WORK="${PACKAGE_ROOT:-$ETL_TEST_ROOT/package}"
PKG="postgresql-$PG_MAJOR-etl-exec"
passed=0
failed=0

check() {	# check "what" command...: one counted step; its output goes to the log
    local what="$1"
    shift
    echo "== package: $what"
    if "$@" >>"$WORK/package.log" 2>&1; then
        passed=$((passed + 1))
        return 0
    fi
    failed=$((failed + 1))
    echo "== package: FAILED: $what; the end of $WORK/package.log:"
    tail -40 "$WORK/package.log"
    return 1
}
finish() {
    echo "package: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

[ "$(id -u)" = 0 ] || { echo "test/package.sh runs as root (apt-get, dpkg)"; failed=1; finish; }
rm -rf "$WORK"
mkdir -p "$WORK/src"
: >"$WORK/package.log"

build_deps() {
    local missing=() p
    for p in debhelper dpkg-dev postgresql-server-dev-all "postgresql-server-dev-$PG_MAJOR" \
             libcurl4-openssl-dev curl python3 postgresql-common; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" ||
        { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; }
}

copy_tree() {
    if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
        git -C "$SRC" ls-files -z --cached --others --exclude-standard |
            (cd "$SRC" && xargs -0 -r sh -c 'for f; do if [ -e "$f" ]; then printf "%s\0" "$f"; fi; done' sh) |
            tar -C "$SRC" --null -T - -cf - | tar -C "$WORK/src" -xf -
    else
        tar -C "$SRC" --exclude='*.o' --exclude='*.so' --exclude=./test/fuzz/build --exclude=./debian/.debhelper \
            --exclude='./debian/postgresql-*' --exclude=__pycache__ -cf - . |
            tar -C "$WORK/src" -xf -
    fi
}

build() (
    cd "$WORK/src" || exit 1
    pg_buildext updatecontrol || exit 1
    grep -q "^Package: $PKG\$" debian/control || { echo "debian/control has no $PKG"; exit 1; }
    dpkg-buildpackage -us -uc -b || exit 1
    ls "$WORK/${PKG}_"*.deb
)

copy_and_build() { copy_tree && build; }

# what `make install` put there, gone (the build tree's objects stay)
uninstall_dev_build() {
    make -C "$SRC" -s uninstall PG_CONFIG="$PG_CONFIG" || return 1
    local left
    left=$(ls "$("$PG_CONFIG" --pkglibdir)"/etl_exec* "$("$PG_CONFIG" --sharedir)"/extension/etl_exec* 2>/dev/null)
    [ -z "$left" ] || { echo "still installed: $left"; return 1; }
}

install_package() {
    apt-get install -y -q --no-install-recommends "$(ls "$WORK/${PKG}_"*.deb)" || return 1
    dpkg -L "$PKG" >"$WORK/files"
    grep -q "/etl_exec.so\$" "$WORK/files" && grep -q "/etl_exec.control\$" "$WORK/files" ||
        { echo "the package lacks etl_exec.so or etl_exec.control"; cat "$WORK/files"; return 1; }
}

autopkgtest() (
    # (pg_virtualenv makes its own cluster: none of the test cluster's PG* settings)
    cd "$WORK/src" && env -u PGPORT -u PGHOST -u PGDATA -u PGDATABASE -u PGUSER \
        ETL_PKGTEST_MOCK_PORT=$((MOCK_API_PORT + 300)) debian/tests/installed-job
)

remove_package() {
    dpkg -r "$PKG" || return 1
    local f left=0
    while read -r f; do
        if [ -e "$f" ] && [ ! -d "$f" ]; then echo "left behind: $f"; left=1; fi
    done <"$WORK/files"
    [ $left = 0 ]
}

reinstall_dev_build() {
    make -C "$SRC" -s install PG_CONFIG="$PG_CONFIG"
}

check "build dependencies from Debian" build_deps || finish
check "dpkg-buildpackage -us -uc -b ($PKG)" copy_and_build || finish
if ! check "nothing of etl_exec's in the server but the package (make uninstall)" uninstall_dev_build; then
    check "the build tree's module back (make install)" reinstall_dev_build
    finish
fi
if check "install $PKG" install_package; then
    check "autopkgtest debian/tests/installed-job: a real job loads" autopkgtest
    check "dpkg -r removes every file" remove_package
fi
check "the build tree's module back (make install)" reinstall_dev_build
finish
