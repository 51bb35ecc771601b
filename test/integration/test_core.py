"""Core run engine: full runs, timeouts and resume, exactly-once contents,
wait semantics, run independence from the caller's transaction, dry runs,
and the failures only a worker can see."""
import json
import os
import signal
import time

import psycopg2
import pytest

from conftest import MOCK_API, connect, wait_for_server

TOTAL = '{"total_path": "$.\\"@odata.count\\""}'


def test_full_offset_run_loads_every_record_exactly(db):
    db.patients_table("p_full")
    job = db.job("full", "/odata/Patients?n=20000", "p_full", page_size=1000, pagination_options=TOTAL)
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = db.run_row(run_id)
    assert row["status"] == "succeeded"
    assert row["records_loaded"] == 20000
    assert row["pages_fetched"] == 20          # total reached: no empty extra page
    assert row["error_message"] is None
    assert row["duration_ms"] > 0
    db.assert_patients_exact("p_full", 20000)
    cp = db.q("SELECT skip, page_index, total_records, next_url, cursor FROM etl_get_checkpoint(%s)", (run_id,))
    assert cp == [(20000, 20, 20000, None, None)]


def test_empty_page_stops_offset_paging_without_total(db):
    db.patients_table("p_nototal")
    job = db.job("nototal", "/odata/Patients?n=2500&no_count=1", "p_nototal", page_size=1000)
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = db.run_row(run_id)
    assert (row["status"], row["records_loaded"], row["pages_fetched"]) == ("succeeded", 2500, 4)
    db.assert_patients_exact("p_nototal", 2500)


def test_timeouts_then_resume_until_succeeded_is_exact(db):
    db.patients_table("p_resume")
    # 40 pages of 500 at >= 60 ms each: a 1 s timeout hits several times
    job = db.job("resume", "/odata/Patients?n=20000&delay_ms=60", "p_resume", concurrency=1, page_size=500,
                 pagination_options=TOTAL)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    statuses = db.resume_until_done(run_id, timeout=1)
    assert statuses.count("timed_out") >= 2, statuses
    assert statuses[-1] == "succeeded"
    row = db.run_row(run_id)
    assert row["records_loaded"] == 20000
    assert row["pages_fetched"] == 40
    assert row["resume_count"] == len(statuses) - 1
    segments = row["run_context"]["segments"]
    assert len(segments) == min(20, len(statuses))
    assert sum(1 for s in segments if s["status"] == "timed_out") == min(20, len(statuses)) - 1
    assert row["duration_ms"] >= 1000 * (len(statuses) - 1)
    db.assert_patients_exact("p_resume", 20000)


