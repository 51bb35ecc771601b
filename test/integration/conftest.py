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


def run_in_session(db, sql, args=(), settings=()):
    """Run a statement in a session with some SET commands first."""
    conn = connect(db.dbname)
    cur = conn.cursor()
    for s in settings:
        cur.execute(s)
    cur.execute(sql, args)
    result = cur.fetchone()[0]
    conn.close()
    return result


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


# The longest tests, whose code paths do not differ between PostgreSQL
# majors (timing loops of timeouts, cancels and rate windows): the suites of
# the other majors (ETL_SUITE=compat, test/run_all.sh) leave them to the
# host's major, to keep the whole CI within its time.  Node ids, without
# the directory.
SLOW = {
    "test_pg_cron.py::test_pg_cron_starts_a_job_and_resumes_it_until_done",
    "test_core.py::test_no_free_background_worker_slot_is_a_clear_error_and_leaves_no_run",
    "test_core.py::test_timeouts_then_resume_until_succeeded_is_exact",
    "test_core.py::test_wait_true_raises_timeout_with_own_sqlstate",
    "test_core.py::test_parameters_fill_the_url_and_guard_resume",
    "test_operations.py::test_etl_resume_pending_picks_what_it_should",
    "test_http.py::test_oauth2_tokens_are_fetched_cached_and_refreshed",
    "test_http.py::test_a_stalled_transfer_is_cut",
    "test_http.py::test_a_revoked_oauth_token_is_fetched_again_once",
    "test_auth.py::test_refresh_token_grant_fetches_caches_and_renews",
    "test_citus.py::test_cancel_then_resume_is_exact[1]",
    "test_citus.py::test_upsert_timeouts_then_resume_is_exact",
    "test_citus.py::test_timeouts_then_resume_is_exact",
    "test_partitions.py::test_timeouts_and_resumes_of_a_fan_out_are_exact",
    "test_partitions.py::test_a_300_parent_fan_out_loads_every_child_once",
    "test_partitions.py::test_cancels_and_resumes_of_a_fan_out_are_exact",
    "test_partitions.py::test_a_resume_asks_the_frozen_partitions_after_the_parents_changed",
    "test_parallel_paging.py::test_a_load_slower_than_the_request_timeout_spends_no_retry[1]",
    "test_parallel_paging.py::test_a_load_slower_than_the_request_timeout_spends_no_retry[4]",
    "test_parallel_paging.py::test_timeouts_and_resumes_with_8_in_flight_are_exact[page]",
    "test_parallel_paging.py::test_concurrency_is_the_most_requests_in_flight[1]",
    "test_parallel_paging.py::test_one_request_at_a_time_lasts_through_a_resume",
    "test_parallel_paging.py::test_cancels_and_resumes_with_8_in_flight_are_exact[page]",
    "test_parallel_paging.py::test_a_revoked_oauth_token_is_fetched_again_once_with_8_in_flight",
    "test_rate_limits.py::test_two_jobs_at_concurrency_8_stay_within_20_a_second",
    "test_rate_limits.py::test_a_retry_after_past_the_deadline_ends_the_run_until_then",
    "test_rate_limits.py::test_requests_per_second_across_runs_at_concurrency_8",
    "test_rate_limits.py::test_requests_per_second_across_runs",
    "test_rate_limits.py::test_a_429_storm_pauses_every_run",
    "test_rate_limits.py::test_two_jobs_share_the_apis_quota[ietf]",
    "test_rate_limits.py::test_two_jobs_share_the_apis_quota[x_delta]",
    "test_rate_limits.py::test_two_jobs_share_the_apis_quota[ietf_dict]",
    "test_rate_limits.py::test_two_jobs_share_the_apis_quota[ietf_list]",
    "test_rate_limits.py::test_two_jobs_share_the_apis_quota[x_epoch_ms]",
    "test_rate_limits.py::test_a_quota_spent_waits_for_its_reset",
    "test_requests.py::test_timeouts_and_resumes_are_exact[search_after]",
    "test_requests.py::test_timeouts_and_resumes_are_exact[hcursor]",
    "test_requests.py::test_timeouts_and_resumes_are_exact[graphql]",
    "test_requests.py::test_timeouts_and_resumes_are_exact[search_offset_8]",
    "test_formats.py::test_timeouts_then_resume_are_exact[8-csv]",
    "test_formats.py::test_timeouts_then_resume_are_exact[1-csv]",
    "test_formats.py::test_format_change_refuses_resume",
    "test_upsert.py::test_timeouts_then_resume_write_every_record_exactly_once[None]",
}


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ETL_SUITE", "full") != "compat":
        return
    skip = pytest.mark.skip(reason="the host's major runs it (ETL_SUITE=compat: version-independent, long)")
    for item in items:
        if item.nodeid.split("/")[-1] in SLOW:
            item.add_marker(skip)
