#!/usr/bin/env bash
# The demo: from a fresh Debian 12 machine (as root), install what is
# missing, build, start a throwaway cluster and the mock API, and run a real
# job end to end: a timeout with its checkpoint, live progress, resumes until
# it succeeds, and the timeout report.  The cluster stays up afterwards for
# you to explore; `bash test/cluster.sh stop` stops it.
#
# One request at a time (concurrency 1) at ~150 ms a page: 40 pages take
# about 6 s, so the 2-second timeout always falls mid-run and it takes two
# or more resumes, on any machine.  ETL_TEST_ROOT, PGPORT and MOCK_API_PORT
# (test/env.sh) pick where it runs; ETL_NO_BUILD=1 uses the installed
# module (the suite's test_demo.py does both).
set -euo pipefail
cd "$(dirname "$0")/.."
bash test/setup.sh
bash test/cluster.sh start
. test/env.sh

psql -X -v ON_ERROR_STOP=1 -v mock="$MOCK_API" <<'SQL'
\pset footer off
\echo
\echo '=== 1. A job: 20,000 patients from the mock OData API, 500 a page (slowed to ~150 ms a page, one at a time)'
CREATE EXTENSION IF NOT EXISTS etl_exec;
DROP TABLE IF EXISTS demo_patients;
CREATE TABLE demo_patients (
    patientid int PRIMARY KEY, name text, birthdate date, score numeric(10,2), active boolean,
    createdat timestamptz, visits int, notes text, meta jsonb, loaded_at timestamptz DEFAULT now());
DELETE FROM dw_etl_runs WHERE job_id IN (SELECT job_id FROM dw_etl_jobs WHERE name = 'demo_patients');
DELETE FROM dw_etl_jobs WHERE name = 'demo_patients';
INSERT INTO dw_etl_jobs (name, url, pagination, page_size, pagination_options, target_table,
                         checkpoint_interval_seconds, concurrency)
VALUES ('demo_patients', :'mock' || '/odata/Patients?n=20000&delay_ms=150', 'offset', 500,
        '{"total_path": "$.\"@odata.count\""}', 'demo_patients', 1, 1)
RETURNING job_id, name, url \gset
\echo
\echo '=== 2. Start it with a 2-second timeout: the call returns the run_id at once'
SELECT etl_execute_job(:job_id, timeout := 2) AS run_id \gset
\echo run_id = :run_id
SELECT pg_sleep(1.5);
\echo '--- live progress while it runs (etl_run_progress):'
SELECT run_id, status, records_loaded, expected_total, percent_done, rows_per_second,
       date_trunc('second', eta) AS eta, date_trunc('second', checkpoint_age) AS checkpoint_age
FROM etl_run_progress WHERE run_id = :run_id;
SELECT etl_wait_run(:run_id) AS status_after_wait;
\echo '--- it timed out, with a checkpoint that covers exactly the rows it loaded:'
SELECT status, records_loaded, pages_fetched, error_message FROM dw_etl_runs WHERE run_id = :run_id;
SELECT skip, page_index, total_records FROM etl_get_checkpoint(:run_id);
SELECT count(*) AS rows_in_table FROM demo_patients;
\echo
\echo '=== 3. Resume it (same run_id, counters keep growing) until it succeeds'
DO $$
DECLARE
    rid bigint := (SELECT max(run_id) FROM dw_etl_runs r JOIN dw_etl_jobs j USING (job_id) WHERE j.name = 'demo_patients');
    st text := (SELECT status FROM dw_etl_runs WHERE run_id = rid);
BEGIN
    WHILE st <> 'succeeded' LOOP
        PERFORM etl_resume_run(rid, timeout := 2);
        st := etl_wait_run(rid);
        RAISE NOTICE 'resumed run %: %, % records so far', rid, st,
            (SELECT records_loaded FROM dw_etl_runs WHERE run_id = rid);
    END LOOP;
END
$$;
\echo
\echo '=== 4. The result: every record exactly once'
SELECT status, records_loaded, pages_fetched, resume_count, duration_ms,
       jsonb_array_length(run_context -> 'segments') AS segments
FROM dw_etl_runs WHERE run_id = :run_id;
SELECT count(*) AS rows, count(DISTINCT patientid) AS distinct_ids FROM demo_patients;
SELECT patientid, name, birthdate, score, active, createdat FROM demo_patients ORDER BY patientid LIMIT 5;
\echo '--- the timeout report for the job:'
SELECT name, runs, succeeded, timeouts, current_timeout_seconds, risk FROM etl_job_timeout_report WHERE job_id = :job_id;
SQL

echo
echo "The cluster and mock API are still running. Connect with:"
echo "  psql -h $PGHOST -p $PGPORT -U postgres"
echo "Stop them with: bash test/cluster.sh stop"
