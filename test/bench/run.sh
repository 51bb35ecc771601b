#!/usr/bin/env bash
# test/bench/run.sh [--records N] [--repeat R] [--no-setup] [--smoke] [--keep]
#                   [--latency-only] [--citus]
#
# The etl_exec benchmark, in one run on one data set and one cluster: the
# fetch limit (curl over one keep-alive connection), the load limit (COPY),
# etl_exec end to end (append; checkpoint every page; upsert of new keys,
# then of the same keys again), the Python
# executor it replaces, the worker's peak memory at N and 3N records, and
# the time from etl_resume_run to the first new row.  Prints a summary table.
# Then the latency scenario (latency_bench.py): pages of 100 records from an
# API answering each in 50 ms -- curl one at a time and 8 at once, etl_exec
# at concurrency 1, 8 and 32, the Python executor -- and its own table.
#
#   --records N   records in the data set (default 1,000,000; pages of 1,000)
#   --repeat R    timed repetitions of the fetch, COPY and etl_exec stages; the
#                 best is reported (default 3, or 1 with --smoke)
#   --no-setup    skip test/setup.sh (packages, build, make install)
#   --smoke       the CI run: no 3N-record memory run; the latency scenario
#                 with 100 pages and one round (else 250 pages, 3 rounds)
#   --latency-only  the latency scenario alone
#   --keep        leave the cluster and nginx running at the end (to inspect)
#   --citus       the Citus scenario instead: etl_exec on a coordinator (two
#                 workers on this machine, test/citus_cluster.sh) into a
#                 distributed table vs psql's COPY into it (PostgreSQL 15 with
#                 Citus installed: test/citus.sh; ports ETL_BENCH_PGPORT + 10..12)
#
# Uses a cluster of its own (ETL_BENCH_ROOT, default /tmp/etl_exec_bench, port
# ETL_BENCH_PGPORT, default 55433), nginx on 127.0.0.1:ETL_BENCH_NGINX_PORT
# (18090), and caches the generated data under ETL_BENCH_DATA (default
# /tmp/etl_exec_bench_data).  Exits non-zero when a stage fails (a failed run,
# a wrong row count, stored values that differ), never because of a speed.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

RECORDS=1000000
SETUP=1
SMOKE=0
KEEP=0
CITUS=0
LATENCY_ONLY=0
REPEAT=
usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --records) RECORDS="${2:?--records needs a number}"; shift 2 ;;
        --records=*) RECORDS="${1#*=}"; shift ;;
        --repeat) REPEAT="${2:?--repeat needs a number}"; shift 2 ;;
        --repeat=*) REPEAT="${1#*=}"; shift ;;
        --no-setup) SETUP=0; shift ;;
        --smoke) SMOKE=1; shift ;;
        --keep) KEEP=1; shift ;;
        --citus) CITUS=1; shift ;;
        --latency-only) LATENCY_ONLY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ "$RECORDS" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --records must be a positive integer" >&2; exit 2; }
[ -n "$REPEAT" ] || { [ "$SMOKE" = 1 ] && REPEAT=1 || REPEAT=3; }
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --repeat must be a positive integer" >&2; exit 2; }

# A cluster of our own, never the test suite's (whose settings the test
# runner may have exported): these override them.
export ETL_TEST_ROOT="${ETL_BENCH_ROOT:-/tmp/etl_exec_bench}"
export PGPORT="${ETL_BENCH_PGPORT:-55433}"
export MOCK_API_PORT="${ETL_BENCH_MOCK_API_PORT:-18091}"
NGINX_PORT="${ETL_BENCH_NGINX_PORT:-18090}"
DATA_ROOT="${ETL_BENCH_DATA:-/tmp/etl_exec_bench_data}"
. "$REPO/test/env.sh"
export PGDATABASE=etl_bench
if [ "$ETL_TEST_ROOT" = /tmp/etl_exec_test ] || [ "$PGPORT" = 55432 ]; then
    echo "run.sh: refusing to use the test suite's cluster ($ETL_TEST_ROOT, port $PGPORT)" >&2
    exit 2
fi
NGX="$ETL_TEST_ROOT/nginx"

stop_nginx() {	# the nginx this script started (its pid file), if any
    local pid
    [ -f "$NGX/nginx.pid" ] || return 0
    pid="$(cat "$NGX/nginx.pid" 2>/dev/null || true)"
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$NGX/nginx.pid"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$KEEP" = 1 ]; then
        echo "== --keep: cluster ($PGHOST, port $PGPORT, database $PGDATABASE) and nginx (pid file $NGX/nginx.pid) left running"
        exit "$rc"
    fi
    stop_nginx
    [ "$CITUS" = 1 ] && bash "$REPO/test/citus_cluster.sh" stop >/dev/null 2>&1
    bash "$REPO/test/cluster.sh" stop >/dev/null 2>&1 || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$SETUP" = 1 ]; then
    bash "$REPO/test/setup.sh"
fi
for tool in nginx curl psql "$PYTHON"; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool is missing (run test/setup.sh)" >&2; exit 1; }
done

# ---- the data set (cached: deterministic for a given size and generator)
FP="$("$PYTHON" "$HERE/gen_pages.py" --fingerprint)"
DATA="$DATA_ROOT/n$RECORDS"
if "$PYTHON" -c "import json, sys; m = json.load(open(sys.argv[1])); sys.exit(0 if m['fingerprint'] == sys.argv[2] and m['records'] == int(sys.argv[3]) else 1)" \
        "$DATA/meta.json" "$FP" "$RECORDS" 2>/dev/null; then
    echo "== data set: $DATA (cached)"
