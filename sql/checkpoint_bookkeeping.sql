--
-- checkpoint_bookkeeping: etl_get_checkpoint, the refusals of
-- etl_resume_run, stale runs reported interrupted, etl_cancel_run on a
-- finished run, refused resumes after job changes, and
-- etl_recommended_timeout -- on runs seeded directly into dw_etl_runs.
-- One real run against the mock API at the end.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS etl_exec CASCADE;
DROP TABLE IF EXISTS cb_patients;
DROP TABLE IF EXISTS cb_dummy;
CREATE EXTENSION etl_exec;
RESET client_min_messages;

CREATE TABLE cb_dummy (patientid int, name text);

INSERT INTO dw_etl_jobs (job_id, name, url, target_table, page_size)
VALUES (1, 'cb_offset', 'http://127.0.0.1:18080/odata/Patients?n=250', 'cb_dummy', 100);
INSERT INTO dw_etl_jobs (job_id, name, url, target_table, pagination, page_size, pagination_options, records_path)
VALUES (2, 'cb_cursor', 'http://127.0.0.1:18080/cursor/Patients?n=250', 'cb_dummy', 'cursor', 100,
        '{"next_path": "$.meta.next_cursor", "cursor_param": "cursor", "limit_param": "limit"}', '$.data[*]'),
       (3, 'cb_next_link', 'http://127.0.0.1:18080/nextlink/Patients?n=250', 'cb_dummy', 'next_link', 100,
        '{"next_path": "$.\"@odata.nextLink\""}', '$.value[*]');

-- the paging settings a checkpoint is valid for
SELECT job_id, _etl_paging_of(job_id) AS paging FROM dw_etl_jobs ORDER BY job_id;

-- Seeded runs (explicit run_ids, all started by the current role):
--  101 timed_out with an offset checkpoint     102 failed, no checkpoint
--  103 succeeded with a checkpoint             104 a dry run that timed out
--  105 'running' but no worker holds its lock  106 'queued' (waiting for a worker slot)
--  107 cursor checkpoint                       108 next-link checkpoint
--  109 cancelled                             110 failed after a checkpoint
-- (checkpoint.total_records counts the records loaded so far; a dry run loads none)
INSERT INTO dw_etl_runs (run_id, job_id, status, dry_run, started_by, finished_at, duration_ms,
                         records_loaded, pages_fetched, error_message, worker_pid, run_context)
