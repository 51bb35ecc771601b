"""Citus targets: etl_exec on a coordinator loading distributed and reference
tables (a coordinator and two workers of their own, test/citus_cluster.sh).
COPY must not be fed a Citus table directly (it would fill the coordinator's
empty shell): every mode must leave rows a SELECT sees, exactly once, through
timeouts, cancels and a killed worker.  PostgreSQL 15 only (the vendored
Citus 13.2.2 targets it; test/citus.sh installs it): skipped elsewhere."""
import os
import signal
import subprocess
import time

import psycopg2
import pytest

from conftest import Db
import mock_api

HERE = os.path.dirname(os.path.abspath(__file__))
CLUSTER = os.path.join(HERE, "..", "citus_cluster.sh")
DBNAME = "it_citus"
ROOT = os.environ.get("CITUS_ROOT", os.path.join(os.environ.get("ETL_TEST_ROOT", "/tmp/etl_exec_test"), "citus"))
PORT = int(os.environ.get("CITUS_PORT", int(os.environ.get("PGPORT", "55432")) + 10))
SOCK = os.path.join(ROOT, "socket")
TOTAL = '{"total_path": "$.\\"@odata.count\\""}'


def citus_connect(dbname=DBNAME):
    conn = psycopg2.connect(dbname=dbname, host=SOCK, port=PORT, user="postgres")
    conn.autocommit = True
    return conn


class CitusDb(Db):
    """Db on the Citus coordinator."""

    def __init__(self):
        self.dbname = DBNAME
        self.conn = citus_connect()

    def reconnect(self):
        try:
            self.conn.close()
        except Exception:
            pass
        deadline = time.time() + 60
        while True:
            try:
                self.conn = citus_connect()
                return
            except psycopg2.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)

    def distributed(self, name, how="distributed"):
        self.patients_table(name)
        if how == "distributed":
            self.q("SELECT create_distributed_table(%s, 'patientid')", (name,))
        elif how == "reference":
            self.q("SELECT create_reference_table(%s)", (name,))
        else:
            self.q("SELECT create_distributed_table(%s, 'patientid', %s)", (name, how))

    def assert_in_shards(self, table, n):
        """The rows are in the shards (not the coordinator's shell), n of them."""
        assert self.one("SELECT pg_relation_size(%s)", (table,)) == 0
        counts = self.q("SELECT result::bigint FROM run_command_on_shards(%s, 'SELECT count(*) FROM %%s')",
                        (table,))
        assert sum(c[0] for c in counts) == n, counts


