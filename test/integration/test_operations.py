"""Operating etl_exec: notifications, progress and timeout views, one run
per job, roles and permissions, pg_cron scheduling, incremental
parameters, history pruning, dumps and upgrades."""
import difflib
import json
import os
import re
import select
import subprocess
import time

import psycopg2
import pytest

from conftest import MOCK_API, connect, fresh_database

TOTAL = {"total_path": '$."@odata.count"'}
PGBIN = os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin")


def test_run_end_is_notified(db):
    db.patients_table("o_notify")
    job = db.job("onotify", "/odata/Patients?n=200", "o_notify", page_size=100)
    listener = connect(db.dbname)
    listener.cursor().execute("LISTEN etl_exec_run")
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    deadline = time.time() + 5
    payloads = []
    while time.time() < deadline and not payloads:
        select.select([listener], [], [], 0.5)
        listener.poll()
        payloads += [json.loads(n.payload) for n in listener.notifies if n.channel == "etl_exec_run"]
    listener.close()
    assert {"run_id": run_id, "job_id": job, "status": "succeeded", "records_loaded": 200} in payloads


def test_interrupted_run_is_notified_when_found(db):
    db.q("DELETE FROM dw_etl_jobs WHERE name = 'onotify2'")
    db.patients_table("o_notify2")
    job = db.job("onotify2", "/odata/Patients?n=200", "o_notify2", page_size=100)
    # a run whose worker is gone (no lock held): seeded as 'running'
    run_id = db.one("""INSERT INTO dw_etl_runs (job_id, status, started_by, segment_started_at)
                       VALUES (%s, 'running', current_user::regrole, now()) RETURNING run_id""", (job,))
    listener = connect(db.dbname)
    listener.cursor().execute("LISTEN etl_exec_run")
    assert db.one("SELECT etl_wait_run(%s, 0)", (run_id,)) == "interrupted"
    time.sleep(0.2)
    listener.poll()
    payloads = [json.loads(n.payload) for n in listener.notifies]
    listener.close()
    assert {"run_id": run_id, "job_id": job, "status": "interrupted", "records_loaded": 0} in payloads


def test_progress_view_and_worker_in_pg_stat_activity(db):
    db.patients_table("o_prog")
    job = db.job("oprog", "/odata/Patients?n=4000&delay_ms=100", "o_prog", concurrency=1, page_size=200, pagination_options=TOTAL)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 60)", (job,))
    time.sleep(1.5)
    rows = db.q("""SELECT job_name, status, records_loaded, pages_fetched, expected_total, percent_done,
                          rows_per_second, elapsed > interval '1 s', eta IS NOT NULL, retries
                   FROM etl_run_progress WHERE run_id = %s""", (run_id,))
    assert len(rows) == 1
    name, status, records, pages, expected, percent, rate, elapsed_ok, has_eta, retries = rows[0]
    assert (name, status, expected, retries) == ("oprog", "running", 4000, 0)
    assert records > 0 and records % 200 == 0 and pages == records // 200
    assert float(percent) == pytest.approx(100.0 * records / 4000, abs=0.1)
    assert 500 < float(rate) < 4000        # ~2000 rows/s: 200 rows per ~100 ms page
    assert elapsed_ok and has_eta
    act = db.q("""SELECT backend_type, application_name, query FROM pg_stat_activity
                  WHERE application_name = %s""", (f"etl_exec run {run_id}",))
    assert act and act[0][0] == "etl_exec worker"
    assert act[0][2].startswith(f"etl_exec run {run_id}: ")
    db.q("SELECT etl_cancel_run(%s)", (run_id,))
    assert db.wait(run_id) == "cancelled"
    assert db.q("SELECT * FROM etl_run_progress WHERE run_id = %s", (run_id,)) == []


