--
-- jobs_validation: the tables CREATE EXTENSION makes, their defaults, and
-- the trigger that refuses a dw_etl_jobs row that contradicts itself.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS etl_exec CASCADE;
CREATE EXTENSION etl_exec;
RESET client_min_messages;

--
-- The tables, with SPEC's column names and defaults
--
SELECT table_name FROM information_schema.tables
WHERE table_schema = 'public' AND table_name LIKE 'dw\_etl\_%'
ORDER BY table_name;

SELECT column_name, data_type, is_nullable, column_default
FROM information_schema.columns
WHERE table_schema = 'public' AND table_name = 'dw_etl_jobs'
ORDER BY ordinal_position;

SELECT column_name, data_type, is_nullable, column_default
FROM information_schema.columns
WHERE table_schema = 'public' AND table_name = 'dw_etl_runs'
ORDER BY ordinal_position;

SELECT column_name, data_type, is_nullable, column_default
FROM information_schema.columns
WHERE table_schema = 'public' AND table_name = 'dw_etl_secrets'
ORDER BY ordinal_position;

-- primary keys and the unique name
SELECT conrelid::regclass AS table_name, conname, contype, pg_get_constraintdef(oid) AS definition
FROM pg_constraint
WHERE conrelid IN ('dw_etl_jobs'::regclass, 'dw_etl_runs'::regclass, 'dw_etl_secrets'::regclass)
  AND contype IN ('p', 'u', 'f')
ORDER BY 1::text, conname;

--
-- A job with only name, url and target_table gets the defaults
--
INSERT INTO dw_etl_jobs (name, url, target_table)
VALUES ('minimal', 'http://127.0.0.1:18080/odata/Patients', 'patients')
RETURNING job_id;

\x on
SELECT job_id, name, enabled, url, pagination, page_size, pagination_options, records_path,
       headers, target_table, column_map, load_mode, key_columns, timeout_seconds,
       checkpoint_interval_seconds, max_retries, request_timeout_ms, parameters,
       allow_concurrent_runs, created_at IS NOT NULL AS has_created_at
FROM dw_etl_jobs WHERE name = 'minimal';
\x off

--
-- Every refusal of the validation trigger (each one changes nothing)
--

-- unknown pagination style
INSERT INTO dw_etl_jobs (name, url, target_table, pagination)
VALUES ('bad_style', 'http://127.0.0.1:18080/odata/Patients', 'patients', 'offsets');

-- non-positive page size
INSERT INTO dw_etl_jobs (name, url, target_table, page_size)
VALUES ('bad_page_size_0', 'http://127.0.0.1:18080/odata/Patients', 'patients', 0);
INSERT INTO dw_etl_jobs (name, url, target_table, page_size)
VALUES ('bad_page_size_neg', 'http://127.0.0.1:18080/odata/Patients', 'patients', -5);

-- only http:// and https:// URLs
INSERT INTO dw_etl_jobs (name, url, target_table)
VALUES ('bad_url_ftp', 'ftp://127.0.0.1/Patients', 'patients');
INSERT INTO dw_etl_jobs (name, url, target_table)
VALUES ('bad_url_no_scheme', '127.0.0.1:18080/odata/Patients', 'patients');
INSERT INTO dw_etl_jobs (name, url, target_table)
VALUES ('bad_url_no_host', 'http:///odata/Patients', 'patients');

-- unknown load mode
INSERT INTO dw_etl_jobs (name, url, target_table, load_mode)
VALUES ('bad_load_mode', 'http://127.0.0.1:18080/odata/Patients', 'patients', 'merge');

-- upsert without key columns (NULL and empty array)
INSERT INTO dw_etl_jobs (name, url, target_table, load_mode)
VALUES ('upsert_null_keys', 'http://127.0.0.1:18080/odata/Patients', 'patients', 'upsert');
INSERT INTO dw_etl_jobs (name, url, target_table, load_mode, key_columns)
VALUES ('upsert_empty_keys', 'http://127.0.0.1:18080/odata/Patients', 'patients', 'upsert', '{}');

