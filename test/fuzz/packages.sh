#!/usr/bin/env bash
# test/fuzz/packages.sh: makes sure the harnesses can be built, installing
# what is missing with apt (as root), the way test/setup.sh does.
#
#   clang, libclang-rt-dev  clang and its runtimes: libFuzzer, ASan, UBSan
#                           (Debian 12: clang-14, libclang-rt-14-dev)
#   llvm                    llvm-symbolizer, for readable stack traces
#   python3                 libpostgres.py
#   libcurl4-openssl-dev    url.c and rate_headers.c call libcurl
#   postgresql-MAJOR, postgresql-server-dev-MAJOR
#                           the server binary (made a library) and its
#                           headers, libpgcommon, libpgport (test/setup.sh
#                           installs them too); PG_CONFIG says which major
#
# Each is checked by what the build needs of it (clang linking a libFuzzer
# program, curl.h compiling), not by package name, so that any clang with
# libFuzzer on PATH will do.
set -euo pipefail
PG_CONFIG=${PG_CONFIG:-pg_config}
export DEBIAN_FRONTEND=noninteractive

missing=()
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return 0; }\n' >"$tmp/t.c"
if ! clang -fsanitize=fuzzer,address,undefined "$tmp/t.c" -o "$tmp/t" >/dev/null 2>&1; then
    missing+=(clang libclang-rt-dev)
fi
command -v llvm-symbolizer >/dev/null 2>&1 || ls /usr/lib/llvm-*/bin/llvm-symbolizer >/dev/null 2>&1 ||
    missing+=(llvm)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
printf '#include <curl/curl.h>\n' >"$tmp/c.c"
cc -E "$tmp/c.c" >/dev/null 2>&1 || clang -E "$tmp/c.c" >/dev/null 2>&1 || missing+=(libcurl4-openssl-dev)

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "test/fuzz: missing ${missing[*]}; as root: apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    echo "== test/fuzz: installing ${missing[*]}"
    ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -q
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
fi

# the server side: headers, static libraries, the binary
incdir=$("$PG_CONFIG" --includedir-server 2>/dev/null) || {
    echo "test/fuzz: no $PG_CONFIG: install postgresql-server-dev-MAJOR (test/setup.sh does)" >&2
    exit 1
}
pkglibdir=$("$PG_CONFIG" --pkglibdir)
bindir=$("$PG_CONFIG" --bindir)
major=$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
pg_missing=()
for f in "$incdir/postgres.h" "$pkglibdir/libpgcommon.a" "$pkglibdir/libpgport.a"; do
    [ -f "$f" ] || pg_missing=("postgresql-server-dev-$major")
done
[ -x "$bindir/postgres" ] || pg_missing+=("postgresql-$major")
if [ ${#pg_missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "test/fuzz: missing ${pg_missing[*]}; as root: apt-get install -y --no-install-recommends ${pg_missing[*]}" >&2
        exit 1
    fi
    echo "== test/fuzz: installing ${pg_missing[*]}"
    apt-get install -y -q --no-install-recommends "${pg_missing[@]}"
fi
