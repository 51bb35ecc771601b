"""Fixtures for the integration tests: real workers against the mock API.

The cluster and mock API are started by test/cluster.sh (test/run_tests.sh
does it); connection settings come from the PG* variables of test/env.sh.
Each test module gets a fresh database with the extension installed.
"""
import json
import os
import sys
import time
from decimal import Decimal
from datetime import datetime, timezone

import psycopg2
import psycopg2.extras
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import mock_api  # noqa: E402

MOCK_API = os.environ.get("MOCK_API", "http://127.0.0.1:18080")

PATIENTS_DDL = """
CREATE TABLE {name} (
    patientid   int PRIMARY KEY,
    name        text,
    birthdate   date,
    score       numeric(10,2),
    active      boolean,
    createdat   timestamptz,
    visits      int,
    notes       text,
    meta        jsonb,
    loaded_at   timestamptz DEFAULT now()
)"""


def connect(dbname=None, **kw):
    conn = psycopg2.connect(dbname=dbname or os.environ.get("PGDATABASE", "postgres"), **kw)
    conn.autocommit = True
    return conn


def wait_for_server(timeout=60):
    """After a crash restart: wait until the server accepts connections."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = connect()
            c.close()
            return
        except psycopg2.OperationalError:
            time.sleep(0.2)
    raise AssertionError("server did not come back")


class Db:
    """A test database: helpers to define jobs, run them and check results."""

    def __init__(self, dbname):
        self.dbname = dbname
        self.conn = connect(dbname)

    def reconnect(self):
        try:
            self.conn.close()
        except Exception:
            pass
        wait_for_server()
        self.conn = connect(self.dbname)

    def q(self, sql, args=None):
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            if cur.description is None:
                return None
            return cur.fetchall()

    def one(self, sql, args=None):
        rows = self.q(sql, args)
        assert rows is not None and len(rows) == 1, rows
        return rows[0][0] if len(rows[0]) == 1 else rows[0]

    def run_row(self, run_id):
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute("SELECT * FROM dw_etl_runs WHERE run_id = %s", (run_id,))
            return cur.fetchone()

    def patients_table(self, name):
        self.q(f"DROP TABLE IF EXISTS {name}")
        self.q(PATIENTS_DDL.format(name=name))

    def job(self, name, url, target, **cols):
        """Insert a job (url relative to the mock API) and return its job_id."""
        cols = dict(cols)
        for k in ("pagination_options", "headers", "column_map", "parameters"):
            if k in cols and not isinstance(cols[k], str) and cols[k] is not None:
                cols[k] = json.dumps(cols[k])
        names = ["name", "url", "target_table"] + list(cols)
        values = [name, MOCK_API + url, target] + list(cols.values())
        self.q(f"DELETE FROM dw_etl_runs WHERE job_id IN (SELECT job_id FROM dw_etl_jobs WHERE name = %s)", (name,))
        self.q("DELETE FROM dw_etl_jobs WHERE name = %s", (name,))
        return self.one(
            f"INSERT INTO dw_etl_jobs ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(values))}) RETURNING job_id",
            values)

    def wait(self, run_id, timeout_s=120):
        return self.one("SELECT etl_wait_run(%s, %s)", (run_id, int(timeout_s * 1000)))

    def resume_until_done(self, run_id, timeout=None, max_cycles=50):
        """Resume a run (waiting for each segment) until it succeeds."""
        statuses = []
        status = self.wait(run_id)
        statuses.append(status)
        cycles = 0
        while status != "succeeded":
            assert status in ("timed_out", "interrupted", "cancelled"), (status, self.run_row(run_id))
            cycles += 1
            assert cycles <= max_cycles, statuses
            self.q("SELECT etl_resume_run(%s, %s)", (run_id, timeout))
            status = self.wait(run_id)
            statuses.append(status)
        return statuses

    def assert_patients_exact(self, table, n):
        """The table holds records 1..n of the mock data set exactly once, every value intact."""
        rows = self.q(f"SELECT patientid, name, birthdate::text, score, active, createdat, visits, notes, meta "
                      f"FROM {table} ORDER BY patientid")
        assert len(rows) == n, f"{len(rows)} rows, expected {n}"
        assert self.one(f"SELECT count(DISTINCT patientid) FROM {table}") == n
        for row in rows:
            rec = mock_api.record(row[0])
            expected = (
                rec["PatientId"], rec["Name"], rec["BirthDate"],
                Decimal(str(rec["Score"])).quantize(Decimal("0.01")), rec["Active"],
                datetime.strptime(rec["CreatedAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc),
                rec["Visits"], rec["Notes"], rec["Meta"],
            )
            assert tuple(row) == expected, (row, expected)
        assert [r[0] for r in rows] == list(range(1, n + 1))


def fresh_database(name):
    """An empty database of that name (dropped first if it exists)."""
    admin = connect()
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.cursor().execute(f"CREATE DATABASE {name}")
    admin.close()


@pytest.fixture(scope="module")
def db(request):
    name = "it_" + request.module.__name__.split(".")[-1].replace("test_", "")[:40]
    fresh_database(name)
    d = Db(name)
    d.q("CREATE EXTENSION etl_exec")
    yield d
    d.conn.close()