VALUES
 (101, 1, 'timed_out', false, current_user::regrole, now(), 300000, 200, 2,
  'etl_exec run 101 timed out after 300 s', NULL,
  jsonb_build_object('checkpoint', '{"skip": 200, "page_index": 2, "total_records": 200,
                                     "saved_at": "2024-05-01T12:00:00+00:00"}'::jsonb,
                     'paging', _etl_paging_of(1))),
 (102, 1, 'failed', false, current_user::regrole, now(), 150, 0, 0,
  'HTTP 404 from http://127.0.0.1:18080/odata/Patients', NULL, '{}'),
 (103, 1, 'succeeded', false, current_user::regrole, now(), 2000, 250, 4, NULL, NULL,
  jsonb_build_object('checkpoint', '{"skip": 250, "page_index": 4, "total_records": 250,
                                     "saved_at": "2024-05-01T12:05:00+00:00"}'::jsonb,
                     'paging', _etl_paging_of(1))),
 (104, 1, 'timed_out', true, current_user::regrole, now(), 1000, 0, 1, NULL, NULL,
  jsonb_build_object('checkpoint', '{"skip": 100, "page_index": 1, "total_records": 0,
                                     "saved_at": "2024-05-01T12:10:00+00:00"}'::jsonb)),
 (105, 1, 'running', false, current_user::regrole, NULL, 0, 100, 1, NULL, 999999,
  jsonb_build_object('checkpoint', '{"skip": 100, "page_index": 1, "total_records": 100,
                                     "saved_at": "2024-05-01T12:15:00+00:00"}'::jsonb,
                     'paging', _etl_paging_of(1))),
 (106, 1, 'queued', false, current_user::regrole, NULL, 0, 0, 0, NULL, NULL, '{}'),
 (107, 2, 'interrupted', false, current_user::regrole, now(), 5000, 100, 1, NULL, NULL,
  jsonb_build_object('checkpoint', '{"skip": 100, "page_index": 1, "total_records": 100, "cursor": "Y3Vyc29yOjEwMA",
                                     "saved_at": "2024-05-01T12:20:00+00:00"}'::jsonb,
                     'paging', _etl_paging_of(2))),
 (108, 3, 'timed_out', false, current_user::regrole, now(), 5000, 100, 1, NULL, NULL,
  jsonb_build_object('checkpoint', '{"skip": 100, "page_index": 1, "total_records": 100,
                                     "next_url": "http://127.0.0.1:18080/nextlink/Patients?$skiptoken=abc&$top=100",
                                     "saved_at": "2024-05-01T12:25:00+00:00"}'::jsonb,
                     'paging', _etl_paging_of(3))),
 (109, 1, 'cancelled', false, current_user::regrole, now(), 5000, 100, 1, NULL, NULL,
  jsonb_build_object('checkpoint', '{"skip": 100, "page_index": 1, "total_records": 100,
                                     "saved_at": "2024-05-01T12:30:00+00:00"}'::jsonb,
                     'paging', _etl_paging_of(1))),
 (110, 1, 'failed', false, current_user::regrole, now(), 5000, 100, 1,
  'HTTP 500 from http://127.0.0.1:18080/odata/Patients?n=250&%24skip=100&%24top=100', NULL,
  jsonb_build_object('checkpoint', '{"skip": 100, "page_index": 1, "total_records": 100,
                                     "saved_at": "2024-05-01T12:35:00+00:00"}'::jsonb,
                     'paging', _etl_paging_of(1)));

SET TimeZone = 'UTC';

--
-- etl_get_checkpoint: one row with the checkpoint, or no row
--
SELECT * FROM etl_get_checkpoint(101);
SELECT count(*) AS rows FROM etl_get_checkpoint(101);
SELECT count(*) AS rows FROM etl_get_checkpoint(102);
SELECT * FROM etl_get_checkpoint(102);
SELECT * FROM etl_get_checkpoint(106);
SELECT * FROM etl_get_checkpoint(107);
SELECT * FROM etl_get_checkpoint(108);
SELECT * FROM etl_get_checkpoint(109);
-- the column names and types of its result
SELECT pg_get_function_result('etl_get_checkpoint(bigint)'::regprocedure);

--
-- etl_resume_run refuses what cannot be resumed (and changes nothing)
--
SELECT count(*) AS runs, sum(resume_count) AS resumes FROM dw_etl_runs;
-- a succeeded run: the hint names etl_execute_job
SELECT etl_resume_run(103);
-- a failed run without a checkpoint: the hint names etl_retry_run
SELECT etl_resume_run(102);
-- a dry run
SELECT etl_resume_run(104);
SELECT count(*) AS runs, sum(resume_count) AS resumes FROM dw_etl_runs;
SELECT run_id, status, resume_count, records_loaded FROM dw_etl_runs WHERE run_id IN (102, 103, 104) ORDER BY run_id;

--
-- A 'running' run whose worker is gone is reported interrupted
--
SELECT etl_wait_run(105, 0);
SELECT run_id, status, worker_pid, finished_at IS NOT NULL AS finished, error_message,
       run_context -> 'segments' -> -1 ->> 'status' AS last_segment_status,
       run_context -> 'segments' -> -1 ->> 'records_loaded' AS last_segment_records
FROM dw_etl_runs WHERE run_id = 105;
-- its checkpoint is kept
SELECT skip, page_index, total_records FROM etl_get_checkpoint(105);

-- etl_cancel_run takes a queued run out of the queue: cancelled, never started (0.3.0:
-- a queued run waits for a worker slot; it has no worker to lose)
SELECT etl_cancel_run(106);
SELECT run_id, status, error_message FROM dw_etl_runs WHERE run_id = 106;

