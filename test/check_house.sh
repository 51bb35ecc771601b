#!/usr/bin/env bash
# test/check_house.sh: the size limits the sources keep (issue 21): no .c
# file over 1,000 lines, no header over 450, no function over 100 lines
# (from its opening brace to its closing one, both in column 0 as pgindent
# lays them out).  Prints each breach and a last line
# "house: N passed, M failed" (one check per file); exits 1 on any breach.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

MAX_C=1000
MAX_H=450
MAX_FUNCTION=100
passed=0
failed=0
for f in src/*.c src/*.h; do
    bad=0
    lines=$(wc -l <"$f")
    case "$f" in
        *.c) limit=$MAX_C ;;
        *.h) limit=$MAX_H ;;
    esac
    if [ "$lines" -gt "$limit" ]; then
        echo "$f: $lines lines (at most $limit)"
        bad=1
    fi
    # a function: the name is the identifier before "(" on the last line
    # before "{" that starts in column 0 with an identifier
    long=$(awk -v max="$MAX_FUNCTION" '
        /^[A-Za-z_][A-Za-z0-9_]*[ \t]*\(/ { name = $0; sub(/[ \t]*\(.*/, "", name) }
        /^\{/ { start = NR; inbody = 1; next }
        /^\}/ && inbody {
            n = NR - start - 1
            if (n > max) printf "%s: %d lines\n", name, n
            inbody = 0
        }' "$f")
    if [ -n "$long" ]; then
        while IFS= read -r l; do
            echo "$f: function $l (at most $MAX_FUNCTION)"
        done <<<"$long"
        bad=1
    fi
    if [ "$bad" = 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
echo "house: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
