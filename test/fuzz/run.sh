#!/usr/bin/env bash
# test/fuzz/run.sh SECONDS HARNESS...   fuzz each harness for SECONDS
# test/fuzz/run.sh --regress HARNESS... run each once over its corpus
#
# Runs build/fuzz_<HARNESS> (make builds them) on a scratch copy of
# corpus/<HARNESS>, so that what the fuzzer adds never lands in the
# committed corpus.  Prints one line per harness and then
# 'fuzz: N passed, M failed'; exits 1 if any failed.  A harness fails on
# any crash, leak, sanitizer report, broken invariant or timeout (libFuzzer
# exits non-zero and writes the input): the input is kept in
# findings/<HARNESS>/ with the log, to minimise (build/fuzz_<HARNESS>
# -minimize_crash=1 -runs=100000 FILE) and then commit to the corpus as a
# regression input once src/ is fixed.  BUILD overrides the build
# directory (build).
set -uo pipefail
cd "$(dirname "$0")"

usage() { echo "usage: run.sh SECONDS HARNESS... | run.sh --regress HARNESS..." >&2; exit 2; }
[ $# -ge 2 ] || usage
if [ "$1" = --regress ]; then
    seconds=0
else
    seconds=$1
    [[ "$seconds" =~ ^[0-9]+$ ]] || usage
fi
shift
BUILD=${BUILD:-build}

# the dictionary of tokens each harness's inputs are made of
dict_of() {
    case $1 in
        csv_scan) echo dict/csv.dict ;;
        rate_headers) echo dict/http_headers.dict ;;
        url | pagination) echo dict/url.dict ;;
        *) echo dict/json.dict ;;
    esac
}

# "N runs, cov C, corpus A -> B" from a libFuzzer log
summary() {
    local log=$1 runs cov corp
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    corp=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    echo "${runs:-?} runs, cov ${cov:-?}, corpus $2 -> ${corp:-?}"
}

export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
scratch_root=$(mktemp -d "${TMPDIR:-/tmp}/etl_fuzz.XXXXXX")
trap 'rm -rf "$scratch_root"' EXIT
passed=0
failed=0
for h in "$@"; do
    bin=$BUILD/fuzz_$h
    scratch=$scratch_root/$h
    mkdir -p "$scratch/corpus" "$scratch/artifacts"
    if [ ! -x "$bin" ]; then
        echo "fuzz_$h: FAILED (no $bin: run make first)"
        failed=$((failed + 1))
        continue
    fi
    cp corpus/"$h"/* "$scratch/corpus/" 2>/dev/null
    seeds=$(ls "$scratch/corpus" | wc -l)
    if [ "$seconds" = 0 ]; then
        limit=(-runs=0)
    else
        limit=(-max_total_time="$seconds")
    fi
    start=$(date +%s)
    "$bin" "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 \
        -dict="$(dict_of "$h")" -artifact_prefix="$scratch/artifacts/" "$scratch/corpus" \
        >"$scratch/log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    if [ $rc -eq 0 ] && [ -z "$(ls "$scratch/artifacts")" ]; then
        echo "fuzz_$h: passed ($(summary "$scratch/log" "$seeds"), ${took} s)"
        passed=$((passed + 1))
    else
        mkdir -p findings/"$h"
        cp "$scratch/artifacts"/* findings/"$h"/ 2>/dev/null
        cp "$scratch/log" findings/"$h"/log
        # what it was: a broken invariant, undefined behaviour, else the sanitizer's summary
        what=$( { grep -m1 -o -E '(invariant broken|runtime error): .{0,120}' "$scratch/log"
                  grep -m1 -E '^SUMMARY: ' "$scratch/log" | sed -E 's/ \([^)]*\)//g; s/^SUMMARY: //'
                  grep -m1 -E 'ParseDictionaryFile|ERROR' "$scratch/log"; } | head -1)
        echo "fuzz_$h: FAILED (rc $rc, ${took} s: ${what:-see the log}; input and log in test/fuzz/findings/$h/)"
        # the report itself, for CI logs
        grep -E -A12 '^==[0-9]+==ERROR|invariant broken|runtime error' "$scratch/log" | head -40 | sed 's/^/    /'
        failed=$((failed + 1))
    fi
done
echo "fuzz: $passed passed, $failed failed"
[ $failed -eq 0 ]
