"""Scheduling with real pg_cron (Debian's postgresql-PG_MAJOR-cron, loaded by
test/cluster.sh; skipped where that package does not exist): one schedule
starts a job that times out, a second one resumes it with
etl_resume_pending(), and the run succeeds with exactly the source's
records, with no hand-holding in between.  pg_cron schedules by the minute,
so this takes one to two minutes."""
import os
import time

import pytest

from conftest import connect


def skip_without_pg_cron():
    """pg_cron must be installed and preloaded (test/cluster.sh preloads it
    when postgresql-PG_MAJOR-cron is installed)."""
    conn = connect()
    try:
        with conn.cursor() as cur:
            cur.execute("""SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_cron'),
                                  'pg_cron' = ANY (string_to_array(replace(current_setting('shared_preload_libraries'),
                                                                           ' ', ''), ','))""")
            available, preloaded = cur.fetchone()
    finally:
        conn.close()
    if not (available and preloaded):
        major = os.environ.get("PG_MAJOR", "?")
        pytest.skip(f"pg_cron is not installed for PostgreSQL {major} "
                    f"(postgresql-{major}-cron is not packaged here): the pg_cron test is skipped")


def test_pg_cron_starts_a_job_and_resumes_it_until_done(db):
    skip_without_pg_cron()
    db.patients_table("cron_p")
    # 6 pages at 400 ms: 2.4 s, more than the 2 s timeout the schedule gives
    job = db.job("cronjob", "/odata/Patients?n=3000&delay_ms=400", "cron_p", concurrency=1, page_size=500,
                 checkpoint_interval_seconds=0, pagination_options={"total_path": '$."@odata.count"'})
    cron = connect()          # pg_cron lives in the 'postgres' database
    cur = cron.cursor()
    cur.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
    cur.execute("SELECT cron.unschedule(jobname) FROM cron.job WHERE jobname LIKE 'etl_test_%'")
    cur.execute("SELECT cron.schedule_in_database('etl_test_start', '* * * * *', %s, %s)",
                (f"SELECT etl_execute_job({job}, timeout := 2)", db.dbname))
    cur.execute("SELECT cron.schedule_in_database('etl_test_resume', '* * * * *', 'SELECT etl_resume_pending()', %s)",
                (db.dbname,))
    try:
        deadline = time.time() + 75
        run_id = None
        while time.time() < deadline and run_id is None:
            run_id = db.one("SELECT max(run_id) FROM dw_etl_runs WHERE job_id = %s", (job,))
            time.sleep(0.5)
        assert run_id, "pg_cron did not start the job"
        # a nightly job starts once: take the start schedule away
        cur.execute("SELECT cron.unschedule('etl_test_start')")
        assert db.wait(run_id) == "timed_out"
        first = db.run_row(run_id)
        assert first["timeout_seconds"] == 2 and first["started_by"] == "postgres"
        deadline = time.time() + 80
        while time.time() < deadline and db.run_row(run_id)["status"] != "succeeded":
            time.sleep(1)
        row = db.run_row(run_id)
        assert row["status"] == "succeeded", row
        assert row["resume_count"] >= 1 and row["started_by"] == "postgres"
        db.assert_patients_exact("cron_p", 3000)
        cur.execute("""SELECT count(*) FROM cron.job_run_details d JOIN cron.job j USING (jobid)
                       WHERE j.jobname = 'etl_test_resume' AND d.status = 'succeeded'""")
        assert cur.fetchone()[0] >= 1
    finally:
        cur.execute("SELECT cron.unschedule(jobname) FROM cron.job WHERE jobname LIKE 'etl_test_%'")
        cron.close()