--
-- etl_cancel_run on a finished run: false, with a NOTICE
--
SELECT etl_cancel_run(101);
SELECT etl_cancel_run(103);
SELECT etl_cancel_run(109);
SELECT run_id, status FROM dw_etl_runs WHERE run_id IN (101, 103, 109) ORDER BY run_id;
-- etl_wait_run on a finished run returns its status at once
SELECT etl_wait_run(101) AS run_101, etl_wait_run(103) AS run_103, etl_wait_run(110, 0) AS run_110;

--
-- Resuming after the job's paging settings changed is refused, with the differences
--
UPDATE dw_etl_jobs SET page_size = 50, url = 'http://127.0.0.1:18080/odata/Patients?n=300' WHERE job_id = 1;
SELECT etl_resume_run(101);
UPDATE dw_etl_jobs SET records_path = '$.items[*]', pagination = 'page' WHERE job_id = 1;
SELECT etl_resume_run(101);
-- etl_execute_job(resume_from_checkpoint) picks the job's latest resumable run with a
-- checkpoint (110) and refuses too
SELECT etl_execute_job(1, resume_from_checkpoint := true);
-- settings that are not paging settings do not matter (here: they are back, but the job is disabled)
UPDATE dw_etl_jobs SET page_size = 100, url = 'http://127.0.0.1:18080/odata/Patients?n=250',
                       records_path = '$.value[*]', pagination = 'offset', max_retries = 7,
                       enabled = false
WHERE job_id = 1;
SELECT _etl_json_differences((SELECT run_context -> 'paging' FROM dw_etl_runs WHERE run_id = 101),
                             _etl_paging_of(1), 'checkpoint has', 'job now has') AS differences;

--
-- Resuming a run of a disabled job is refused
--
SELECT etl_resume_run(101);
-- a failed run with a checkpoint gets past the checkpoint check, to the same refusal
SELECT etl_resume_run(110);
UPDATE dw_etl_jobs SET enabled = false WHERE job_id = 2;
SELECT etl_resume_run(107);
SELECT etl_execute_job(2, resume_from_checkpoint := true);
SELECT etl_retry_run(101);
SELECT etl_execute_job(1, resume_from_checkpoint := true);

-- nothing was resumed or started by any of the refused calls
SELECT run_id, job_id, status, resume_count, records_loaded, pages_fetched
FROM dw_etl_runs ORDER BY run_id;

--
-- etl_recommended_timeout: p95 of the last 20 successful runs, x 1.5, within [60 s, 1 day]
--
INSERT INTO dw_etl_jobs (job_id, name, url, target_table)
VALUES (10, 'timing_short', 'http://127.0.0.1:18080/odata/Patients', 'cb_dummy'),
       (11, 'timing_long', 'http://127.0.0.1:18080/odata/Patients', 'cb_dummy'),
       (12, 'timing_huge', 'http://127.0.0.1:18080/odata/Patients', 'cb_dummy'),
       (13, 'timing_last20', 'http://127.0.0.1:18080/odata/Patients', 'cb_dummy');

-- no history, then two successful runs: too few to recommend
SELECT etl_recommended_timeout(10) IS NULL AS no_history;
INSERT INTO dw_etl_runs (run_id, job_id, status, started_by, duration_ms)
VALUES (201, 10, 'succeeded', current_user::regrole, 10000),
       (202, 10, 'succeeded', current_user::regrole, 20000);
SELECT etl_recommended_timeout(10) IS NULL AS two_runs;
-- failed, timed-out and dry runs do not count
INSERT INTO dw_etl_runs (run_id, job_id, status, dry_run, started_by, duration_ms)
VALUES (203, 10, 'failed', false, current_user::regrole, 999000),
       (204, 10, 'timed_out', false, current_user::regrole, 999000),
       (205, 10, 'succeeded', true, current_user::regrole, 999000);