@pytest.fixture(scope="module")
def cdb():
    available = subprocess.run(["bash", CLUSTER, "available"], capture_output=True, text=True)
    if available.returncode != 0:
        pytest.skip(available.stdout.strip() or available.stderr.strip())
    env = dict(os.environ, CITUS_ROOT=ROOT, CITUS_PORT=str(PORT))
    started = subprocess.run(["bash", CLUSTER, "start", DBNAME], capture_output=True, text=True, env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    d = CitusDb()
    yield d
    d.conn.close()
    subprocess.run(["bash", CLUSTER, "stop"], env=env)


def test_append_into_distributed_table_lands_in_the_shards(cdb):
    cdb.distributed("c_append")
    job = cdb.job("c_append", "/odata/Patients?n=20000", "c_append", page_size=1000, pagination_options=TOTAL)
    run_id = cdb.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = cdb.run_row(run_id)
    assert (row["status"], row["records_loaded"], row["pages_fetched"]) == ("succeeded", 20000, 20)
    cdb.assert_patients_exact("c_append", 20000)
    cdb.assert_in_shards("c_append", 20000)
    # a column no record mentions keeps the target's default
    assert cdb.one("SELECT count(*) FROM c_append WHERE loaded_at IS NULL") == 0
    # the page table was the worker's own: gone with it
    assert cdb.one("SELECT count(*) FROM pg_class WHERE relname LIKE 'etl\\_exec\\_page\\_%%'") == 0


def test_append_moves_the_page_table_within_a_transaction(cdb):
    """More rows than the page table gathers (100,000) before one commit: a
    move before the commit, pages (and their savepoints) after it, the rest
    at the commit."""
    cdb.distributed("c_big")
    job = cdb.job("c_big", "/odata/Patients?n=130000", "c_big", page_size=5000, pagination_options=TOTAL)
    run_id = cdb.one("SELECT etl_execute_job(%s, wait := true, timeout := 300)", (job,))
    row = cdb.run_row(run_id)
    assert (row["status"], row["records_loaded"], row["pages_fetched"]) == ("succeeded", 130000, 26)
    assert row["run_context"]["segments"][-1]["commits"] == 0     # all in the run's last transaction
    cdb.assert_patients_exact("c_big", 130000)
    cdb.assert_in_shards("c_big", 130000)


def test_append_with_a_checkpoint_every_page(cdb):
    cdb.distributed("c_every")
    job = cdb.job("c_every", "/odata/Patients?n=3500", "c_every", page_size=500, pagination_options=TOTAL,
                  checkpoint_interval_seconds=0)
    run_id = cdb.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = cdb.run_row(run_id)
    assert (row["status"], row["records_loaded"]) == ("succeeded", 3500)
    assert row["run_context"]["segments"][-1]["commits"] >= 6      # every page but the last (the run's end commits that)
    cdb.assert_patients_exact("c_every", 3500)
    cdb.assert_in_shards("c_every", 3500)


def test_upsert_on_the_distribution_key_twice(cdb):
    cdb.distributed("c_upsert")
    job = cdb.job("c_upsert", "/odata/Patients?n=5000", "c_upsert", page_size=1000, pagination_options=TOTAL,
                  load_mode="upsert", key_columns="{patientid}")
    assert cdb.run_row(cdb.one("SELECT etl_execute_job(%s, wait := true)", (job,)))["records_loaded"] == 5000
    cdb.assert_patients_exact("c_upsert", 5000)
    cdb.q("UPDATE c_upsert SET name = 'stale', visits = -1 WHERE patientid <= 300")
    run_id = cdb.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert cdb.run_row(run_id)["status"] == "succeeded"
    cdb.assert_patients_exact("c_upsert", 5000)      # values updated, no duplicates
    cdb.assert_in_shards("c_upsert", 5000)


def test_upsert_keeps_the_last_record_of_a_key_in_the_shards(cdb):
    """visits = i % 17 repeats within pages and across them: each page's
    merge (planned by Citus) keeps a key's last record; run twice."""
    cdb.q("DROP TABLE IF EXISTS c_visits")
    cdb.q("CREATE TABLE c_visits (visits int PRIMARY KEY, patientid int, name text)")
    cdb.q("SELECT create_distributed_table('c_visits', 'visits')")
    job = cdb.job("c_visits", "/odata/Patients?n=100", "c_visits", page_size=40, pagination_options=TOTAL,
                  load_mode="upsert", key_columns="{visits}")
    last = {}
    for i in range(1, 101):
        last[mock_api.record(i)["Visits"]] = (i, mock_api.record(i)["Name"])
    for _ in range(2):
        row = cdb.run_row(cdb.one("SELECT etl_execute_job(%s, wait := true)", (job,)))
        assert (row["status"], row["records_loaded"]) == ("succeeded", 100)
        assert {v: (p, n) for v, p, n in cdb.q("SELECT visits, patientid, name FROM c_visits")} == last
        cdb.assert_in_shards("c_visits", 17)


def test_upsert_timeouts_then_resume_is_exact(cdb):
    cdb.distributed("c_up_timeout")
    # 40 pages at >= 150 ms each: a 1 s timeout hits at least once even with
    # several requests in flight
    job = cdb.job("c_up_timeout", "/odata/Patients?n=4000&delay_ms=150", "c_up_timeout", page_size=100,
                  pagination_options=TOTAL, load_mode="upsert", key_columns="{patientid}")
    for _ in range(2):          # new keys, then every key there (and stale)
        run_id = cdb.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
        statuses = cdb.resume_until_done(run_id, timeout=1)
        assert statuses.count("timed_out") >= 1, statuses
        assert cdb.run_row(run_id)["records_loaded"] == 4000
        cdb.assert_patients_exact("c_up_timeout", 4000)
        cdb.assert_in_shards("c_up_timeout", 4000)
        cdb.q("UPDATE c_up_timeout SET name = 'stale', visits = -1 WHERE patientid % 3 = 0")


def test_replace_keeps_the_table_distributed_and_colocated(cdb):
    cdb.distributed("c_replace")
    before = cdb.q("SELECT partmethod, colocationid, repmodel FROM pg_dist_partition "
                   "WHERE logicalrelid = 'c_replace'::regclass")
    cdb.q("INSERT INTO c_replace (patientid, name) SELECT g, 'old' FROM generate_series(900001, 900050) g")
    job = cdb.job("c_replace", "/odata/Patients?n=3000", "c_replace", page_size=500, pagination_options=TOTAL,
                  load_mode="replace")
    run_id = cdb.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = cdb.run_row(run_id)
    assert (row["status"], row["records_loaded"]) == ("succeeded", 3000)
    cdb.assert_patients_exact("c_replace", 3000)
    cdb.assert_in_shards("c_replace", 3000)
    after = cdb.q("SELECT partmethod, colocationid, repmodel FROM pg_dist_partition "
                  "WHERE logicalrelid = 'c_replace'::regclass")
    assert after == before and after[0][0] == "h"
    assert cdb.one("SELECT count(*) FROM pg_tables WHERE schemaname = 'etl_exec_staging'") == 0


def test_append_into_a_reference_table(cdb):
    cdb.distributed("c_ref", how="reference")
    job = cdb.job("c_ref", "/odata/Patients?n=3000", "c_ref", page_size=1000, pagination_options=TOTAL)
    run_id = cdb.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert cdb.run_row(run_id)["records_loaded"] == 3000
    cdb.assert_patients_exact("c_ref", 3000)
    # every placement (the coordinator's and each worker's) holds every row
    counts = cdb.q("SELECT nodeport, result::bigint FROM run_command_on_placements('c_ref', 'SELECT count(*) FROM %s')")
    assert len(counts) >= 2 and all(c[1] == 3000 for c in counts), counts


def test_timeouts_then_resume_is_exact(cdb):
    cdb.distributed("c_timeout")
    # 40 pages of 500 at >= 250 ms each, 4 in flight: a 1 s timeout hits several times
    job = cdb.job("c_timeout", "/odata/Patients?n=20000&delay_ms=250", "c_timeout", page_size=500,
                  pagination_options=TOTAL)
    run_id = cdb.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    statuses = cdb.resume_until_done(run_id, timeout=1)
    assert statuses.count("timed_out") >= 2, statuses
    row = cdb.run_row(run_id)
    assert (row["records_loaded"], row["pages_fetched"]) == (20000, 40)
    cdb.assert_patients_exact("c_timeout", 20000)
    cdb.assert_in_shards("c_timeout", 20000)


def _worker_pid(db, run_id):
    deadline = time.time() + 20
    while time.time() < deadline:
        row = db.run_row(run_id)
        if row["status"] == "running" and row["records_loaded"] > 0:
            return row["worker_pid"]
        time.sleep(0.05)
    raise AssertionError(db.run_row(run_id))


@pytest.mark.parametrize("interval", [0, 1])
def test_cancel_then_resume_is_exact(cdb, interval):
    cdb.distributed("c_cancel")
    n = 6000 if interval == 0 else 30000     # with 1 s between commits: still running after the first
    job = cdb.job("c_cancel", "/odata/Patients?n=%d&delay_ms=400" % n, "c_cancel", page_size=500,
                  pagination_options=TOTAL, checkpoint_interval_seconds=interval)
    run_id = cdb.one("SELECT etl_execute_job(%s, timeout := 300)", (job,))
    _worker_pid(cdb, run_id)
    time.sleep(0.3)
    assert cdb.one("SELECT etl_cancel_run(%s)", (run_id,)) is True
    assert cdb.wait(run_id, timeout_s=10) == "cancelled"
    row = cdb.run_row(run_id)
    assert 0 < row["records_loaded"] < n
    assert cdb.one("SELECT count(*) FROM c_cancel") == row["records_loaded"]
    assert cdb.one("SELECT total_records FROM etl_get_checkpoint(%s)", (run_id,)) == row["records_loaded"]
    cdb.q("SELECT etl_resume_run(%s)", (run_id,))
    assert cdb.resume_until_done(run_id)[-1] == "succeeded"
    cdb.assert_patients_exact("c_cancel", n)


def test_sigkill_of_the_worker_then_resume_is_exact(cdb):
    cdb.distributed("c_kill")
    job = cdb.job("c_kill", "/odata/Patients?n=20000&delay_ms=40", "c_kill", page_size=500,
                  checkpoint_interval_seconds=0, pagination_options=TOTAL)
    run_id = cdb.one("SELECT etl_execute_job(%s, timeout := 300)", (job,))
    pid = _worker_pid(cdb, run_id)
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)       # the coordinator restarts
    time.sleep(1)
    cdb.reconnect()
    assert cdb.one("SELECT etl_wait_run(%s, 0)", (run_id,)) == "interrupted"
    # a commit the coordinator made may still be prepared on a worker:
    # Citus finishes it (its maintenance daemon does too, every minute)
    cdb.q("SELECT recover_prepared_transactions()")
    row = cdb.run_row(run_id)
    loaded = row["records_loaded"]
    assert 0 < loaded < 20000
    assert cdb.one("SELECT count(*) FROM c_kill") == loaded
    cdb.q("SELECT etl_resume_run(%s)", (run_id,))
    assert cdb.resume_until_done(run_id)[-1] == "succeeded"
    cdb.q("SELECT recover_prepared_transactions()")
    cdb.assert_patients_exact("c_kill", 20000)
    cdb.assert_in_shards("c_kill", 20000)


