#!/usr/bin/env bash
# test/citus.sh: installs Citus 13.2.2 (the vendored source, patched for
# PostgreSQL 15.15 and later) into the PostgreSQL that PG_CONFIG names, for
# the Citus tests and benchmark.  PostgreSQL 15 only: on any other major it
# prints why and exits 0 (the Citus tests then skip themselves).
#
# The build (about 3 minutes on 2 cores) is cached outside the checkout, in
# CITUS_CACHE (default /var/cache/etl_exec/citus-13.2.2-pg15): the library
# and extension files are kept there and copied into the server's lib and
# share directories on every later run.  A fresh machine builds it once.
# The build needs liblz4-dev libzstd-dev libkrb5-dev, installed with
# apt-get when missing (as root).  Safe to run again.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PG_MAJOR="${PG_MAJOR:-15}"
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/$PG_MAJOR/bin/pg_config}"
# the vendored source lives in shared/vendor, beside the checkout
TARBALL="${CITUS_TARBALL:-$(cd "$HERE/../.." && pwd)/shared/vendor/citus-13.2.2-pg15.tar.gz}"
[ -f "$TARBALL" ] || TARBALL="$HERE/vendor/citus-13.2.2-pg15.tar.gz"
CACHE="${CITUS_CACHE:-/var/cache/etl_exec/citus-13.2.2-pg15}"

major=$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
if [ "$major" != 15 ]; then
    echo "== Citus: the vendored Citus 13.2.2 targets PostgreSQL 15, this is $major: the Citus tests will be skipped"
    exit 0
fi
if [ ! -f "$TARBALL" ]; then
    echo "== Citus: no source tarball ($TARBALL): the Citus tests will be skipped"
    exit 0
fi

pkglibdir=$("$PG_CONFIG" --pkglibdir)
sharedir=$("$PG_CONFIG" --sharedir)
# the cache is valid for this tarball and this server's exact version
stamp="$(sha256sum "$TARBALL" | cut -c1-16) $("$PG_CONFIG" --version)"

if [ ! -f "$CACHE/stamp" ] || [ "$(cat "$CACHE/stamp")" != "$stamp" ]; then
    installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
    missing=()
    for p in liblz4-dev libzstd-dev libkrb5-dev; do installed "$p" || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "== Citus: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    echo "== Citus: building 13.2.2 for $("$PG_CONFIG" --version) (once; cached in $CACHE)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    tar xzf "$TARBALL" -C "$work"
    src="$work/citus-13.2.2"
    (cd "$src" && ./configure --without-libcurl PG_CONFIG="$PG_CONFIG" >"$work/configure.log" 2>&1) \
        || { tail -30 "$work/configure.log"; exit 1; }
    (cd "$src" && make -j"$(nproc)" >"$work/make.log" 2>&1) || { tail -40 "$work/make.log"; exit 1; }
    (cd "$src" && make install DESTDIR="$work/stage" >"$work/install.log" 2>&1) \
        || { tail -30 "$work/install.log"; exit 1; }
    rm -rf "$CACHE.new"
    mkdir -p "$CACHE.new/lib" "$CACHE.new/extension"
    cp -a "$work/stage$pkglibdir"/citus*.so "$CACHE.new/lib/"
    cp -a "$work/stage$sharedir/extension"/citus* "$CACHE.new/extension/"
    echo "$stamp" >"$CACHE.new/stamp"
    rm -rf "$CACHE"
    mv "$CACHE.new" "$CACHE"
fi

cp -a "$CACHE/lib"/* "$pkglibdir/"
cp -a "$CACHE/extension"/* "$sharedir/extension/"
echo "== Citus 13.2.2 installed into $pkglibdir (from $CACHE)"