def test_timed_out_run_message_and_checkpoint(db):
    db.patients_table("p_tmsg")
    job = db.job("tmsg", "/odata/Patients?n=5000&delay_ms=300", "p_tmsg", concurrency=1, page_size=500, pagination_options=TOTAL)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    assert db.wait(run_id) == "timed_out"
    row = db.run_row(run_id)
    assert f"SELECT etl_resume_run({run_id});" in row["error_message"]
    assert "timed out" in row["error_message"]
    loaded = row["records_loaded"]
    assert 0 < loaded < 5000 and loaded % 500 == 0
    assert f"{loaded} records" in row["error_message"]
    skip, page_index, total = db.one("SELECT skip, page_index, total_records FROM etl_get_checkpoint(%s)", (run_id,))
    assert (skip, page_index, total) == (loaded, loaded // 500, loaded)
    assert db.one("SELECT count(*) FROM p_tmsg") == loaded    # rows and checkpoint agree


def test_wait_true_raises_timeout_with_own_sqlstate(db):
    db.patients_table("p_wait")
    job = db.job("waitto", "/odata/Patients?n=5000&delay_ms=300", "p_wait", concurrency=1, page_size=500, pagination_options=TOTAL)
    with pytest.raises(psycopg2.Error) as exc:
        db.q("SELECT etl_execute_job(%s, timeout := 1, wait := true)", (job,))
    assert exc.value.pgcode == "ET002"
    assert "timed_out" in exc.value.pgerror and "etl_resume_run(" in exc.value.pgerror
    run_id = db.one("SELECT max(run_id) FROM dw_etl_runs WHERE job_id = %s", (job,))
    assert db.run_row(run_id)["status"] == "timed_out"
    # and succeeds on resume with wait, returning the run_id
    while True:
        try:
            assert db.one("SELECT etl_resume_run(%s, timeout := 30, wait := true)", (run_id,)) == run_id
            break
        except psycopg2.Error as e:
            assert e.pgcode == "ET002"
    db.assert_patients_exact("p_wait", 5000)


def test_wait_true_returns_run_id_on_success(db):
    db.patients_table("p_wok")
    job = db.job("wok", "/odata/Patients?n=300", "p_wok", page_size=100)
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert isinstance(run_id, int)
    assert db.run_row(run_id)["status"] == "succeeded"
    assert db.one("SELECT count(*) FROM p_wok") == 300


def test_run_outlives_the_callers_rollback(db):
    db.patients_table("p_rb")
    job = db.job("rb", "/odata/Patients?n=1000&delay_ms=100", "p_rb", page_size=250)
    conn = connect(db.dbname)
    conn.autocommit = False
    cur = conn.cursor()
    cur.execute("SELECT etl_execute_job(%s)", (job,))
    run_id = cur.fetchone()[0]
    conn.rollback()
    conn.close()
    assert db.wait(run_id) == "succeeded"
    assert db.one("SELECT count(*) FROM p_rb") == 1000


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
def test_wait_inside_a_transaction_block(db, isolation):
    db.patients_table("p_txn")
    job = db.job("txn", "/odata/Patients?n=1000", "p_txn", page_size=250)
    conn = connect(db.dbname)
    conn.autocommit = False
    cur = conn.cursor()
    cur.execute(f"BEGIN ISOLATION LEVEL {isolation}")
    cur.execute("SELECT count(*) FROM dw_etl_runs")     # takes the snapshot first
    cur.execute("SELECT etl_execute_job(%s, wait := true)", (job,))
    run_id = cur.fetchone()[0]
    conn.commit()
    conn.close()
    assert db.run_row(run_id)["status"] == "succeeded"
    assert db.one("SELECT count(*) FROM p_txn") == 1000


def test_uncommitted_job_is_refused_by_the_worker(db):
    db.patients_table("p_unc")
    conn = connect(db.dbname)
    conn.autocommit = False
    cur = conn.cursor()
    cur.execute("INSERT INTO dw_etl_jobs (name, url, target_table) VALUES ('unc', %s, 'p_unc') RETURNING job_id",
                (MOCK_API + "/odata/Patients?n=10",))
    job = cur.fetchone()[0]
    with pytest.raises(psycopg2.Error) as exc:
        cur.execute("SELECT etl_execute_job(%s)", (job,))
    assert "not committed" in exc.value.pgerror
    conn.rollback()
    conn.close()
    assert db.one("SELECT count(*) FROM dw_etl_runs WHERE job_id = %s", (job,)) == 0


def test_upsert_twice_gives_no_duplicates(db):
    db.patients_table("p_up")
    job = db.job("up", "/odata/Patients?n=3000", "p_up", page_size=1000, load_mode="upsert",
                 key_columns="{patientid}")
    for _ in range(2):
        run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
        assert db.run_row(run_id)["records_loaded"] == 3000
    db.assert_patients_exact("p_up", 3000)


def test_upsert_last_record_wins_within_a_page(db):
    db.q("DROP TABLE IF EXISTS by_visits")
    db.q("CREATE TABLE by_visits (visits int PRIMARY KEY, patientid int, name text)")
    job = db.job("lastwins", "/odata/Patients?n=34", "by_visits", page_size=100, load_mode="upsert",
                 key_columns="{visits}")
    db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    rows = dict(db.q("SELECT visits, patientid FROM by_visits"))
    # visits = i % 17: the last record with each value is i = v + 17 (v = 0: i = 34)
    assert rows == {v: (v + 17 if v else 34) for v in range(17)}


def test_column_map_and_type_coverage(db):
    db.q("DROP TABLE IF EXISTS mapped")
    db.q("""CREATE TABLE mapped (id bigint, label varchar(40), born date, score numeric, flag boolean,
            at timestamptz, bucket int, src text, doc json, note text DEFAULT 'dflt', extra text)""")
    job = db.job("mapped", "/odata/Patients?n=50", "mapped", page_size=20,
                 column_map={"id": "$.PatientId", "label": "$.Name", "born": "$.BirthDate", "score": "$.Score",
                             "flag": "$.Active", "at": "$.CreatedAt", "bucket": "$.Meta.bucket",
                             "src": "$.Meta.source", "doc": "$.Meta"})
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["records_loaded"] == 50
    row = db.q("SELECT id, label, born::text, score::text, flag, bucket, src, doc::jsonb::text, note, extra "
               "FROM mapped WHERE id = 4")
    assert row == [(4, 'Patient 4 "Quoted"', "1950-05-29", "316.76", True, 4, "mock",
                    '{"bucket": 4, "source": "mock"}', "dflt", None)]
    names = [r[0] for r in db.q("SELECT label FROM mapped ORDER BY id")]
    assert names[4] == "Patient 5 line\nbreak" and names[7] == "Patient 8 日本" and names[8] == "Patient 9 emoji 😀"


def test_json_arrays_and_domains(db):
    db.q("DROP TABLE IF EXISTS arrays")
    db.q("DROP DOMAIN IF EXISTS small_int")
    db.q("CREATE DOMAIN small_int AS int CHECK (VALUE < 100)")
    db.q("CREATE TABLE arrays (patientid small_int, tags text[], codes int[], meta jsonb)")
    job = db.job("arrays", "/odata/Patients?n=20", "arrays", page_size=10)
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["records_loaded"] == 20
    assert db.q("SELECT patientid, tags, codes FROM arrays WHERE patientid = 8") == [(8, ["t2", 'q"uote', None], [1, 8])]


def test_value_that_does_not_fit_fails_with_its_position(db):
    db.q("DROP TABLE IF EXISTS badtype")
    db.q("CREATE TABLE badtype (patientid int, name int)")
    job = db.job("badtype", "/odata/Patients?n=30", "badtype", page_size=10)
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    msg = db.run_row(run_id)["error_message"]
    assert 'invalid input syntax for type integer: "Patient 1"' in msg
    assert 'page 1, record 1, column "name", value "Patient 1"' in msg
    assert db.one("SELECT count(*) FROM badtype") == 0


def test_failure_keeps_pages_loaded_before_it(db):
    db.q("DROP TABLE IF EXISTS failmid")
    db.q("CREATE TABLE failmid (patientid int CHECK (patientid <= 15), name text)")
    # record 16, on page 2, breaks the constraint: page 1 stays loaded
    job = db.job("failmid", "/odata/Patients?n=30", "failmid", page_size=10)
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    row = db.run_row(run_id)
    assert 'violates check constraint "failmid_patientid_check"' in row["error_message"]
    assert db.one("SELECT count(*) FROM failmid") == 10
    assert db.one("SELECT skip FROM etl_get_checkpoint(%s)", (run_id,)) == 10


def test_dry_run_reports_and_writes_nothing(db):
    db.patients_table("p_dry")
    job = db.job("dry", "/odata/Patients?n=5000", "p_dry", page_size=1000)
    run_id = db.one("SELECT etl_execute_job(%s, dry_run := true, wait := true)", (job,))
    row = db.run_row(run_id)
    assert row["status"] == "succeeded" and row["dry_run"] is True
    report = row["run_context"]["dry_run"]
    assert report["records"] == 1000
    assert report["columns"]["patientid"] == "PatientId"
    assert report["columns"]["birthdate"] == "BirthDate"
    assert "loaded_at" not in report["columns"]
    assert row["records_loaded"] == 0
    assert db.one("SELECT count(*) FROM p_dry") == 0
    assert db.q("SELECT * FROM etl_get_checkpoint(%s)", (run_id,)) == []
    with pytest.raises(psycopg2.Error, match="is a dry run and cannot be resumed"):
        db.q("SELECT etl_resume_run(%s)", (run_id,))


@pytest.mark.parametrize("fault,expect", [
    ("fail_at=0&fail_status=404", "HTTP 404 from http://127.0.0.1"),
    ("badjson_at=0", "invalid input syntax for type json"),
    ("nokey_at=0", "the first page has nothing at records_path $.\"value\"[*]"),
])
def test_worker_side_failures(db, fault, expect):
    db.patients_table("p_fault")
    job = db.job("fault", f"/odata/Patients?n=100&{fault}", "p_fault", page_size=50)
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    row = db.run_row(run_id)
    assert expect in row["error_message"], row["error_message"]
    assert db.one("SELECT count(*) FROM p_fault") == 0
    if fault == "nokey_at=0":
        assert "top-level keys are: other, items_wrong_key" in row["error_message"]
    with pytest.raises(psycopg2.Error) as exc:
        db.q("SELECT etl_retry_run(%s, wait := true)", (run_id,))
    assert exc.value.pgcode == "ET001"


def test_parameters_fill_the_url_and_guard_resume(db):
    db.patients_table("p_par")
    job = db.job("par", "/odata/Patients?n={count}&delay_ms={delay}", "p_par", concurrency=1, page_size=100,
                 parameters={"delay": 200}, pagination_options=TOTAL)
    with pytest.raises(psycopg2.Error, match=r"placeholders without a value: \{count\}"):
        db.q("SELECT etl_execute_job(%s)", (job,))
    run_id = db.one("""SELECT etl_execute_job(%s, timeout := 1, parameters := '{"count": 1500}')""", (job,))
    assert db.wait(run_id) == "timed_out"
    assert db.run_row(run_id)["parameters"] == {"count": 1500, "delay": 200}
    with pytest.raises(psycopg2.Error) as exc:
        db.q("""SELECT etl_execute_job(%s, resume_from_checkpoint := true, parameters := '{"count": 900}')""", (job,))
    assert "different parameters" in exc.value.pgerror
    assert 'count: run has 1500, this call has 900' in exc.value.pgerror
    resumed = db.one("""SELECT etl_execute_job(%s, resume_from_checkpoint := true, parameters := '{"count": 1500}',
                        timeout := 60)""", (job,))
    assert resumed == run_id
    assert db.wait(run_id) == "succeeded"
    assert db.one("SELECT count(*) FROM p_par") == 1500


def test_changed_paging_settings_refuse_resume(db):
    db.patients_table("p_chg")
    job = db.job("chg", "/odata/Patients?n=3000&delay_ms=300", "p_chg", concurrency=1, page_size=500)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    assert db.wait(run_id) == "timed_out"
    db.q("UPDATE dw_etl_jobs SET page_size = 250 WHERE job_id = %s", (job,))
    with pytest.raises(psycopg2.Error) as exc:
        db.q("SELECT etl_resume_run(%s)", (run_id,))
    assert "paging settings changed" in exc.value.pgerror
    assert "page_size: checkpoint has 500, job now has 250" in exc.value.pgerror


def test_resume_from_checkpoint_without_one_starts_new_run_with_notice(db):
    db.patients_table("p_nocp")
    job = db.job("nocp", "/odata/Patients?n=100", "p_nocp", page_size=100)
    db.conn.notices.clear()
    run_id = db.one("SELECT etl_execute_job(%s, resume_from_checkpoint := true, wait := true)", (job,))
    assert any("no resumable run with a checkpoint; starting a new run" in n for n in db.conn.notices)
    assert db.run_row(run_id)["status"] == "succeeded"


def test_settings_come_from_the_callers_session(db):
    db.patients_table("p_set")
    job = db.job("set", "/odata/Patients?n=100", "p_set", page_size=100)
    conn = connect(db.dbname)
    cur = conn.cursor()
    cur.execute("SET etl_exec.default_timeout_seconds = 17")
    cur.execute("SET etl_exec.checkpoint_interval_seconds = 5")
    cur.execute("SELECT etl_execute_job(%s, wait := true)", (job,))
    run_id = cur.fetchone()[0]
    conn.close()
    row = db.run_row(run_id)
    assert row["timeout_seconds"] == 17
    assert row["settings"]["checkpoint_interval_seconds"] == 5


def test_checkpoint_is_never_older_than_the_interval(db):
    db.patients_table("p_int")
    job = db.job("int", "/odata/Patients?n=3000&delay_ms=100", "p_int", concurrency=1, page_size=100,
                 checkpoint_interval_seconds=1)
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    seen = []
    deadline = time.time() + 30
    while time.time() < deadline:
        row = db.q("""SELECT status, (run_context->'checkpoint'->>'total_records')::bigint,
                             extract(epoch FROM clock_timestamp() - (run_context->'checkpoint'->>'saved_at')::timestamptz)
                      FROM dw_etl_runs WHERE run_id = %s""", (run_id,))[0]
        if row[0] != "running":
            break
        if row[1] is not None:
            seen.append((row[1], float(row[2])))
            assert float(row[2]) < 1.0 + 0.5, seen        # interval plus one slow page
            assert db.one("SELECT count(*) FROM p_int") >= row[1]
        time.sleep(0.2)
    assert db.wait(run_id) == "succeeded"
    assert len({s[0] for s in seen}) >= 3, seen           # it moved while pages flowed


def test_short_run_still_leaves_a_checkpoint(db):
    db.patients_table("p_short")
    job = db.job("short", "/odata/Patients?n=250", "p_short", page_size=100)
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.q("SELECT skip, page_index, total_records FROM etl_get_checkpoint(%s)", (run_id,)) == [(250, 4, 250)]  # 3 pages and the empty one


def test_runs_beyond_max_workers_queue_instead_of_failing(db):
    """0.3.0: more runs than etl_exec.max_workers (4) are queued, not refused;
    a queued run is cancelled without ever running."""
    db.q("DROP TABLE IF EXISTS p_slots")
    db.q("CREATE TABLE p_slots (patientid int, name text)")        # the runs load the same records
    job = db.job("slots", "/odata/Patients?n=100000&delay_ms=2000", "p_slots", page_size=10,
                 allow_concurrent_runs=True)
    started = []
    try:
        for _ in range(40):
            started.append(db.one("SELECT etl_execute_job(%s, timeout := 60)", (job,)))
        statuses = dict(db.q("SELECT status, count(*) FROM dw_etl_runs WHERE job_id = %s GROUP BY status", (job,)))
        assert statuses == {"running": 4, "queued": 36}
        assert db.q("SELECT run_id FROM etl_run_progress WHERE job_id = %s AND status = 'queued' "
                    "ORDER BY queue_position", (job,)) == [(r,) for r in started[4:]]
    finally:
        for run_id in started:
            db.q("SELECT etl_cancel_run(%s)", (run_id,))
        for run_id in started:
            assert db.wait(run_id) == "cancelled"
    assert db.one("SELECT count(*) FROM dw_etl_runs WHERE job_id = %s AND pages_fetched = 0", (job,)) >= 36


def test_a_resume_that_finds_its_run_running_is_refused_not_queued(db):
    """A caller whose snapshot predates another resume of the same run (here
    REPEATABLE READ) gets a clear refusal from the worker, whether a worker
    slot is free or not: the running run is never marked queued."""
    db.q("LOAD 'etl_exec'")
    db.q("ALTER SYSTEM SET etl_exec.max_workers = 1")
    db.q("SELECT pg_reload_conf()")
    time.sleep(0.5)
    try:
        db.patients_table("p_rr")
        job = db.job("rr", "/odata/Patients?n=2000&delay_ms=300", "p_rr", page_size=100)
        run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
        assert db.wait(run_id) == "timed_out"
        rr = connect(db.dbname)
        rr.autocommit = False
        cur = rr.cursor()
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        cur.execute("SELECT count(*) FROM dw_etl_runs")          # the snapshot: the run is timed_out
        db.q("SELECT etl_resume_run(%s, 60)", (run_id,))          # now it runs, holding the only slot
        with pytest.raises(psycopg2.Error) as exc:
            cur.execute("SELECT etl_resume_run(%s, 60)", (run_id,))
        assert exc.value.pgcode == "55006"
        assert f"etl_exec run {run_id} is being run already" in exc.value.pgerror \
            or f"etl_exec run {run_id} is already being run by another worker" in exc.value.pgerror
        rr.rollback()
        rr.close()
        assert db.run_row(run_id)["status"] == "running"
        db.q("SELECT etl_cancel_run(%s)", (run_id,))
        assert db.wait(run_id) == "cancelled"
    finally:
        db.q("ALTER SYSTEM RESET etl_exec.max_workers")
        db.q("SELECT pg_reload_conf()")


def test_no_free_background_worker_slot_is_a_clear_error_and_leaves_no_run(db):
    """With etl_exec.max_workers at max_worker_processes, the server runs out
    of background worker slots first: a call waits 30 s for one, then fails."""
    db.q("LOAD 'etl_exec'")
    db.q("ALTER SYSTEM SET etl_exec.max_workers = 16")
    db.q("SELECT pg_reload_conf()")
    time.sleep(0.5)
    db.q("DROP TABLE IF EXISTS p_noslot")
    db.q("CREATE TABLE p_noslot (patientid int, name text)")      # the runs load the same records
    job = db.job("noslot", "/odata/Patients?n=100000&delay_ms=2000", "p_noslot", page_size=10,
                 allow_concurrent_runs=True)
    started = []
    try:
        with pytest.raises(psycopg2.Error) as exc:
            for _ in range(20):
                started.append(db.one("SELECT etl_execute_job(%s, timeout := 120)", (job,)))
        assert "no background worker slot came free in 30 s" in exc.value.pgerror
        assert "max_worker_processes" in exc.value.pgerror
        assert db.one("SELECT count(*) FROM dw_etl_runs WHERE job_id = %s", (job,)) == len(started)
        assert db.one("SELECT count(*) FROM dw_etl_runs WHERE job_id = %s AND status = 'queued'", (job,)) == 0
    finally:
        db.q("ALTER SYSTEM RESET etl_exec.max_workers")
        db.q("SELECT pg_reload_conf()")
        for run_id in started:
            db.q("SELECT etl_cancel_run(%s)", (run_id,))
        for run_id in started:
            assert db.wait(run_id) == "cancelled"


def _worker_pid(db, run_id):
    deadline = time.time() + 10
    while time.time() < deadline:
        row = db.run_row(run_id)
        if row["status"] == "running" and row["records_loaded"] > 0:
            return row["worker_pid"]
        time.sleep(0.05)
    raise AssertionError(db.run_row(run_id))


def test_sigkill_of_the_worker_then_resume_is_exact(db):
    db.patients_table("p_kill")
    job = db.job("kill", "/odata/Patients?n=20000&delay_ms=40", "p_kill", page_size=500,
                 checkpoint_interval_seconds=0, pagination_options=TOTAL)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 300)", (job,))
    pid = _worker_pid(db, run_id)
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)       # the postmaster restarts the whole cluster
    time.sleep(1)
    db.reconnect()
    assert db.one("SELECT etl_wait_run(%s, 0)", (run_id,)) == "interrupted"
    row = db.run_row(run_id)
    assert "was interrupted" in row["error_message"]
    loaded = row["records_loaded"]
    assert 0 < loaded < 20000
    assert db.one("SELECT count(*) FROM p_kill") == loaded
    db.q("SELECT etl_resume_run(%s)", (run_id,))
    assert db.resume_until_done(run_id)[-1] == "succeeded"
    db.assert_patients_exact("p_kill", 20000)


