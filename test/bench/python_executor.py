#!/usr/bin/python3
"""The design etl_exec replaces, as a baseline: a Python 3 executor.

It pages through an OData-style API with `requests` (one Session, so one
keep-alive connection), inserts each page with psycopg2's
`execute_values`, and keeps a checkpoint (skip, page_index, total_records)
in a run_context JSONB row that it updates every 60 seconds and at the end,
committing then.  Target columns take the record key of the same name,
compared case-insensitively, as in etl_exec.

It is given every advantage the original had or could have had: one
statement per page (execute_values page_size = the page), numbers parsed
as Decimal (no float rounding), commits only at checkpoints.

Prints one JSON line: records, pages, seconds (connect to final commit).
Usage: python_executor.py --url URL --table T [--page-size 1000] [--interval 60]
(connection from the PG* environment variables).
"""
import argparse
import json
import sys
import time
from decimal import Decimal

import psycopg2
import psycopg2.extras
import requests

RUNS_DDL = """
CREATE TABLE IF NOT EXISTS py_etl_runs (
    run_id      bigserial PRIMARY KEY,
    status      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    records_loaded bigint NOT NULL DEFAULT 0,
    run_context jsonb NOT NULL DEFAULT '{}'
)"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=60.0)
    ap.add_argument("--skip-param", default="skip")
    ap.add_argument("--limit-param", default="top")
    a = ap.parse_args()

    t0 = time.monotonic()
    conn = psycopg2.connect("")
    cur = conn.cursor()
    cur.execute(RUNS_DDL)
    cur.execute("INSERT INTO py_etl_runs (status) VALUES ('running') RETURNING run_id")
    run_id = cur.fetchone()[0]
    cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (a.table,))
    columns = [r[0] for r in cur.fetchall()]
    conn.commit()

    session = requests.Session()
    skip = page_index = total = 0
    keys = None			# record key for each column, from the first record
    insert = None
    last_checkpoint = time.monotonic()

    def checkpoint(status):
        cur.execute("UPDATE py_etl_runs SET status = %s, records_loaded = %s, "
                    "finished_at = CASE WHEN %s <> 'running' THEN now() END, "
                    "run_context = run_context || jsonb_build_object('checkpoint', "
                    "jsonb_build_object('skip', %s, 'page_index', %s, 'total_records', %s, "
                    "'saved_at', now())) WHERE run_id = %s",
                    (status, total, status, skip, page_index, total, run_id))
        conn.commit()

    while True:
        resp = session.get(a.url, params={a.skip_param: skip, a.limit_param: a.page_size},
                           timeout=60)
        resp.raise_for_status()
        records = resp.json(parse_float=Decimal)["value"]
        if not records:
            break
        if keys is None:
            by_lower = {k.lower(): k for k in records[0]}
            used = [c for c in columns if c.lower() in by_lower]
            keys = [by_lower[c.lower()] for c in used]
            insert = "INSERT INTO %s (%s) VALUES %%s" % (
                a.table, ", ".join('"%s"' % c for c in used))
        rows = [tuple(rec.get(k) for k in keys) for rec in records]
        psycopg2.extras.execute_values(cur, insert, rows, page_size=len(rows))
        skip += len(records)
        page_index += 1
        total += len(records)
        if time.monotonic() - last_checkpoint >= a.interval:
            checkpoint("running")
            last_checkpoint = time.monotonic()
    checkpoint("succeeded")
    seconds = time.monotonic() - t0
    conn.close()
    print(json.dumps({"run_id": run_id, "records": total, "pages": page_index + 1,
                      "seconds": seconds}))


if __name__ == "__main__":
    sys.exit(main())