def test_timeout_report_figures(db):
    db.patients_table("o_rep")
    job = db.job("orep", "/odata/Patients?n=10", "o_rep", page_size=10, timeout_seconds=100)
    # seeded history: durations 10..200 s (20 successes) and two runs with timeouts
    for i in range(1, 21):
        db.q("""INSERT INTO dw_etl_runs (job_id, status, started_by, duration_ms, finished_at)
                VALUES (%s, 'succeeded', current_user::regrole, %s, now())""", (job, i * 10000))
    db.q("""INSERT INTO dw_etl_runs (job_id, status, started_by, duration_ms, run_context)
            VALUES (%s, 'succeeded', current_user::regrole, 150000,
                    '{"segments": [{"status": "timed_out"}, {"status": "timed_out"}, {"status": "succeeded"}]}')""",
         (job,))
    row = db.q("""SELECT runs, succeeded, timeouts, p50_seconds, p95_seconds, max_seconds,
                         current_timeout_seconds, recommended_timeout_seconds, risk
                  FROM etl_job_timeout_report WHERE job_id = %s""", (job,))[0]
    # the last 20 successes: 20..200 s and 150 s (the oldest, 10 s, drops out)
    runs, succeeded, timeouts, p50, p95, mx, current, recommended, risk = row
    assert (runs, succeeded, timeouts, current) == (21, 21, 2, 100)
    assert float(mx) == 200.0
    assert float(p50) == pytest.approx(115.0, abs=0.1)
    assert float(p95) == pytest.approx(190.5, abs=0.1)
    assert recommended == 286                      # ceil(1.5 * 190.5)
    assert risk.startswith("at risk")
    # timeout 0 means: use the recommendation
    db.q("UPDATE dw_etl_jobs SET timeout_seconds = 0 WHERE job_id = %s", (job,))
    assert db.one("SELECT current_timeout_seconds FROM etl_job_timeout_report WHERE job_id = %s", (job,)) == 286
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["timeout_seconds"] == 286


def test_one_active_run_per_job_unless_allowed(db):
    db.patients_table("o_one")
    job = db.job("oone", "/odata/Patients?n=5000&delay_ms=200", "o_one", page_size=100)
    first = db.one("SELECT etl_execute_job(%s, timeout := 60)", (job,))
    with pytest.raises(psycopg2.Error) as exc:
        db.q("SELECT etl_execute_job(%s)", (job,))
    assert f"already has an active run {first}" in exc.value.pgerror
    assert exc.value.pgcode == "55006"
    with pytest.raises(psycopg2.Error, match="is still running"):
        db.q("SELECT etl_resume_run(%s)", (first,))
    db.q("UPDATE dw_etl_jobs SET allow_concurrent_runs = true WHERE job_id = %s", (job,))
    second = db.one("SELECT etl_execute_job(%s, timeout := 60)", (job,))
    assert second != first
    for r in (first, second):
        db.q("SELECT etl_cancel_run(%s)", (r,))
        assert db.wait(r) == "cancelled"


@pytest.fixture
def roles(db):
    """A login role that is an etl_operator, and a NOLOGIN role it can SET ROLE to."""
    for r in ("o_login", "o_team", "o_other"):
        db.q(f"DROP OWNED BY {r}") if db.one("SELECT count(*) FROM pg_roles WHERE rolname = %s", (r,)) else None
        db.q(f"DROP ROLE IF EXISTS {r}")
    db.q("CREATE ROLE o_team NOLOGIN IN ROLE etl_operator")
    db.q("CREATE ROLE o_login LOGIN IN ROLE o_team")
    db.q("CREATE ROLE o_other LOGIN IN ROLE etl_operator")
    db.q("GRANT CREATE, USAGE ON SCHEMA public TO o_team")
    yield
    for r in ("o_login", "o_team", "o_other"):
        db.q(f"DROP OWNED BY {r}")
        db.q(f"DROP ROLE {r}")


