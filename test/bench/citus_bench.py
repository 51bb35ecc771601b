"""The Citus scenario of the benchmark (run.sh --citus): etl_exec on a Citus
coordinator (two workers on this machine) loading a hash-distributed table
(32 shards on patientid), against psql's COPY of the same rows into the same
table -- Citus's own fastest path, each measured from a new session (psql's
connecting included, as the worker's own start is).  Reports the ratio; the
target is <= 1.5.  Each etl_exec run must succeed with exactly N rows, and
its rows must equal COPY's (EXCEPT ALL both ways).  Exits non-zero on a
failed check, never on a speed."""
import argparse
import json
import os
import subprocess
import sys
import time

import psycopg2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_pages  # noqa: E402

failures = []


def fail(msg):
    failures.append(msg)
    print("!! FAILED: " + msg, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dbname", required=True)
    ap.add_argument("--psql", default="psql")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    meta = json.load(open(os.path.join(args.data, "meta.json")))
    n = meta["records"]
    conn = psycopg2.connect(host=args.host, port=args.port, dbname=args.dbname, user="postgres")
    conn.autocommit = True
    cur = conn.cursor()

    def q(sql, a=None):
        cur.execute(sql, a)
        return cur.fetchall() if cur.description else None

    def fresh(table):
        q("DROP TABLE IF EXISTS %s" % table)
        q(gen_pages.ddl(table))
        q("SELECT create_distributed_table(%s, 'patientid')", (table,))

    job = q("INSERT INTO dw_etl_jobs (name, url, target_table, pagination, page_size, pagination_options) "
            "VALUES ('bench_citus', %s, 'bench_citus_etl', 'offset', %s, "
            "'{\"skip_param\": \"skip\", \"limit_param\": \"top\"}') RETURNING job_id",
            (args.base_url + "/m1/Patients", meta["page_size"]))[0][0]
    copy_file = os.path.join(args.data, "rows.copy")
    rounds = []
    for r in range(args.repeat):
        fresh("bench_citus_copy")
        q("CHECKPOINT")
        t0 = time.monotonic()
        p = subprocess.run([args.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", args.host, "-p", str(args.port),
                            "-U", "postgres", "-d", args.dbname, "-c", "\\copy bench_citus_copy FROM '%s'" % copy_file],
                           capture_output=True, text=True)
        t_copy = time.monotonic() - t0
        if p.returncode != 0:
            fail("psql COPY: %s" % p.stderr.strip())
        if q("SELECT count(*) FROM bench_citus_copy")[0][0] != n:
            fail("COPY loaded a wrong number of rows")

        fresh("bench_citus_etl")
        q("CHECKPOINT")
        t0 = time.monotonic()
        try:
            run_id = q("SELECT etl_execute_job(%s, timeout := %s, wait := true)", (job, max(120, n // 2000)))[0][0]
        except psycopg2.Error as e:
            fail("etl_exec: %s" % str(e).strip())
            break
        t_etl = time.monotonic() - t0
        status, loaded = q("SELECT status, records_loaded FROM dw_etl_runs WHERE run_id = %s", (run_id,))[0]
        count = q("SELECT count(*) FROM bench_citus_etl")[0][0]
        if (status, loaded, count) != ("succeeded", n, n):
            fail("etl_exec run %s: %s, records_loaded %s, %s rows, expected %d" % (run_id, status, loaded, count, n))
        if r == 0:
            diff = q("SELECT count(*) FROM ((SELECT * FROM bench_citus_etl EXCEPT ALL SELECT * FROM bench_citus_copy) "
                     "UNION ALL (SELECT * FROM bench_citus_copy EXCEPT ALL SELECT * FROM bench_citus_etl)) d")[0][0]
            if diff != 0:
                fail("etl_exec's rows differ from COPY's in %d rows" % diff)
        print("round %d: psql COPY %.3f s, etl_exec %.3f s (run %s), ratio %.2f" %
              (r + 1, t_copy, t_etl, run_id, t_etl / t_copy), flush=True)
        rounds.append((t_copy, t_etl))
    if rounds:
        best_copy = min(c for c, _ in rounds)
        best_etl = min(e for _, e in rounds)
        shards = q("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'bench_citus_etl'::regclass")[0][0]
        nodes = q("SELECT count(*) FROM pg_dist_node WHERE noderole = 'primary' AND groupid <> 0")[0][0]
        print()
        print("Citus: %d records into a hash-distributed table (%d shards on %d workers; best of %d)" %
              (n, shards, nodes, len(rounds)))
        print("  psql COPY (Citus)          %8.3f s  %10.0f rows/s" % (best_copy, n / best_copy))
        print("  etl_exec (append)          %8.3f s  %10.0f rows/s" % (best_etl, n / best_etl))
        print("  etl_exec / COPY            %8.2f    (target <= 1.5)" % (best_etl / best_copy))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