@pytest.mark.parametrize("how,status", [
    ("SELECT etl_cancel_run(%(run)s)", "cancelled"),
    ("SELECT pg_cancel_backend(%(pid)s)", "cancelled"),
    ("SELECT pg_terminate_backend(%(pid)s)", "interrupted"),
])
def test_stop_mid_run_keeps_checkpoint_and_resumes_exactly(db, how, status):
    db.patients_table("p_stop")
    job = db.job("stop", "/odata/Patients?n=6000&delay_ms=100", "p_stop", page_size=500, pagination_options=TOTAL,
                 checkpoint_interval_seconds=0)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 300)", (job,))
    pid = _worker_pid(db, run_id)
    t0 = time.time()
    db.q(how, {"run": run_id, "pid": pid})
    assert db.wait(run_id, timeout_s=5) == status
    assert time.time() - t0 < 1.5
    row = db.run_row(run_id)
    assert f"SELECT etl_resume_run({run_id})" in row["error_message"]
    assert db.one("SELECT count(*) FROM p_stop") == row["records_loaded"]
    assert db.one("SELECT total_records FROM etl_get_checkpoint(%s)", (run_id,)) == row["records_loaded"]
    db.q("SELECT etl_resume_run(%s)", (run_id,))
    assert db.resume_until_done(run_id)[-1] == "succeeded"
    db.assert_patients_exact("p_stop", 6000)