else
    echo "== generating $RECORDS records into $DATA"
    mkdir -p "$DATA_ROOT"
    chmod 755 "$DATA_ROOT"
    rm -rf "$DATA" "$DATA.tmp"
    start=$SECONDS
    "$PYTHON" "$HERE/gen_pages.py" --out "$DATA.tmp" --records "$RECORDS" >/dev/null
    mv "$DATA.tmp" "$DATA"
    echo "   generated in $((SECONDS - start)) s"
fi

# ---- the latency scenario's data set: pages of 100 records (cached too)
LAT_RECORDS=25000
LAT_ROUNDS=3
[ "$SMOKE" = 1 ] && LAT_RECORDS=10000 && LAT_ROUNDS=1
LAT_DATA="$DATA_ROOT/lat_n${LAT_RECORDS}_p100"
if ! "$PYTHON" -c "import json, sys; m = json.load(open(sys.argv[1])); sys.exit(0 if m['fingerprint'] == sys.argv[2] and m['records'] == int(sys.argv[3]) else 1)" \
        "$LAT_DATA/meta.json" "$FP" "$LAT_RECORDS" 2>/dev/null; then
    mkdir -p "$DATA_ROOT"
    rm -rf "$LAT_DATA" "$LAT_DATA.tmp"
    "$PYTHON" "$HERE/gen_pages.py" --out "$LAT_DATA.tmp" --records "$LAT_RECORDS" --page-size 100 >/dev/null
    mv "$LAT_DATA.tmp" "$LAT_DATA"
fi

# ---- the cluster (cluster.sh also starts the mock API; the benchmark does not use it)
stop_nginx		# left by an earlier --keep run: cluster.sh start wipes its pid file
bash "$REPO/test/cluster.sh" start
psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "DROP DATABASE IF EXISTS etl_bench" -c "CREATE DATABASE etl_bench"

# ---- nginx: pre-rendered pages, chosen by $arg_skip
if (exec 3<>"/dev/tcp/127.0.0.1/$NGINX_PORT") 2>/dev/null; then
    echo "run.sh: something already listens on 127.0.0.1:$NGINX_PORT (set ETL_BENCH_NGINX_PORT)" >&2
    exit 1
fi
mkdir -p "$NGX/tmp" "$ETL_TEST_ROOT/work"
cat >"$NGX/nginx.conf" <<CONF
# generated by test/bench/run.sh
worker_processes 1;
pid $NGX/nginx.pid;
error_log $NGX/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    client_body_temp_path $NGX/tmp/body;
    proxy_temp_path $NGX/tmp/proxy;
    types { }
    default_type application/json;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $DATA;
        # a named capture: the regex of the if would reset \$1
        location ~ ^/(?<pageset>m1|m3)/Patients\$ {
            if (\$arg_skip !~ "^[0-9]+\$") { return 400; }
            try_files /\$pageset/skip-\$arg_skip.json =404;
        }
        location / { return 404; }
    }
}
CONF
nginx -p "$NGX/" -e "$NGX/error.log" -c "$NGX/nginx.conf"
for _ in $(seq 50); do
    curl -sf -o /dev/null "http://127.0.0.1:$NGINX_PORT/m1/Patients?skip=0&top=1000" && break
    sleep 0.1
done
curl -sf -o /dev/null "http://127.0.0.1:$NGINX_PORT/m1/Patients?skip=0&top=1000" \
    || { echo "run.sh: nginx did not serve the first page"; cat "$NGX/error.log"; exit 1; }
echo "== nginx running: http://127.0.0.1:$NGINX_PORT/m1/Patients (pid $(cat "$NGX/nginx.pid"), conf $NGX/nginx.conf)"

# ---- the Citus scenario (instead of the measurements below)
if [ "$CITUS" = 1 ]; then
    bash "$REPO/test/citus_cluster.sh" available || exit 1
    export CITUS_ROOT="$ETL_TEST_ROOT/citus" CITUS_PORT=$((PGPORT + 10))
    bash "$REPO/test/citus_cluster.sh" start etl_bench
    "$PYTHON" "$HERE/citus_bench.py" --data "$DATA" --base-url "http://127.0.0.1:$NGINX_PORT" \
        --host "$CITUS_ROOT/socket" --port "$CITUS_PORT" --dbname etl_bench --psql "$PGBIN/psql" --repeat "$REPEAT"
    exit $?
fi

# ---- the measurements
rc=0
if [ "$LATENCY_ONLY" = 0 ]; then
    args=(--data "$DATA" --base-url "http://127.0.0.1:$NGINX_PORT" --work "$ETL_TEST_ROOT/work" --repeat "$REPEAT")
    [ "$SMOKE" = 1 ] && args+=(--smoke --latency-rounds 1)
    "$PYTHON" "$HERE/bench.py" "${args[@]}" || rc=1
fi
echo
echo "== the latency scenario"
"$PYTHON" "$HERE/latency_bench.py" --data "$LAT_DATA" --work "$ETL_TEST_ROOT/work" --rounds "$LAT_ROUNDS" || rc=1
exit "$rc"