SELECT etl_recommended_timeout(10) IS NULL AS still_two_runs;
-- a third: p95 of 10, 20, 30 s is 29 s; x 1.5 = 44 s, raised to the 60 s floor
INSERT INTO dw_etl_runs (run_id, job_id, status, started_by, duration_ms)
VALUES (206, 10, 'succeeded', current_user::regrole, 30000);
SELECT etl_recommended_timeout(10) AS short_jobs;

-- 100, 200, 300 s: p95 290 s x 1.5 = 435 s
INSERT INTO dw_etl_runs (run_id, job_id, status, started_by, duration_ms)
VALUES (211, 11, 'succeeded', current_user::regrole, 100000),
       (212, 11, 'succeeded', current_user::regrole, 200000),
       (213, 11, 'succeeded', current_user::regrole, 300000);
SELECT etl_recommended_timeout(11) AS long_jobs;

-- capped at a day
INSERT INTO dw_etl_runs (run_id, job_id, status, started_by, duration_ms)
VALUES (221, 12, 'succeeded', current_user::regrole, 100000000),
       (222, 12, 'succeeded', current_user::regrole, 100000000),
       (223, 12, 'succeeded', current_user::regrole, 100000000);
SELECT etl_recommended_timeout(12) AS huge_jobs;

-- only the last 20 successful runs count: 5 old slow ones (1000 s), then 20 of 100 s
INSERT INTO dw_etl_runs (run_id, job_id, status, started_by, duration_ms)
SELECT 300 + i, 13, 'succeeded', current_user::regrole, CASE WHEN i <= 5 THEN 1000000 ELSE 100000 END
FROM generate_series(1, 25) AS i;
SELECT etl_recommended_timeout(13) AS last_20;
-- one more slow run is within the last 20 again: p95 of (19 x 100 s, 1 x 1000 s) = 145 s -> 218 s
INSERT INTO dw_etl_runs (run_id, job_id, status, started_by, duration_ms)
VALUES (326, 13, 'succeeded', current_user::regrole, 1000000);
SELECT etl_recommended_timeout(13) AS last_20_with_a_slow_one;

SELECT etl_recommended_timeout(999) IS NULL AS unknown_job;

--
-- One real run against the mock API: 250 records, pages of 100
--
CREATE TABLE cb_patients (patientid int PRIMARY KEY, name text, birthdate date, score numeric,
                          active boolean, visits int, notes text);
INSERT INTO dw_etl_jobs (job_id, name, url, target_table, page_size)
VALUES (20, 'cb_real', 'http://127.0.0.1:18080/odata/Patients?n=250', 'cb_patients', 100);
SELECT etl_execute_job(20, wait := true) AS real_run \gset
-- no total_path: offset paging stops at the empty 4th page, which counts as fetched
SELECT status, records_loaded, pages_fetched, resume_count, error_message, dry_run,
       finished_at IS NOT NULL AS finished, duration_ms > 0 AS has_duration
FROM dw_etl_runs WHERE run_id = :real_run;
SELECT skip, page_index, total_records, saved_at IS NOT NULL AS has_saved_at, next_url, cursor
FROM etl_get_checkpoint(:real_run);
SELECT run_context -> 'paging' = _etl_paging_of(20) AS paging_recorded,
       jsonb_array_length(run_context -> 'segments') AS segments,
       run_context -> 'segments' -> 0 ->> 'status' AS segment_status
FROM dw_etl_runs WHERE run_id = :real_run;
SELECT count(*), count(DISTINCT patientid), min(patientid), max(patientid), sum(patientid)
FROM cb_patients;
SELECT * FROM cb_patients WHERE patientid IN (1, 3, 5, 250) ORDER BY patientid;
SELECT etl_wait_run(:real_run) AS status_after_wait;
SELECT etl_cancel_run(:real_run) AS cancelled;
SELECT etl_resume_run(:real_run);

--
-- Clean up
--
DROP EXTENSION etl_exec CASCADE;
DROP TABLE cb_patients;
DROP TABLE cb_dummy;