def test_cancelling_a_waiting_caller_stops_the_wait_not_the_run(db):
    db.patients_table("p_cw")
    job = db.job("cw", "/odata/Patients?n=3000&delay_ms=100", "p_cw", concurrency=1, page_size=500, pagination_options=TOTAL)
    caller = connect(db.dbname)
    caller_pid = caller.get_backend_pid()
    import threading
    errors = []

    def wait_call():
        try:
            caller.cursor().execute("SELECT etl_execute_job(%s, wait := true)", (job,))
        except psycopg2.Error as e:
            errors.append(e)

    t = threading.Thread(target=wait_call)
    t.start()
    time.sleep(0.5)
    run_id = db.one("SELECT max(run_id) FROM dw_etl_runs WHERE job_id = %s", (job,))
    db.q("SELECT pg_cancel_backend(%s)", (caller_pid,))
    t.join(5)
    assert errors and errors[0].pgcode == "57014"         # the wait was cancelled
    assert db.run_row(run_id)["status"] == "running"      # the run was not
    assert db.wait(run_id) == "succeeded"
    db.assert_patients_exact("p_cw", 3000)
    caller.close()


def test_two_resumes_of_one_run_never_run_at_once(db):
    db.patients_table("p_two")
    job = db.job("two", "/odata/Patients?n=2000&delay_ms=200", "p_two", concurrency=1, page_size=200)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    assert db.wait(run_id) == "timed_out"
    other = connect(db.dbname)
    outcomes = []
    import threading

    def resume(conn):
        try:
            conn.cursor().execute("SELECT etl_resume_run(%s, timeout := 60)", (run_id,))
            outcomes.append("started")
        except psycopg2.Error as e:
            outcomes.append(e.pgerror)

    threads = [threading.Thread(target=resume, args=(c,)) for c in (db.conn, other)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert outcomes.count("started") == 1, outcomes
    refusal = [o for o in outcomes if o != "started"][0]
    assert "is still running" in refusal or "already being run by another worker" in refusal
    assert db.wait(run_id) == "succeeded"
    db.assert_patients_exact("p_two", 2000)
    other.close()


def _load_both_ways(db, fixture, ddl, **job):
    """Load a fixture through the fast page reader (a plain records_path)
    and through jsonb (the same path with a filter that keeps everything,
    which the fast reader leaves to jsonb), and return both tables' rows."""
    results = []
    for name, suffix in (("fast", ""), ("jsonb", " ? (exists(@))")):
        table = f"fx_{fixture}_{name}"
        db.q(f"DROP TABLE IF EXISTS {table}")
        db.q(ddl.format(table=table))
        options = dict(job)
        options["records_path"] = options.get("records_path", "$.value[*]") + suffix
        jid = db.job(f"fx_{fixture}_{name}", f"/fixture/{fixture}", table, page_size=100,
                     pagination_options={"skip_param": "$skip"}, **{k: v for k, v in options.items()})
        run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (jid,))
        assert db.run_row(run_id)["status"] == "succeeded"
        results.append(db.q(f"SELECT * FROM {table} ORDER BY 1, 2"))
    return results