def test_append_distributed_table_is_refused_at_the_start(cdb):
    cdb.distributed("c_appdist", how="append")
    job = cdb.job("c_appdist", "/odata/Patients?n=100", "c_appdist", page_size=100)
    with pytest.raises(psycopg2.Error) as e:
        cdb.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert "c_appdist is a Citus append-distributed table, which etl_exec cannot load" in str(e.value)
    row = cdb.q("SELECT status, records_loaded, pages_fetched FROM dw_etl_runs WHERE job_id = %s", (job,))
    assert row == [("failed", 0, 0)]


def test_upsert_without_the_distribution_column_is_refused_at_the_start(cdb):
    cdb.distributed("c_badkey")
    job = cdb.job("c_badkey", "/odata/Patients?n=100", "c_badkey", page_size=100,
                  load_mode="upsert", key_columns="{visits}")
    with pytest.raises(psycopg2.Error) as e:
        cdb.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert ('upsert into Citus distributed table public.c_badkey needs its distribution column "patientid" '
            'among the key columns of job %d' % job) in str(e.value)
    assert cdb.run_row(cdb.one("SELECT max(run_id) FROM dw_etl_runs WHERE job_id = %s", (job,)))["pages_fetched"] == 0
    assert cdb.one("SELECT count(*) FROM c_badkey") == 0


def test_local_table_next_to_citus_still_loads_through_copy(cdb):
    cdb.patients_table("c_plain")
    job = cdb.job("c_plain", "/odata/Patients?n=3000", "c_plain", page_size=1000, pagination_options=TOTAL)
    run_id = cdb.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert cdb.run_row(run_id)["records_loaded"] == 3000
    cdb.assert_patients_exact("c_plain", 3000)
    assert cdb.one("SELECT pg_relation_size('c_plain')") > 0
