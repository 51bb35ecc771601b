#!/usr/bin/env python3
"""Soak: many short runs through the run queue, and what is left afterwards.

    soak.py [--runs 2000] [--wave 100]

Against the cluster and mock API of test/env.sh's settings (soak.sh starts
them).  Four jobs, every run queued behind etl_exec.max_workers:

    quick     3 pages of 100, one request at a time, upsert
    parallel  8 pages of 50, 4 requests at once, upsert
    timeout   3 pages of 100 at 400 ms a page with a 1 s timeout: times out
              with a checkpoint, and is resumed until it succeeds
              (etl_resume_pending, or etl_resume_run for a run a newer
              one of its job supersedes)
    cancel    20 pages at 100 ms a page: cancelled 0.3 s after it is asked
              for (queued, or mid-run)

in waves (--wave runs at a time, mixed 5:3:1:1), each wave drained --
resumed until nothing is running, queued or timed out -- before the next.
Meanwhile it samples the private resident memory (RssAnon: the heap, not
the shared buffers a process touches) of every etl_exec worker process.
Prints runs by final status (every run accounted for), the workers' RSS
during the first and the last wave, worker slots, run locks, runs in
flight and host-budget entries at the end (all back to zero), and the size
of dw_etl_runs.  Exits non-zero when a run is unaccounted for, a run ends
in a status its job cannot give, a table holds other rows than the source,
or something is left in use -- never because of a figure.
"""
import argparse
import os
import statistics
import sys
import threading
import time

import psycopg2

MOCK_API = os.environ.get("MOCK_API", "http://127.0.0.1:18080")

JOBS = {
    # name: (url, page_size, concurrency, timeout, rows in the target)
    "quick": ("/odata/Patients?n=300", 100, 1, 60, 300),
    "parallel": ("/odata/Patients?n=400&delay_ms=5", 50, 4, 60, 400),
    "timeout": ("/odata/Patients?n=300&delay_ms=400", 100, 1, 1, 300),
    "cancel": ("/odata/Patients?n=2000&delay_ms=100", 100, 1, 60, None),
}
MIX = ["quick"] * 5 + ["parallel"] * 3 + ["timeout", "cancel"]
EXPECTED = {"quick": {"succeeded"}, "parallel": {"succeeded"}, "timeout": {"succeeded"},
            "cancel": {"cancelled", "succeeded"}}


def connect():
    conn = psycopg2.connect(dbname=os.environ.get("PGDATABASE", "postgres"))
    conn.autocommit = True
    return conn


def one(cur, sql, args=None):
    cur.execute(sql, args)
    return cur.fetchone()[0]


class RssSampler(threading.Thread):
    """Samples RssAnon (kB) of every etl_exec worker, tagged with the wave."""

    def __init__(self):
        super().__init__(daemon=True)
        self.wave = 0
        self.samples = {}           # wave -> [kB, ...]
        self.stop = threading.Event()

    def run(self):
        conn = connect()
        cur = conn.cursor()
        while not self.stop.is_set():
            cur.execute("SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'etl_exec%%'")
            for (pid,) in cur.fetchall():
                try:
                    with open(f"/proc/{pid}/status") as f:
                        for line in f:
                            # private memory: VmRSS also counts the shared
                            # buffers a process touched, which grows with
                            # the tables, not with a leak
                            if line.startswith("RssAnon:"):
                                self.samples.setdefault(self.wave, []).append(int(line.split()[1]))
                except OSError:
                    pass            # it ended meanwhile
            time.sleep(0.05)
        conn.close()