def test_fast_page_reader_agrees_with_jsonb(db):
    fast, slow = _load_both_ways(
        db, "tricky",
        "CREATE TABLE {table} (id int, name text, num numeric, flag boolean, doc jsonb, note text)")
    assert fast == slow
    rows = {r[0]: r for r in fast}
    assert rows[2][1] == 'esc "q" \\ / \b\f\n\r\t tab'
    assert rows[3][1] == "unicode ü日 😀 raw ü日😀"
    assert rows[5][1] == "duplicate key: last wins"          # {"ID": 4, "ID": 5}: the last wins
    assert rows[1][4] == {"a": [1, 2, {"c": None}], "b": 1}
    assert str(rows[1][2]) == "12.50"
    assert len(fast) == 6 and rows[6][1:] == (None, None, None, None, None)
    assert [r for r in fast if r[0] is None][0][4:] == (None, "tab\tand\nnewline")


def test_fast_page_reader_text_and_json_columns(db):
    fast, slow = _load_both_ways(db, "tricky", "CREATE TABLE {table} (id int, flag text, num text, doc text)")
    # text columns get the same text either way, but JSON containers keep
    # the API's own formatting on the fast path (jsonb normalises it)
    assert [r[:3] for r in fast] == [r[:3] for r in slow]
    assert dict((r[0], r[1]) for r in fast)[1] == "true"


