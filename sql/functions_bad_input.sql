--
-- functions_bad_input: every SQL function refuses bad input with a clear
-- error, and a refused call changes nothing (no run is created).  Then the
-- privileges: EXECUTE revoked from PUBLIC, granted to etl_operator;
-- dw_etl_secrets readable by no ordinary role.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS etl_exec CASCADE;
DROP TABLE IF EXISTS bi_target;
DROP ROLE IF EXISTS regress_nobody;
DROP ROLE IF EXISTS regress_operator;
DROP ROLE IF EXISTS regress_run_owner;
CREATE EXTENSION etl_exec;
RESET client_min_messages;

-- the role that "started" the seeded run below
CREATE ROLE regress_run_owner;

CREATE TABLE bi_target (PatientId int, Name text);

INSERT INTO dw_etl_jobs (job_id, name, url, target_table, page_size)
VALUES (1, 'ok_job', 'http://127.0.0.1:18080/odata/Patients?n=10', 'bi_target', 5),
       (2, 'disabled_job', 'http://127.0.0.1:18080/odata/Patients?n=10', 'bi_target', 5),
       (3, 'no_table_job', 'http://127.0.0.1:18080/odata/Patients?n=10', 'no_such_table', 5),
       (4, 'placeholder_job', 'http://127.0.0.1:18080/odata/Patients?n=10&day={day}&site={site}', 'bi_target', 5),
       (5, 'no_table_qualified_job', 'http://127.0.0.1:18080/odata/Patients?n=10', 'no_such_schema.bi_target', 5);
UPDATE dw_etl_jobs SET enabled = false WHERE name = 'disabled_job';

SELECT count(*) AS runs_before FROM dw_etl_runs;

--
-- etl_execute_job
--

-- unknown and NULL job ids
SELECT etl_execute_job(999);
SELECT etl_execute_job(NULL);
-- a disabled job: the hint says how to enable it
SELECT etl_execute_job(2);
-- the target table does not exist
SELECT etl_execute_job(3);
SELECT etl_execute_job(5);
-- a negative timeout
SELECT etl_execute_job(1, timeout := -1);
SELECT etl_execute_job(1, timeout := -1, resume_from_checkpoint := true);
-- parameters that are not a JSON object
SELECT etl_execute_job(1, parameters := '[1,2]');
SELECT etl_execute_job(1, parameters := '"2024-01-01"');
-- placeholders in the URL without a value (listed in order, null counts as missing)
SELECT etl_execute_job(4);
SELECT etl_execute_job(4, parameters := '{"day": "2024-01-01"}');
SELECT etl_execute_job(4, parameters := '{"day": "2024-01-01", "site": null}');
SELECT etl_execute_job(4, dry_run := true);

-- resuming with parameters that differ from the run it would continue
INSERT INTO dw_etl_runs (run_id, job_id, status, parameters, started_by, run_context, records_loaded, pages_fetched)
VALUES (10, 4, 'timed_out', '{"day": "2024-01-01", "site": "north"}', 'regress_run_owner'::regrole,
        jsonb_build_object('checkpoint', jsonb_build_object('skip', 5, 'page_index', 1, 'total_records', 10,
                                                            'saved_at', '2024-01-01 00:00:00+00'),
                           'paging', _etl_paging_of(4)),
        5, 1);
SELECT etl_execute_job(4, resume_from_checkpoint := true,
                       parameters := '{"day": "2024-01-02", "site": "north", "extra": 1}');

SELECT count(*) AS runs_after_execute_job FROM dw_etl_runs;

--
-- The run functions on an unknown (and NULL) run id
--
SELECT etl_resume_run(999);
SELECT etl_resume_run(NULL);
SELECT etl_retry_run(999);
SELECT etl_retry_run(NULL);
SELECT * FROM etl_get_checkpoint(999);
SELECT * FROM etl_get_checkpoint(NULL);
SELECT etl_cancel_run(999);
SELECT etl_cancel_run(NULL);
SELECT etl_wait_run(999);
SELECT etl_wait_run(999, 0);
SELECT etl_wait_run(NULL);
-- a negative wait
SELECT etl_wait_run(10, -1);
SELECT etl_wait_run(999, -1);

SELECT count(*) AS runs_after FROM dw_etl_runs;
SELECT run_id, job_id, status, records_loaded, pages_fetched, resume_count FROM dw_etl_runs ORDER BY run_id;

--
-- Privileges
--
SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = 'etl_operator';

CREATE ROLE regress_nobody;
CREATE ROLE regress_operator IN ROLE etl_operator;

SELECT f AS function,
       has_function_privilege('regress_nobody', f, 'EXECUTE') AS nobody,
       has_function_privilege('regress_operator', f, 'EXECUTE') AS operator
FROM unnest(ARRAY['etl_execute_job(int,int,boolean,boolean,jsonb,boolean)',
                  'etl_resume_run(bigint,int,boolean)',
                  'etl_retry_run(bigint,boolean,boolean)',
                  'etl_get_checkpoint(bigint)',
                  'etl_cancel_run(bigint)',
                  'etl_wait_run(bigint,int)',
                  'etl_resume_pending(int,boolean,boolean)',
                  'etl_recommended_timeout(int)']) AS f;

SELECT t AS table_name,
       has_table_privilege('regress_nobody', t, 'SELECT') AS nobody_select,
       has_table_privilege('regress_operator', t, 'SELECT') AS operator_select,
       has_table_privilege('regress_operator', t, 'INSERT') AS operator_insert
FROM unnest(ARRAY['dw_etl_jobs', 'dw_etl_runs', 'dw_etl_secrets']) AS t;

-- a secret must say where it may go (host, or host:port)
INSERT INTO dw_etl_secrets (name, value) VALUES ('api_token', 'do-not-show');
INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES ('api_token', 'do-not-show', '{"api.example.com/path"}');
INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES ('api_token', 'do-not-show', '{api.example.com:8443}');

SET ROLE regress_nobody;
SELECT * FROM dw_etl_secrets;
SELECT name FROM dw_etl_jobs;
SELECT etl_execute_job(1);
SELECT etl_wait_run(10, 0);
RESET ROLE;

SET ROLE regress_operator;
SELECT * FROM dw_etl_secrets;
SELECT value FROM dw_etl_secrets WHERE name = 'api_token';
-- an operator sees the jobs, but not the runs of roles it is not a member of ...
SELECT job_id, name FROM dw_etl_jobs ORDER BY job_id;
SELECT run_id, status FROM dw_etl_runs ORDER BY run_id;
-- ... but cannot resume, retry or cancel a run another role started
SELECT etl_resume_run(10);
SELECT etl_retry_run(10);
SELECT etl_cancel_run(10);
-- bad input is still refused first
SELECT etl_execute_job(2);
RESET ROLE;

SELECT count(*) AS runs_at_end FROM dw_etl_runs;

--
-- Clean up
--
DROP EXTENSION etl_exec CASCADE;
DROP TABLE bi_target;
DROP ROLE regress_nobody;
DROP ROLE regress_operator;
DROP ROLE regress_run_owner;
