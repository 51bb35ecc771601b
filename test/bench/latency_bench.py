#!/usr/bin/python3
"""The latency scenario of test/bench/run.sh: an API that answers every
page after a fixed delay (50 ms by default), with pages of 100 records, as
real APIs do.  In one run, on one data set and one server, it measures:

  curl, one request after another over one keep-alive connection
  curl --parallel --parallel-max 8 (the fetch limit with 8 in flight)
  etl_exec at concurrency 1, 8 and 32 (append, checkpoint every 60 s)
  the Python executor (requests + psycopg2, one request at a time)

and the etl_exec worker's peak RssAnon at each concurrency.  The rows each
etl_exec run stores must equal the COPY-loaded ones.  Prints a table with
the ratios the issue sets as targets (etl_exec at 8 within 1.5x of 8-way
curl; at least 5x faster than the Python executor); exits 1 when a stage
fails, never because of a figure.

Usage: latency_bench.py --data DIR --work DIR [--latency-ms 50] [--rounds 3]
(DIR: gen_pages.py's output with --page-size 100; PG* environment.)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import Db, compare_with_copy, fail, fmt_int, log, stage_copy, stage_etl, table  # noqa: E402


class SlowApi(bench.SlowPages):
    """bench.py's slow server (the pre-rendered pages, each answered after a
    fixed delay; 127.0.0.1, an ephemeral port), for many requests at once."""
    request_queue_size = 256


def stage_curl(args, meta, url, parallel):
    """Every page (and the empty one after them) with curl: one after
    another over one connection, or `parallel` at once."""
    cfg = os.path.join(args.work, "latency-pages.cfg")
    with open(cfg, "w") as f:
        for skip in range(0, meta["records"] + 1, meta["page_size"]):
            f.write('url = "%s?skip=%d&top=%d"\noutput = "/dev/null"\n' % (url, skip, meta["page_size"]))
    cmd = ["curl", "-s", "-S", "-K", cfg, "-w", "%{http_code}\\n"]
    if parallel > 1:
        cmd[1:1] = ["--parallel", "--parallel-max", str(parallel)]
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    secs = time.monotonic() - t0
    codes = p.stdout.split()
    if p.returncode != 0 or len(codes) != meta["pages"] or any(c != "200" for c in codes):
        fail("curl (%d at once): exit %d, %d responses (expected %d), codes %s; %s" %
             (parallel, p.returncode, len(codes), meta["pages"], sorted(set(codes)), p.stderr.strip()[:300]))
    log("%-22s          %-9s %8.3f s  %10s pages/s" %
        ("curl, %d at once" % parallel, "ok", secs, fmt_int(meta["pages"] / secs)))
    return secs


def stage_python(args, meta, url):
    bench.fresh_table(Db(), "lat_py")
    cmd = [sys.executable, os.path.join(bench.HERE, "python_executor.py"), "--url", url,
           "--table", "lat_py", "--page-size", str(meta["page_size"]), "--interval", "60"]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    if p.returncode != 0:
        fail("python executor exited %d: %s" % (p.returncode, p.stderr.strip()[-500:]))
        return None
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if out["records"] != meta["records"]:
        fail("python executor: %d records, expected %d" % (out["records"], meta["records"]))
    log("%-22s          %-9s %8.3f s" % ("python executor", "ok", out["seconds"]))
    return out["seconds"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--latency-ms", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every stage; medians are reported")
    args = ap.parse_args()
    with open(os.path.join(args.data, "meta.json")) as f:
        meta = json.load(f)
    n = meta["records"]

    db = Db()
    db.q("CREATE EXTENSION IF NOT EXISTS etl_exec")
    bench.build["path"] = os.path.join(db.one("SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'"),
                                       "etl_exec.so")
    bench.build["sha"] = bench.so_fingerprint()
    api = SlowApi(args.data, args.latency_ms)

    def job(concurrency):
        name = "lat_c%d" % concurrency
        db.q("DELETE FROM dw_etl_runs WHERE job_id IN (SELECT job_id FROM dw_etl_jobs WHERE name = %s)", (name,))
        db.q("DELETE FROM dw_etl_jobs WHERE name = %s", (name,))
        return db.one(
            "INSERT INTO dw_etl_jobs (name, url, target_table, pagination, page_size, pagination_options, "
            "concurrency) VALUES (%s, %s, %s, 'offset', %s, "
            "'{\"skip_param\": \"skip\", \"limit_param\": \"top\", \"total_path\": \"$.\\\"@odata.count\\\"\"}', "
            "%s) RETURNING job_id", (name, api.url, "lat_etl_c%d" % concurrency, meta["page_size"], concurrency))

    jobs = {c: job(c) for c in (1, 8, 32)}
    log("latency scenario: %s records, %d pages of %d (+1 empty), the API answering each in %d ms" %
        (fmt_int(n), meta["pages"] - 1, meta["page_size"], args.latency_ms))
    stage_copy(db, args, meta)			# the reference rows (bench_copy)

    res = {k: [] for k in ("curl1", "curl8", "etl1", "etl8", "etl32", "py")}
    rss = {1: [], 8: [], 32: []}
    for r in range(args.rounds):
        log("round %d of %d" % (r + 1, args.rounds))
        res["curl1"].append(stage_curl(args, meta, api.url, 1))
        res["curl8"].append(stage_curl(args, meta, api.url, 8))
        for c in (1, 8, 32):
            out = stage_etl(db, "etl_exec, %d at once" % c, jobs[c], "lat_etl_c%d" % c, n)
            res["etl%d" % c].append(out["seconds"])
            if out["rss_peak_kb"]:
                rss[c].append(out["rss_peak_kb"])
            if r == 0:
                compare_with_copy(db, "etl_exec, %d at once" % c, "lat_etl_c%d" % c)
        py = stage_python(args, meta, api.url)
        if py:
            res["py"].append(py)
    api.shutdown()

    def med(k):
        return statistics.median(res[k]) if res[k] else float("nan")

    c1, c8, e1, e8, e32, py = (med(k) for k in ("curl1", "curl8", "etl1", "etl8", "etl32", "py"))
    rows = [
        ["curl, one request after another (keep-alive)", "%.2f" % c1, fmt_int(n / c1), "%.2f" % (c1 / c8)],
        ["curl --parallel --parallel-max 8", "%.2f" % c8, fmt_int(n / c8), "1.00"],
        ["etl_exec, concurrency 1", "%.2f" % e1, fmt_int(n / e1), "%.2f" % (e1 / c8)],
        ["etl_exec, concurrency 8", "%.2f" % e8, fmt_int(n / e8), "%.2f" % (e8 / c8)],
        ["etl_exec, concurrency 32", "%.2f" % e32, fmt_int(n / e32), "%.2f" % (e32 / c8)],
        ["Python executor (requests + psycopg2), one at a time", "%.2f" % py, fmt_int(n / py), "%.2f" % (py / c8)],
    ]
    print()
    print("Latency scenario: %d pages of %d records, %d ms a page; medians of %d round(s)" %
          (meta["pages"] - 1, meta["page_size"], args.latency_ms, args.rounds))
    print()
    print(table(rows, ["stage", "seconds", "rows/s", "x curl 8-way"]))
    print()
    ratios = [
        ["etl_exec at 8 / curl 8-way (target <= 1.5)", "%.2f" % (e8 / c8)],
        ["Python executor / etl_exec at 8 (target >= 5)", "%.1f" % (py / e8)],
        ["etl_exec at 1 / curl one at a time", "%.2f" % (e1 / c1)],
        ["etl_exec at 1 / etl_exec at 8", "%.1f" % (e1 / e8)],
    ]
    for c in (1, 8, 32):
        ratios.append(["etl_exec worker's peak RssAnon at concurrency %d" % c,
                       "%s kB" % (fmt_int(max(rss[c])) if rss[c] else "?")])
    print(table(ratios, ["figure", "value"]))
    print()
    for line in bench.machine(db):
        print(line)
    if bench.failures:
        print("\n%d stage(s) failed:" % len(bench.failures))
        for f in bench.failures:
            print("  - " + f)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