def test_fast_page_reader_nested_paths_and_column_map(db):
    fast, slow = _load_both_ways(
        db, "nested", "CREATE TABLE {table} (id int, name text, city text, zip text)",
        records_path="$.data.items[*].rec",
        column_map={"id": "$.ID", "name": "$.Name", "city": "$.Meta.City", "zip": "$.Meta.Zip"})
    assert fast == slow == [(1, "a", "X", "1"), (2, "b", "Y", None)]


def test_exponents_fall_back_to_jsonb(db):
    fast, slow = _load_both_ways(db, "exponent", "CREATE TABLE {table} (id int, num numeric)")
    assert fast == slow
    assert [str(r[1]) for r in fast] == ["1000", "0.25"]


def test_fast_page_reader_arrays_agree_with_jsonb(db):
    db.q("DELETE FROM dw_etl_jobs WHERE name LIKE 'fx_arrays%'")
    fast, slow = _load_both_ways(db, "arrays", "CREATE TABLE {table} (id int, tags text[], grid int[], mixed text[])")
    assert fast == slow
    assert fast[0] == (1, ["a", 'q"uote', None, "back\\slash", "ü"], [[1, 2], [3, 4]], ["true", "1.5", '{"k": 1}'])


def test_a_load_blocked_on_a_lock_does_not_outlive_the_deadline(db):
    db.patients_table("p_locked")
    job = db.job("locked", "/odata/Patients?n=1000", "p_locked", page_size=100)
    holder = connect(db.dbname)
    holder.autocommit = False
    holder.cursor().execute("LOCK TABLE p_locked IN ACCESS EXCLUSIVE MODE")
    try:
        t0 = time.time()
        run_id = db.one("SELECT etl_execute_job(%s, timeout := 2)", (job,))
        assert db.wait(run_id, timeout_s=10) == "timed_out"
        assert time.time() - t0 < 4
        assert "SELECT etl_resume_run(" in db.run_row(run_id)["error_message"]
    finally:
        holder.rollback()
        holder.close()
    db.q("SELECT etl_resume_run(%s)", (run_id,))
    assert db.wait(run_id) == "succeeded"
    assert db.one("SELECT count(*) FROM p_locked") == 1000