-- pagination_options: not an object, unknown key, wrong types
INSERT INTO dw_etl_jobs (name, url, target_table, pagination_options)
VALUES ('bad_options_array', 'http://127.0.0.1:18080/odata/Patients', 'patients', '["skip_param"]');
INSERT INTO dw_etl_jobs (name, url, target_table, pagination_options)
VALUES ('bad_option_typo', 'http://127.0.0.1:18080/odata/Patients', 'patients', '{"skip_parm": "$skip"}');
INSERT INTO dw_etl_jobs (name, url, target_table, pagination, pagination_options)
VALUES ('bad_first_page', 'http://127.0.0.1:18080/paged/Patients', 'patients', 'page', '{"first_page": "1"}');
INSERT INTO dw_etl_jobs (name, url, target_table, pagination_options)
VALUES ('bad_stop_on_short', 'http://127.0.0.1:18080/odata/Patients', 'patients', '{"stop_on_short_page": "true"}');
INSERT INTO dw_etl_jobs (name, url, target_table, pagination_options)
VALUES ('bad_skip_param', 'http://127.0.0.1:18080/odata/Patients', 'patients', '{"skip_param": 0}');

-- invalid jsonpath in next_path / total_path
INSERT INTO dw_etl_jobs (name, url, target_table, pagination, pagination_options)
VALUES ('bad_next_path', 'http://127.0.0.1:18080/nextlink/Patients', 'patients', 'next_link',
        '{"next_path": "$.@odata.nextLink"}');
INSERT INTO dw_etl_jobs (name, url, target_table, pagination_options)
VALUES ('bad_total_path', 'http://127.0.0.1:18080/odata/Patients', 'patients', '{"total_path": "$[["}');

-- invalid jsonpath in records_path: the column's type refuses it
INSERT INTO dw_etl_jobs (name, url, target_table, records_path)
VALUES ('bad_records_path', 'http://127.0.0.1:18080/odata/Patients', 'patients', '$.value[');

-- column_map: not an object, empty, a value that is not a string, an invalid jsonpath
INSERT INTO dw_etl_jobs (name, url, target_table, column_map)
VALUES ('bad_map_array', 'http://127.0.0.1:18080/odata/Patients', 'patients', '["PatientId"]');
INSERT INTO dw_etl_jobs (name, url, target_table, column_map)
VALUES ('bad_map_empty', 'http://127.0.0.1:18080/odata/Patients', 'patients', '{}');
INSERT INTO dw_etl_jobs (name, url, target_table, column_map)
VALUES ('bad_map_number', 'http://127.0.0.1:18080/odata/Patients', 'patients', '{"id": 1}');
INSERT INTO dw_etl_jobs (name, url, target_table, column_map)
VALUES ('bad_map_path', 'http://127.0.0.1:18080/odata/Patients', 'patients',
        '{"id": "$.PatientId", "city": "$.address..city"}');

-- headers: an object of strings only
INSERT INTO dw_etl_jobs (name, url, target_table, headers)
VALUES ('bad_headers_array', 'http://127.0.0.1:18080/odata/Patients', 'patients', '["Accept: application/json"]');
INSERT INTO dw_etl_jobs (name, url, target_table, headers)
VALUES ('bad_headers_value', 'http://127.0.0.1:18080/odata/Patients', 'patients', '{"X-Page": 1}');

-- parameters: an object only
INSERT INTO dw_etl_jobs (name, url, target_table, parameters)
VALUES ('bad_parameters', 'http://127.0.0.1:18080/odata/Patients', 'patients', '[1, 2]');

-- negative / zero limits
INSERT INTO dw_etl_jobs (name, url, target_table, timeout_seconds)
VALUES ('bad_timeout', 'http://127.0.0.1:18080/odata/Patients', 'patients', -1);
INSERT INTO dw_etl_jobs (name, url, target_table, checkpoint_interval_seconds)
VALUES ('bad_checkpoint_interval', 'http://127.0.0.1:18080/odata/Patients', 'patients', -1);
INSERT INTO dw_etl_jobs (name, url, target_table, max_retries)
VALUES ('bad_max_retries', 'http://127.0.0.1:18080/odata/Patients', 'patients', -1);
INSERT INTO dw_etl_jobs (name, url, target_table, request_timeout_ms)
VALUES ('bad_request_timeout', 'http://127.0.0.1:18080/odata/Patients', 'patients', 0);
-- concurrency: 1..64 (NULL: the setting)
INSERT INTO dw_etl_jobs (name, url, target_table, concurrency)
VALUES ('bad_concurrency_0', 'http://127.0.0.1:18080/odata/Patients', 'patients', 0);
INSERT INTO dw_etl_jobs (name, url, target_table, concurrency)
VALUES ('bad_concurrency_65', 'http://127.0.0.1:18080/odata/Patients', 'patients', 65);

