#!/usr/bin/env python3
"""formats_bench.py: the same records as JSON, ndjson and csv pages, loaded by
etl_exec; prints each format's best run time and rows/s.

    PG* variables of a running test cluster (test/env.sh), then
    /usr/bin/python3 test/bench/formats_bench.py [--records 200000] [--page 1000]
                                                 [--repeat 3] [--port 18132]

The pages are rendered once from test/mock_api.py's data set and served from
memory by a small threaded HTTP server of its own (so the API's rendering costs
nothing), with offset paging ?skip=S&top=T; each run loads an empty table with
concurrency 1 and 4, and the row count is checked.  Run time is the run's
duration_ms (the worker's own, from first request to last commit).
"""
import argparse
import csv
import io
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import psycopg2

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import mock_api  # noqa: E402

FIELDS = ["PatientId", "Name", "BirthDate", "Score", "Active", "CreatedAt", "Visits", "Notes", "Meta"]
DDL = """CREATE TABLE {t} (patientid int, name text, birthdate date, score numeric(10,2), active boolean,
          createdat timestamptz, visits int, notes text, meta jsonb)"""


def render(records, page):
    pages = {"json": {}, "ndjson": {}, "csv": {}}
    for skip in range(0, len(records) + 1, page):
        recs = [{k: r[k] for k in FIELDS} for r in records[skip:skip + page]]
        pages["json"][skip] = json.dumps({"value": recs}, ensure_ascii=False).encode()
        pages["ndjson"][skip] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode()
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(FIELDS)
        for r in recs:
            w.writerow([mock_api._csv_text(r[f], "") for f in FIELDS])
        pages["csv"][skip] = out.getvalue().encode()
    return pages


def serve(pages, port):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            u = urlsplit(self.path)
            q = parse_qs(u.query)
            body = pages[u.path.strip("/")].get(int(q["skip"][0]), b"")
            if not body:
                body = {"json": b'{"value": []}', "ndjson": b"", "csv": ",".join(FIELDS).encode() + b"\n"}[u.path.strip("/")]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class S(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            pass                # a page in flight past the end, dropped by the worker

    srv = S(("127.0.0.1", port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200000)
    ap.add_argument("--page", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--port", type=int, default=18132)
    a = ap.parse_args()
    pages = render([mock_api.record(i) for i in range(1, a.records + 1)], a.page)
    sizes = {f: sum(len(b) for b in p.values()) for f, p in pages.items()}
    serve(pages, a.port)
    conn = psycopg2.connect(dbname=os.environ.get("PGDATABASE", "postgres"))
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("DROP DATABASE IF EXISTS formats_bench")
    cur.execute("CREATE DATABASE formats_bench")
    conn = psycopg2.connect(dbname="formats_bench")
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE EXTENSION etl_exec")
    print(f"{a.records} records, pages of {a.page}; body bytes: " +
          ", ".join(f"{f} {sizes[f] / 1e6:.1f} MB" for f in sizes))
    print(f"{'format':8} {'concurrency':>11} {'best s':>8} {'rows/s':>10} {'us/record':>10}")
    for conc in (1, 4):
        for fmt in ("json", "ndjson", "csv"):
            cur.execute("DROP TABLE IF EXISTS t")
            cur.execute(DDL.format(t="t"))
            cur.execute("INSERT INTO dw_etl_jobs (name, url, page_size, pagination_options, target_table, format, "
                        "concurrency) VALUES (%s, %s, %s, %s, 't', %s, %s) RETURNING job_id",
                        (f"{fmt}{conc}", f"http://127.0.0.1:{a.port}/{fmt}", a.page,
                         '{"skip_param": "skip", "limit_param": "top"}', fmt, conc))
            job = cur.fetchone()[0]
            best = None
            for _ in range(a.repeat):
                cur.execute("TRUNCATE t")
                cur.execute("SELECT etl_execute_job(%s, wait := true)", (job,))
                run_id = cur.fetchone()[0]
                cur.execute("SELECT duration_ms, records_loaded FROM dw_etl_runs WHERE run_id = %s", (run_id,))
                ms, n = cur.fetchone()
                assert n == a.records, (fmt, n)
                best = ms if best is None else min(best, ms)
            cur.execute("SELECT count(*), count(meta), count(notes) FROM t")
            print(f"{fmt:8} {conc:>11} {best / 1000:>8.3f} {a.records / (best / 1000):>10.0f} "
                  f"{best * 1000 / a.records:>10.2f}   rows {cur.fetchone()}")


if __name__ == "__main__":
    main()