def test_per_page_checkpoints_go_through_user_triggers_on_the_runs_table(db):
    """A user's trigger on dw_etl_runs sees every checkpoint write: the
    worker's direct write steps aside for tables with triggers of their own."""
    db.patients_table("p_trig")
    db.q("DROP TABLE IF EXISTS cp_writes")
    db.q("CREATE TABLE cp_writes (run_id bigint, total_records bigint)")
    db.q("""CREATE FUNCTION cp_writes_log() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.run_context->'checkpoint' IS DISTINCT FROM OLD.run_context->'checkpoint' THEN
                    INSERT INTO public.cp_writes VALUES (NEW.run_id, (NEW.run_context #>> '{checkpoint,total_records}')::bigint);
                END IF;
                RETURN NEW;
            END $$""")
    db.q("CREATE TRIGGER cp_writes_log AFTER UPDATE ON dw_etl_runs FOR EACH ROW EXECUTE FUNCTION cp_writes_log()")
    try:
        job = db.job("trig", "/odata/Patients?n=5000", "p_trig", page_size=500, pagination_options=TOTAL,
                     checkpoint_interval_seconds=0)
        run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
        assert db.run_row(run_id)["status"] == "succeeded"
        # one checkpoint write per page, each covering the pages before it
        assert [r[0] for r in db.q("SELECT total_records FROM cp_writes WHERE run_id = %s ORDER BY 1", (run_id,))] \
            == list(range(500, 5001, 500))
        segment = db.run_row(run_id)["run_context"]["segments"][-1]
        assert segment["commits"] == 9             # after pages 1..9; page 10 commits with the run's end
        assert segment["commit_ms"] >= 0
    finally:
        db.q("DROP TRIGGER IF EXISTS cp_writes_log ON dw_etl_runs")
        db.q("DROP FUNCTION IF EXISTS cp_writes_log()")
        db.q("DROP TABLE IF EXISTS cp_writes")
    db.assert_patients_exact("p_trig", 5000)


def test_per_page_checkpoints_keep_concurrent_updates_of_the_run_row(db):
    """Another session updating the run row mid-run loses nothing: the
    worker's next checkpoint write merges into the row as it now is."""
    db.patients_table("p_conc")
    job = db.job("conc", "/odata/Patients?n=6000&delay_ms=60", "p_conc", concurrency=1, page_size=500, pagination_options=TOTAL,
                 checkpoint_interval_seconds=0)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 300)", (job,))
    _worker_pid(db, run_id)
    for i in range(3):
        # each lands while the run is still loading
        assert db.q("UPDATE dw_etl_runs SET run_context = run_context || jsonb_build_object('note' || %s, 'kept') "
                    "WHERE run_id = %s AND status = 'running' RETURNING 1", (i, run_id)) == [(1,)]
        time.sleep(0.15)
    assert db.wait(run_id) == "succeeded"
    row = db.run_row(run_id)
    assert [row["run_context"].get("note%d" % i) for i in range(3)] == ["kept"] * 3
    assert row["records_loaded"] == 6000
    assert db.q("SELECT skip, page_index, total_records FROM etl_get_checkpoint(%s)", (run_id,)) == [(6000, 12, 6000)]
    assert row["run_context"]["segments"][-1]["commits"] == 11
    db.assert_patients_exact("p_conc", 6000)