-- cursor pagination needs next_path
INSERT INTO dw_etl_jobs (name, url, target_table, pagination, pagination_options)
VALUES ('bad_cursor', 'http://127.0.0.1:18080/cursor/Patients', 'patients', 'cursor', '{"cursor_param": "cursor"}');

-- target_table must be table or schema.table
INSERT INTO dw_etl_jobs (name, url, target_table)
VALUES ('bad_target_3_parts', 'http://127.0.0.1:18080/odata/Patients', 'a.b.c');
INSERT INTO dw_etl_jobs (name, url, target_table)
VALUES ('bad_target_empty', 'http://127.0.0.1:18080/odata/Patients', '');
INSERT INTO dw_etl_jobs (name, url, target_table)
VALUES ('bad_target_space', 'http://127.0.0.1:18080/odata/Patients', 'my table');
INSERT INTO dw_etl_jobs (name, url, target_table)
VALUES ('bad_target_semicolon', 'http://127.0.0.1:18080/odata/Patients', 'x; DROP TABLE y');

-- none of the refused rows was written
SELECT count(*) AS jobs FROM dw_etl_jobs;

--
-- An UPDATE that would make a valid job invalid is refused; the row stays as it was
--
UPDATE dw_etl_jobs SET page_size = 0 WHERE name = 'minimal';
UPDATE dw_etl_jobs SET load_mode = 'upsert' WHERE name = 'minimal';
UPDATE dw_etl_jobs SET url = 'file:///etc/passwd', pagination = 'page' WHERE name = 'minimal';
UPDATE dw_etl_jobs SET pagination_options = '{"next_path": "$$"}' WHERE name = 'minimal';
SELECT name, url, pagination, page_size, load_mode, key_columns, pagination_options
FROM dw_etl_jobs WHERE name = 'minimal';

-- a valid UPDATE goes through
UPDATE dw_etl_jobs SET page_size = 250, load_mode = 'upsert', key_columns = ARRAY['PatientId']
WHERE name = 'minimal';
SELECT name, page_size, load_mode, key_columns FROM dw_etl_jobs WHERE name = 'minimal';

--
-- Valid edge cases are accepted
--

-- schema-qualified and quoted target names
INSERT INTO dw_etl_jobs (name, url, target_table)
VALUES ('target_qualified', 'http://127.0.0.1:18080/odata/Patients', 'staging.patients'),
       ('target_quoted', 'http://127.0.0.1:18080/odata/Patients', '"Patient Data"'),
       ('target_quoted_qualified', 'https://127.0.0.1:18080/odata/Patients', '"My Schema"."odd ""name"""'),
       ('target_spaced_dot', 'HTTPS://127.0.0.1:18080/odata/Patients', 'staging . patients');

-- timeout_seconds = 0 (recommended from history) and zero checkpoint interval / retries
INSERT INTO dw_etl_jobs (name, url, target_table, timeout_seconds, checkpoint_interval_seconds,
                         max_retries, request_timeout_ms)
VALUES ('zero_limits', 'http://127.0.0.1:18080/odata/Patients', 'patients', 0, 0, 0, 1);

-- all six pagination styles with the options they need
INSERT INTO dw_etl_jobs (name, url, target_table, pagination, page_size, pagination_options, records_path)
VALUES ('style_none', 'http://127.0.0.1:18080/single/Patients', 'patients', 'none', 1000,
        '{}', '$.value[*]'),
       ('style_offset', 'http://127.0.0.1:18080/array/Patients', 'patients', 'offset', 100,
        '{"skip_param": "offset", "limit_param": "limit", "stop_on_short_page": true}', '$[*]'),
       ('style_page', 'http://127.0.0.1:18080/paged/Patients', 'patients', 'page', 100,
        '{"page_param": "page", "limit_param": "per_page", "first_page": 0, "total_path": "$.total"}', '$.items[*]'),
       ('style_next_link', 'http://127.0.0.1:18080/fhir/Patient', 'patients', 'next_link', 100,
        '{"limit_param": "_count", "next_path": "$.link[*] ? (@.relation == \"next\").url"}', '$.entry[*].resource'),
       ('style_link_header', 'http://127.0.0.1:18080/linked/Patients', 'patients', 'link_header', 100,
        '{"page_param": "page", "limit_param": "per_page"}', '$[*]'),
       ('style_cursor', 'http://127.0.0.1:18080/cursor/Patients', 'patients', 'cursor', 100,
        '{"next_path": "$.meta.next_cursor", "cursor_param": "cursor", "limit_param": "limit"}', '$.data[*]');