def drain(cur, run_ids, deadline_s=300):
    """Resume timed-out runs until every run of the wave has ended for good."""
    t0 = time.time()
    while time.time() - t0 < deadline_s:
        cur.execute("SELECT count(*) FILTER (WHERE status IN ('queued', 'running')), "
                    "       count(*) FILTER (WHERE status = 'timed_out') "
                    "FROM dw_etl_runs WHERE run_id = ANY(%s)", (run_ids,))
        live, timed_out = cur.fetchone()
        if live == 0 and timed_out == 0:
            return True
        if timed_out:
            # the newest run of a job: etl_resume_pending; one a newer run
            # of its job supersedes for it: by its id
            cur.execute("SELECT array_agg(r) FROM etl_resume_pending(max_resumes := 100) r")
            resumed = set(cur.fetchone()[0] or ())
            cur.execute("SELECT run_id FROM dw_etl_runs WHERE run_id = ANY(%s) AND status = 'timed_out'",
                        (run_ids,))
            for (run_id,) in cur.fetchall():
                if run_id not in resumed:
                    try:
                        cur.execute("SELECT etl_resume_run(%s)", (run_id,))
                    except psycopg2.Error:
                        pass        # resumed meanwhile, or running: the next look tells
        time.sleep(0.1)
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--wave", type=int, default=100)
    args = ap.parse_args()

    conn = connect()
    cur = conn.cursor()
    cur.execute("DROP EXTENSION IF EXISTS etl_exec CASCADE")
    cur.execute("CREATE EXTENSION etl_exec")
    job_ids = {}
    for name, (url, page_size, concurrency, timeout, _) in JOBS.items():
        cur.execute(f"DROP TABLE IF EXISTS soak_{name}")
        cur.execute(f"CREATE TABLE soak_{name} (patientid int PRIMARY KEY, name text)")
        job_ids[name] = one(cur, """
            INSERT INTO dw_etl_jobs (name, url, target_table, page_size, concurrency, timeout_seconds,
                                     load_mode, key_columns, allow_concurrent_runs, checkpoint_interval_seconds,
                                     pagination_options)
            VALUES (%s, %s, %s, %s, %s, %s, 'upsert', '{patientid}', true, 0,
                    '{"total_path": "$.\\"@odata.count\\""}')
            RETURNING job_id""", (name, MOCK_API + url, f"soak_{name}", page_size, concurrency, timeout))

    sampler = RssSampler()
    sampler.start()
    kinds = {}
    t0 = time.time()
    waves = (args.runs + args.wave - 1) // args.wave
    for w in range(waves):
        sampler.wave = w
        n = min(args.wave, args.runs - w * args.wave)
        ids = []
        to_cancel = []
        for i in range(n):
            kind = MIX[(w * args.wave + i) % len(MIX)]
            run_id = one(cur, "SELECT etl_execute_job(%s)", (job_ids[kind],))
            kinds[run_id] = kind
            ids.append(run_id)
            if kind == "cancel":
                to_cancel.append((time.time() + 0.3, run_id))
        for when, run_id in to_cancel:
            time.sleep(max(0.0, when - time.time()))
            cur.execute("SELECT etl_cancel_run(%s)", (run_id,))
        if not drain(cur, ids):
            print(f"soak: wave {w + 1} did not drain", file=sys.stderr)
            break
        if (w + 1) % 5 == 0 or w + 1 == waves:
            print(f"  wave {w + 1}/{waves}: {len(kinds)} runs, {time.time() - t0:.0f} s", flush=True)
    sampler.stop.set()
    sampler.join()
    took = time.time() - t0

    failures = []
    cur.execute("SELECT status, count(*) FROM dw_etl_runs GROUP BY status ORDER BY status")
    by_status = dict(cur.fetchall())
    cur.execute("SELECT run_id, status, resume_count, error_message FROM dw_etl_runs")
    rows = cur.fetchall()
    accounted = sum(by_status.values())
    if accounted != len(kinds) or len(kinds) != args.runs:
        failures.append(f"{args.runs} runs asked for, {len(kinds)} started, {accounted} in dw_etl_runs")
    resumed = 0
    for run_id, status, resume_count, error in rows:
        kind = kinds.get(run_id)
        if kind is None:
            failures.append(f"run {run_id} was not asked for")
        elif status not in EXPECTED[kind]:
            failures.append(f"run {run_id} ({kind}) ended {status}: {error}")
        if kind == "timeout":
            resumed += resume_count > 0
    for name, (_, _, _, _, rows_expected) in JOBS.items():
        if rows_expected is not None:
            got = one(cur, f"SELECT count(*) FROM soak_{name}")
            exact = one(cur, f"SELECT count(*) FROM soak_{name} WHERE name LIKE 'Patient ' || patientid || '%%'")
            if got != rows_expected or exact != rows_expected:
                failures.append(f"soak_{name} holds {got} rows ({exact} right), not {rows_expected}")

    # what is left in use: give the last workers a moment to exit
    for _ in range(50):
        workers = one(cur, "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'etl_exec%%'")
        if workers == 0:
            break
        time.sleep(0.1)
    locks = one(cur, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    slots = one(cur, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = 0")
    live = one(cur, "SELECT count(*) FROM etl_live_runs()")
    cur.execute("SELECT count(*), coalesce(sum(in_flight), 0) FROM etl_host_budgets()")
    hosts, in_flight = cur.fetchone()
    size = one(cur, "SELECT pg_size_pretty(pg_total_relation_size('dw_etl_runs'))")
    for what, n in (("worker processes", workers), ("advisory locks (slots and run locks)", locks),
                    ("live runs", live), ("requests in flight in the host budgets", in_flight)):
        if n:
            failures.append(f"{n} {what} still in use at the end")

    def rss(wave):
        s = sampler.samples.get(wave, [])
        return (statistics.median(s) / 1024, max(s) / 1024) if s else (0.0, 0.0)

    first, last = rss(0), rss(waves - 1)
    print()
    print(f"soak: {len(kinds)} runs in {waves} waves of {args.wave}, {took:.0f} s "
          f"({len(kinds) / took:.1f} runs/s)")
    print("  runs by final status: " + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items()))
          + f" = {accounted} of {args.runs}")
    print(f"  timed out and resumed to success: {resumed} of {sum(1 for k in kinds.values() if k == 'timeout')}")
    print(f"  worker RSS (private), first wave: median {first[0]:.1f} MB, max {first[1]:.1f} MB; "
          f"last wave: median {last[0]:.1f} MB, max {last[1]:.1f} MB "
          f"(last/first max {last[1] / first[1] if first[1] else float('nan'):.2f}x)")
    print("  worker RSS (private) by wave (median MB): " + " ".join(f"{rss(w)[0]:.0f}" for w in range(waves)))
    print(f"  at the end: {workers} workers, {slots} worker slots held, {locks} advisory locks, "
          f"{live} live runs, {hosts} host-budget entries with {in_flight} requests in flight")
    print(f"  dw_etl_runs: {size} for {accounted} runs")
    for f in failures[:20]:
        print("  FAILED: " + f)
    print(f"soak: {0 if failures else 1} passed, {1 if failures else 0} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