def test_per_page_checkpoints_survive_an_update_of_the_run_row_in_the_same_transaction(db):
    """A trigger on the target that updates the run row runs inside the
    worker's transaction: the checkpoint write that follows must build on
    that version, not fail on the one it replaced."""
    db.patients_table("p_self")
    db.q("""CREATE OR REPLACE FUNCTION p_self_touch() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE public.dw_etl_runs SET run_context = run_context || '{"touched": true}'
                 WHERE status = 'running' AND job_id = (SELECT job_id FROM public.dw_etl_jobs WHERE name = 'self');
                RETURN NULL;
            END $$""")
    db.q("CREATE TRIGGER p_self_touch AFTER INSERT ON p_self FOR EACH STATEMENT EXECUTE FUNCTION p_self_touch()")
    job = db.job("self", "/odata/Patients?n=3000", "p_self", page_size=250, pagination_options=TOTAL,
                 checkpoint_interval_seconds=0)
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = db.run_row(run_id)
    assert (row["status"], row["error_message"]) == ("succeeded", None)
    assert row["run_context"]["touched"] is True
    assert db.q("SELECT skip, page_index, total_records FROM etl_get_checkpoint(%s)", (run_id,)) == [(3000, 12, 3000)]
    db.assert_patients_exact("p_self", 3000)
    db.q("DROP FUNCTION p_self_touch() CASCADE")


def test_per_page_checkpoint_writes_keep_the_run_rows_indexes_right(db):
    """While a snapshot is held, old versions of the run row cannot be
    cleared, so checkpoint writes move it to other pages and must index
    each new version: mid-run, an index lookup finds the row as a
    sequential scan does, and amcheck finds every visible version indexed."""
    db.patients_table("p_idx")
    db.q("CREATE EXTENSION IF NOT EXISTS amcheck")
    job = db.job("idx", "/odata/Patients?n=10000&delay_ms=80", "p_idx", page_size=250, pagination_options=TOTAL,
                 checkpoint_interval_seconds=0)
    holder = connect(db.dbname)
    holder.set_session(isolation_level="REPEATABLE READ", autocommit=False)
    holder.cursor().execute("SELECT count(*) FROM dw_etl_runs")     # holds its snapshot from here
    indexes = [r[0] for r in db.q("SELECT indexrelid::regclass::text FROM pg_index "
                                  "WHERE indrelid = 'dw_etl_runs'::regclass")]
    blocks = set()
    checks = 0
    try:
        run_id = db.one("SELECT etl_execute_job(%s, timeout := 300)", (job,))
        _worker_pid(db, run_id)
        while True:
            db.q("SET enable_seqscan = on; SET enable_indexscan = off; SET enable_bitmapscan = off")
            by_heap = db.q("SELECT ctid::text, records_loaded, status FROM dw_etl_runs WHERE run_id = %s", (run_id,))
            db.q("SET enable_seqscan = off; SET enable_indexscan = on")
            by_index = db.q("SELECT ctid::text, records_loaded, status FROM dw_etl_runs WHERE run_id = %s",
                            (run_id,))
            db.q("RESET enable_seqscan; RESET enable_indexscan; RESET enable_bitmapscan")
            if by_heap[0][2] != "running" or by_index != by_heap:
                # the worker may have written between the two reads: read again
                if by_heap[0][2] != "running":
                    break
                continue
            blocks.add(by_heap[0][0].split(",")[0])
            for index in indexes:
                db.q("SELECT bt_index_check(%s::regclass, true)", (index,))
            checks += 1
            time.sleep(0.1)
        assert db.wait(run_id) == "succeeded"
    finally:
        holder.rollback()
        holder.close()
    assert checks >= 5
    assert len(blocks) >= 2, blocks            # the row did move to other pages mid-run
    db.q("SET enable_seqscan = off")
    try:
        assert db.one("SELECT records_loaded FROM dw_etl_runs WHERE run_id = %s", (run_id,)) == 10000
    finally:
        db.q("RESET enable_seqscan")
    db.assert_patients_exact("p_idx", 10000)


def test_deleting_a_running_runs_row_stops_it_keeping_what_committed(db):
    """A user deletes a run's row mid-run: the worker stops with a clear
    message in the log, the pages it committed stay, the one in flight is
    rolled back, and the server carries on."""
    db.patients_table("p_del")
    job = db.job("del", "/odata/Patients?n=6000&delay_ms=60", "p_del", concurrency=1, page_size=500, pagination_options=TOTAL,
                 checkpoint_interval_seconds=0)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 300)", (job,))
    pid = _worker_pid(db, run_id)
    time.sleep(0.2)
    db.q("DELETE FROM dw_etl_runs WHERE run_id = %s", (run_id,))
    deadline = time.time() + 10
    while db.one("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) and time.time() < deadline:
        time.sleep(0.05)
    assert db.one("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 0
    loaded = db.one("SELECT count(*) FROM p_del")
    assert 0 < loaded < 6000 and loaded % 500 == 0        # whole pages only
    assert db.q("SELECT patientid FROM p_del ORDER BY 1") == [(i,) for i in range(1, loaded + 1)]
    log = open(os.path.join(os.environ["ETL_TEST_ROOT"], "server.log")).read()
    assert f"etl_exec run {run_id} ended failed" in log
    assert f"etl_exec run {run_id} is no longer in dw_etl_runs" in log
    assert db.one("SELECT 1") == 1