-- upsert with keys, replace mode, a column map, headers and parameters
INSERT INTO dw_etl_jobs (name, url, target_table, load_mode, key_columns, column_map, headers, parameters)
VALUES ('upsert_with_keys', 'http://127.0.0.1:18080/odata/Patients?n={count}', 'patients', 'upsert',
        ARRAY['patient_id'], '{"patient_id": "$.PatientId", "city": "$.Meta.bucket"}',
        '{"Authorization": "Bearer {secret:api_token}", "Accept": "application/json"}',
        '{"count": 250}'),
       ('replace_mode', 'http://127.0.0.1:18080/odata/Patients', 'patients', 'replace',
        NULL, NULL, '{}', '{}');

SELECT name, pagination, page_size, pagination_options, records_path, target_table, load_mode, key_columns
FROM dw_etl_jobs ORDER BY job_id;

--
-- Unique names; explicit job ids
--
INSERT INTO dw_etl_jobs (name, url, target_table)
VALUES ('minimal', 'http://127.0.0.1:18080/odata/Patients', 'other');

INSERT INTO dw_etl_jobs (job_id, name, url, target_table)
VALUES (1000, 'explicit_id', 'http://127.0.0.1:18080/odata/Patients', 'patients')
RETURNING job_id, name;

-- an explicit id that is taken is refused
INSERT INTO dw_etl_jobs (job_id, name, url, target_table)
VALUES (1000, 'explicit_id_again', 'http://127.0.0.1:18080/odata/Patients', 'patients');

SELECT count(*) AS jobs FROM dw_etl_jobs;

--
-- Key columns must be names; first_page a whole number >= 0; headers one
-- line each with token names (no header injection)
--
INSERT INTO dw_etl_jobs (name, url, target_table, load_mode, key_columns)
VALUES ('bad_null_key', 'http://127.0.0.1:18080/odata/Patients', 'patients', 'upsert', '{NULL}');
INSERT INTO dw_etl_jobs (name, url, target_table, load_mode, key_columns)
VALUES ('bad_empty_key', 'http://127.0.0.1:18080/odata/Patients', 'patients', 'upsert', '{id,""}');
INSERT INTO dw_etl_jobs (name, url, target_table, pagination, pagination_options)
VALUES ('bad_first_page_frac', 'http://127.0.0.1:18080/paged/Patients', 'patients', 'page', '{"first_page": 1.5}');
INSERT INTO dw_etl_jobs (name, url, target_table, pagination, pagination_options)
VALUES ('bad_first_page_neg', 'http://127.0.0.1:18080/paged/Patients', 'patients', 'page', '{"first_page": -1}');
INSERT INTO dw_etl_jobs (name, url, target_table, headers)
VALUES ('bad_header_crlf', 'http://127.0.0.1:18080/odata/Patients', 'patients', '{"X-A": "a\r\nX-Injected: 1"}');
INSERT INTO dw_etl_jobs (name, url, target_table, headers)
VALUES ('bad_header_name', 'http://127.0.0.1:18080/odata/Patients', 'patients', '{"X A:": "a"}');
INSERT INTO dw_etl_jobs (name, url, target_table, pagination, pagination_options, headers)
VALUES ('ok_first_page_0', 'http://127.0.0.1:18080/paged/Patients', 'patients', 'page', '{"first_page": 0}',
        '{"Authorization": "Bearer {secret:token}", "X-Api-Key": "{secret:key}"}')
RETURNING name, pagination_options, headers;
SELECT count(*) AS jobs FROM dw_etl_jobs;

--
-- Clean up
--
DROP EXTENSION etl_exec CASCADE;