def test_runs_act_as_the_calling_role(db, roles):
    db.patients_table("o_role")
    db.q("ALTER TABLE o_role ADD COLUMN written_by text DEFAULT current_user")
    db.q("GRANT SELECT, INSERT ON o_role TO o_team")
    job = db.job("orole", "/odata/Patients?n=300&delay_ms=100", "o_role", page_size=100)
    conn = connect(db.dbname, user="o_login")
    cur = conn.cursor()
    cur.execute("SET ROLE o_team")          # a NOLOGIN role reached by SET ROLE
    cur.execute("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    run_id = cur.fetchone()[0]
    cur.execute("SELECT etl_wait_run(%s)", (run_id,))
    conn.close()
    row = db.run_row(run_id)
    assert row["started_by"] == "o_team"
    # resumed from a superuser session (as pg_cron would): still acts as o_team
    db.resume_until_done(run_id)
    assert db.q("SELECT DISTINCT written_by FROM o_role") == [("o_team",)]
    assert db.one("SELECT count(*) FROM o_role") == 300


def test_a_role_without_insert_gets_a_failed_run_and_nothing_loaded(db, roles):
    db.patients_table("o_noins")
    db.q("GRANT SELECT ON o_noins TO o_team")
    job = db.job("onoins", "/odata/Patients?n=300", "o_noins", page_size=100)
    conn = connect(db.dbname, user="o_login")
    cur = conn.cursor()
    with pytest.raises(psycopg2.Error) as exc:
        cur.execute("SELECT etl_execute_job(%s, wait := true)", (job,))
    conn.close()
    assert exc.value.pgcode == "ET001"
    assert "permission denied for table o_noins" in exc.value.pgerror
    assert db.one("SELECT count(*) FROM o_noins") == 0


def test_resuming_someone_elses_run_needs_membership(db, roles):
    db.patients_table("o_mine")
    db.q("GRANT SELECT, INSERT ON o_mine TO o_team")
    job = db.job("omine", "/odata/Patients?n=2000&delay_ms=300", "o_mine", concurrency=1, page_size=200)
    conn = connect(db.dbname, user="o_login")
    cur = conn.cursor()
    cur.execute("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    run_id = cur.fetchone()[0]
    conn.close()
    assert db.wait(run_id) == "timed_out"
    other = connect(db.dbname, user="o_other")
    with pytest.raises(psycopg2.Error) as exc:
        other.cursor().execute("SELECT etl_resume_run(%s)", (run_id,))
    assert "permission denied to resume etl_exec run" in exc.value.pgerror and "o_login" in exc.value.pgerror
    with pytest.raises(psycopg2.Error, match="permission denied"):
        other.cursor().execute("SELECT etl_cancel_run(%s)", (run_id,))
    # etl_resume_pending as o_other skips runs it may not resume
    cur = other.cursor()
    cur.execute("SELECT count(*) FROM etl_resume_pending()")
    assert cur.fetchone()[0] == 0
    other.close()
    assert db.run_row(run_id)["status"] == "timed_out"


def test_etl_resume_pending_picks_what_it_should(db):
    db.q("DROP TABLE IF EXISTS o_pend")
    db.q("CREATE TABLE o_pend (patientid int, name text)")     # several runs load it
    job = db.job("opend", "/odata/Patients?n=1000&delay_ms=300", "o_pend", concurrency=1, page_size=100,
                 checkpoint_interval_seconds=0, allow_concurrent_runs=True)
    timed_out = db.one("""SELECT etl_execute_job(%s, timeout := 1, parameters := '{"k": 1}')""", (job,))
    cancelled = db.one("""SELECT etl_execute_job(%s, timeout := 60, parameters := '{"k": 2}')""", (job,))
    time.sleep(0.5)
    db.q("SELECT etl_cancel_run(%s)", (cancelled,))
    superseded = db.one("""SELECT etl_execute_job(%s, timeout := 1, parameters := '{"k": 3}')""", (job,))
    for r in (timed_out, cancelled, superseded):
        db.wait(r)
    newer = db.one("""SELECT etl_execute_job(%s, timeout := 1, parameters := '{"k": 3}')""", (job,))
    db.wait(newer)
    statuses = {r: db.run_row(r)["status"] for r in (timed_out, cancelled, superseded, newer)}
    assert statuses == {timed_out: "timed_out", cancelled: "cancelled", superseded: "timed_out", newer: "timed_out"}
    ours = {timed_out, cancelled, superseded, newer}
    started = set(r[0] for r in db.q("SELECT etl_resume_pending()"))
    assert started & ours == {timed_out, newer}           # not cancelled, not the superseded run
    for r in started:
        db.wait(r)
    started = set(r[0] for r in db.q("SELECT etl_resume_pending(include_cancelled := true)"))
    assert cancelled in started and superseded not in started
    for r in started:
        db.wait(r)
    # the resume limit: a run resumed max_resumes times is left alone
    db.q("UPDATE dw_etl_runs SET status = 'timed_out', resume_count = 3 WHERE run_id = %s", (timed_out,))
    assert timed_out not in [r[0] for r in db.q("SELECT etl_resume_pending(max_resumes := 3)")]
    assert timed_out in [r[0] for r in db.q("SELECT etl_resume_pending(max_resumes := 4)")]
    db.wait(timed_out)


def test_incremental_parameters_are_resolved_once_and_frozen(db):
    db.q("DROP TABLE IF EXISTS o_incr")
    db.q("CREATE TABLE o_incr (patientid int PRIMARY KEY, createdat timestamptz, name text)")
    job = db.job("oincr", "/odata/Patients?n=100&since={max:createdat}&last={last_success_started_at}",
                 "o_incr", page_size=50, load_mode="upsert", key_columns="{patientid}")
    with pytest.raises(psycopg2.Error) as exc:
        db.q("SELECT etl_execute_job(%s)", (job,))
    assert "URL placeholder {max:createdat} has no value yet: the target table is empty" in exc.value.pgerror
    db.q("""UPDATE dw_etl_jobs SET parameters = '{"max:createdat": "2000-01-01T00:00:00Z",
            "last_success_started_at": "never"}' WHERE job_id = %s""", (job,))
    first = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(first)["parameters"] == {"max:createdat": "2000-01-01T00:00:00Z",
                                              "last_success_started_at": "never"}
    second = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    params = db.run_row(second)["parameters"]
    # record 100 was created at 2020-01-01 + 6100 s
    assert params["max:createdat"] == "2020-01-01T01:41:40Z"
    started = db.one("SELECT to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
                     "FROM dw_etl_runs WHERE run_id = %s", (first,))
    assert params["last_success_started_at"] == started
    # the worker asked the API exactly that (URL-encoded)
    assert db.run_row(second)["status"] == "succeeded"


def test_prune_runs(db):
    db.patients_table("o_prune")
    job = db.job("oprune", "/odata/Patients?n=10", "o_prune", page_size=10)
    old = db.one("""INSERT INTO dw_etl_runs (job_id, status, started_by, started_at, finished_at)
                    VALUES (%s, 'succeeded', current_user::regrole, now() - interval '200 days',
                            now() - interval '200 days') RETURNING run_id""", (job,))
    recent = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.one("SELECT etl_prune_runs()") >= 1         # 90 days by default
    left = [r[0] for r in db.q("SELECT run_id FROM dw_etl_runs WHERE job_id = %s", (job,))]
    assert old not in left and recent in left
    with pytest.raises(psycopg2.Error, match="must not be negative"):
        db.q("SELECT etl_prune_runs(interval '-1 day')")


def test_upgrade_path_from_0_1_0(db):
    fresh_database("it_upgrade")
    conn = connect("it_upgrade")
    cur = conn.cursor()
    cur.execute("CREATE EXTENSION etl_exec VERSION '0.1.0'")
    cur.execute("SELECT to_regprocedure('etl_prune_runs(interval)')")
    assert cur.fetchone()[0] is None
    cur.execute("ALTER EXTENSION etl_exec UPDATE TO '0.2.0'")
    cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'etl_exec'")
    assert cur.fetchone()[0] == "0.2.0"
    cur.execute("SELECT to_regprocedure('etl_prune_runs(interval)') IS NOT NULL")
    assert cur.fetchone()[0]
    conn.close()


def extension_schema(dbname):
    """The extension's objects as pg_dump --binary-upgrade writes them (it
    dumps an extension's members, with their privileges and comments),
    without what differs between any two databases (oids, xids, the
    restrict key)."""
    out = subprocess.run([f"{PGBIN}/pg_dump", "--binary-upgrade", "--schema-only", "-d", dbname],
                         check=True, capture_output=True, text=True).stdout
    keep = [line for line in out.splitlines()
            if not re.search(r"binary_upgrade|relfrozenxid|^WHERE oid = |^UPDATE pg_catalog\.pg_class|"
                             r"^\\(un)?restrict |^--", line)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(keep))


def test_a_fresh_install_and_an_upgraded_one_have_the_same_catalog(db):
    cur = db.conn.cursor()
    cur.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'etl_exec'")
    current = cur.fetchone()[0]
    fresh_database("it_catalog_fresh")
    fresh_database("it_catalog_upgraded")
    conn = connect("it_catalog_fresh")
    conn.cursor().execute("CREATE EXTENSION etl_exec")
    conn.close()
    conn = connect("it_catalog_upgraded")
    c = conn.cursor()
    c.execute("CREATE EXTENSION etl_exec VERSION '0.1.0'")
    c.execute("ALTER EXTENSION etl_exec UPDATE")
    c.execute("SELECT extversion FROM pg_extension WHERE extname = 'etl_exec'")
    assert c.fetchone()[0] == current
    conn.close()
    # the fresh install runs the one script of the current version, not the chain
    assert os.path.isfile(os.path.join(os.path.dirname(__file__), "..", "..", "sql", f"etl_exec--{current}.sql"))
    fresh = extension_schema("it_catalog_fresh")
    upgraded = extension_schema("it_catalog_upgraded")
    assert "CREATE FUNCTION public.etl_execute_job(" in fresh and "GRANT SELECT ON TABLE public.dw_etl_runs" in fresh
    if fresh != upgraded:
        diff = "\n".join(difflib.unified_diff(upgraded.splitlines(), fresh.splitlines(),
                                               "upgraded", "fresh", lineterm="", n=2))
        raise AssertionError("a fresh install differs from an upgraded one:\n" + diff[:6000])


def test_upgrade_from_0_4_0_keeps_jobs_with_today_s_behaviour(db):
    fresh_database("it_upgrade_05")
    conn = connect("it_upgrade_05")
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE EXTENSION etl_exec VERSION '0.4.0'")
    cur.execute("""INSERT INTO dw_etl_jobs (name, url, target_table, column_map)
                   VALUES ('kept', 'http://127.0.0.1:1/x', 't', '{"a": "$.A"}')""")
    cur.execute("ALTER EXTENSION etl_exec UPDATE TO '0.5.0'")
    cur.execute("SELECT name, column_map, on_new_keys, on_bad_record, max_rejected FROM dw_etl_jobs")
    assert cur.fetchall() == [("kept", {"a": "$.A"}, "ignore", "fail", None)]
    cur.execute("""UPDATE dw_etl_jobs SET column_map = '{"a": "{param:p}"}' RETURNING column_map""")
    assert cur.fetchone()[0] == {"a": "{param:p}"}
    cur.execute("SELECT to_regclass('dw_etl_rejects') IS NOT NULL, "
                "to_regprocedure('etl_infer_table(int, jsonb, int)') IS NOT NULL")
    assert cur.fetchone() == (True, True)
    conn.close()


def test_upgrade_from_0_5_0_checks_job_text_without_running_it_and_hides_other_roles_runs(db):
    fresh_database("it_upgrade_06")
    conn = connect("it_upgrade_06")
    cur = conn.cursor()
    cur.execute("CREATE EXTENSION etl_exec VERSION '0.5.0'")
    cur.execute("CREATE TABLE t (id int)")
    # 0.5.0 ran the query to check it, and let through what failed for another reason than syntax
    cur.execute("""INSERT INTO dw_etl_jobs (name, url, target_table, partitions)
                   VALUES ('old', %s, 't', '{"query": "WITH d AS (DELETE FROM t RETURNING id) SELECT id FROM d"}')
                   RETURNING job_id""", (MOCK_API + "/odata/Patients?n=5",))
    job = cur.fetchone()[0]
    cur.execute("ALTER EXTENSION etl_exec UPDATE TO '0.6.0'")
    with pytest.raises(psycopg2.Error) as exc:
        cur.execute("SELECT etl_execute_job(%s)", (job,))
    assert "partitions query is not one SELECT: a WITH query that is not a SELECT changes data" in exc.value.pgerror
    cur.execute("SELECT relname, relrowsecurity FROM pg_class "
                "WHERE relname IN ('dw_etl_runs', 'dw_etl_run_partitions', 'dw_etl_rejects') ORDER BY 1")
    assert cur.fetchall() == [("dw_etl_rejects", True), ("dw_etl_run_partitions", True), ("dw_etl_runs", True)]
    cur.execute("SELECT etl_settings() ->> 'max_concurrency', etl_settings() ->> 'max_bytes_in_flight'")
    assert cur.fetchone() == ("16", str(512 * 1024 * 1024))
    conn.close()
    admin = connect()
    admin.cursor().execute("DROP DATABASE it_upgrade_06 WITH (FORCE)")
    admin.close()


def test_dump_and_restore_keep_jobs_and_secrets(db, tmp_path):
    db.q("DELETE FROM dw_etl_secrets WHERE name = 'dump_secret'")
    db.q("INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES ('dump_secret', 'v', '{a.example}')")
    db.patients_table("o_dump")
    job = db.job("odump", "/odata/Patients?n=10", "o_dump", page_size=10,
                 headers={"Authorization": "Bearer {secret:dump_secret}"})
    dump = tmp_path / "db.dump"
    subprocess.run([f"{PGBIN}/pg_dump", "-Fc", "-f", str(dump), db.dbname], check=True)
    fresh_database("it_restored")
    subprocess.run([f"{PGBIN}/pg_restore", "-d", "it_restored", str(dump)], check=True)
    conn = connect("it_restored")
    cur = conn.cursor()
    cur.execute("SELECT name, headers->>'Authorization' FROM dw_etl_jobs WHERE job_id = %s", (job,))
    assert cur.fetchone() == ("odump", "Bearer {secret:dump_secret}")
    cur.execute("SELECT value, allowed_hosts FROM dw_etl_secrets WHERE name = 'dump_secret'")
    assert cur.fetchone() == ("v", ["a.example"])
    # the job_id sequence came along: a new job does not collide
    cur.execute("""INSERT INTO dw_etl_jobs (name, url, target_table) VALUES ('after_restore', %s, 'o_dump')
                   RETURNING job_id""", (MOCK_API + "/odata/Patients",))
    assert cur.fetchone()[0] > job
    conn.close()


def test_resuming_a_dead_run_never_hangs(db):
    """A run whose worker died (no etl_wait_run looked at it yet) is resumed
    straight away by etl_resume_pending and by etl_resume_run."""
    db.q("DROP TABLE IF EXISTS o_dead")
    db.q("CREATE TABLE o_dead (patientid int, name text)")     # both runs load it
    job = db.job("odead", "/odata/Patients?n=500", "o_dead", page_size=100)
    dead = []
    for _ in range(2):
        dead.append(db.one("""INSERT INTO dw_etl_runs (job_id, status, started_by, segment_started_at, worker_pid,
                                                     run_context)
                              VALUES (%s, 'running', current_user::regrole, now(), 999999,
                                      jsonb_build_object('paging', _etl_paging_of(%s)))
                              RETURNING run_id""", (job, job)))
    conn = connect(db.dbname)
    conn.autocommit = False               # one transaction, as pg_cron runs it
    cur = conn.cursor()
    cur.execute("SET statement_timeout = '20s'")
    cur.execute("SELECT etl_resume_pending()")
    started = sorted(r[0] for r in cur.fetchall())
    conn.commit()
    assert dead[1] in started and dead[0] not in started   # the older one is superseded
    assert db.wait(dead[1]) == "succeeded"
    segments = db.run_row(dead[1])["run_context"]["segments"]
    assert segments[0]["status"] == "interrupted"          # the worker recorded it
    cur.execute("SELECT etl_resume_run(%s)", (dead[0],))
    conn.commit()
    assert db.wait(dead[0]) == "succeeded"
    conn.close()
    assert db.one("SELECT count(*) FROM o_dead") == 1000


def test_a_callers_search_path_cannot_hijack_the_worker(db, roles):
    db.q("DROP SCHEMA IF EXISTS evil CASCADE")
    db.q("CREATE SCHEMA evil AUTHORIZATION o_team")
    db.patients_table("o_path")
    db.q("GRANT SELECT, INSERT ON o_path TO o_team")
    job = db.job("opath", "/odata/Patients?n=300", "o_path", page_size=100)
    conn = connect(db.dbname, user="o_login")
    cur = conn.cursor()
    cur.execute("SET ROLE o_team")
    # functions that act normally for their owner but strike when a superuser
    # resolves them: the worker runs as one, and must never see them
    for name, args, rettype, call in (("to_regclass", "t text", "regclass", "pg_catalog.to_regclass(t)"),
                                      ("md5", "t text", "text", "pg_catalog.md5(t)"),
                                      ("now", "", "timestamptz", "pg_catalog.now()")):
        cur.execute(f"""CREATE FUNCTION evil.{name}({args}) RETURNS {rettype} LANGUAGE plpgsql AS
                        $$BEGIN
                            IF current_setting('is_superuser') = 'on' THEN
                                RAISE EXCEPTION 'hijacked by evil.{name}';
                            END IF;
                            RETURN {call};
                        END$$""")
    cur.execute("SET search_path = evil, pg_catalog, public")
    cur.execute("SELECT etl_execute_job(%s, wait := true)", (job,))
    run_id = cur.fetchone()[0]
    conn.close()
    assert db.run_row(run_id)["status"] == "succeeded"
    assert db.one("SELECT count(*) FROM o_path") == 300
    db.q("DROP SCHEMA evil CASCADE")


def test_internal_functions_check_for_themselves(db, roles):
    db.patients_table("o_int")
    db.q("GRANT SELECT, INSERT ON o_int TO o_team")
    job = db.job("oint", "/odata/Patients?n=1000&delay_ms=300", "o_int", concurrency=1, page_size=100)
    owner = connect(db.dbname, user="o_login")
    cur = owner.cursor()
    cur.execute("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    victim = cur.fetchone()[0]
    owner.close()
    assert db.wait(victim) == "timed_out"
    other = connect(db.dbname, user="o_other")
    cur = other.cursor()
    # internal functions are not executable by operators at all (0.3.0)
    with pytest.raises(psycopg2.Error, match="permission denied for function _etl_start_worker"):
        cur.execute("SELECT _etl_start_worker('resume', %s, %s, 60, false, '{}')", (job, victim))
    with pytest.raises(psycopg2.Error, match="permission denied for function _etl_signal_run"):
        cur.execute("SELECT _etl_signal_run(%s)", (victim,))
    # and the entry points check for themselves
    with pytest.raises(psycopg2.Error, match="permission denied to resume etl_exec run"):
        cur.execute("SELECT etl_resume_run(%s)", (victim,))
    with pytest.raises(psycopg2.Error, match="permission denied for table dw_etl_jobs"):
        cur.execute("UPDATE dw_etl_jobs SET url = 'http://evil.example/' WHERE job_id = %s", (job,))
    other.close()
    assert db.run_row(victim)["status"] == "timed_out"


def test_a_hostile_deeply_nested_body_fails_the_run_not_the_server(db):
    db.q("DROP TABLE IF EXISTS o_deep")
    db.q("CREATE TABLE o_deep (id int, tags text[])")
    job = db.job("odeep", "/fixture/deep", "o_deep", page_size=10, pagination_options={"skip_param": "$skip"})
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    assert "stack depth limit exceeded" in db.run_row(run_id)["error_message"]
    assert db.one("SELECT 1") == 1


def test_row_level_security_applies_to_loads(db, roles):
    db.patients_table("o_rls")
    db.q("GRANT SELECT, INSERT ON o_rls TO o_team")
    db.q("ALTER TABLE o_rls ENABLE ROW LEVEL SECURITY")
    db.q("CREATE POLICY small_ids ON o_rls FOR ALL TO o_team USING (true) WITH CHECK (patientid <= 150)")
    job = db.job("orls", "/odata/Patients?n=300", "o_rls", page_size=100)
    conn = connect(db.dbname, user="o_login")
    cur = conn.cursor()
    cur.execute("SET ROLE o_team")
    cur.execute("SELECT etl_execute_job(%s)", (job,))
    run_id = cur.fetchone()[0]
    conn.close()
    assert db.wait(run_id) == "failed"
    row = db.run_row(run_id)
    assert "new row violates row-level security policy" in row["error_message"]
    assert db.one("SELECT count(*) FROM o_rls") == 100      # page 1 passed the policy
