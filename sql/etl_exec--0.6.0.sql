/*
 * etl_exec--0.6.0.sql: the whole schema of etl_exec 0.6.0, for a fresh
 * install (CREATE EXTENSION etl_exec).  Installs made with an earlier
 * version reach the same catalog through the upgrade scripts
 * (etl_exec--0.1.0.sql, then etl_exec--A--B.sql up to 0.6.0);
 * test/integration/test_operations.py compares the two (pg_dump).
 *
 * Tables are made as they grew, feature by feature (their ALTERs keep the
 * column order an upgraded install has); each function and view appears
 * once, in its 0.6.0 form.
 */

\echo Use "CREATE EXTENSION etl_exec" to load this file. \quit

-- Members of etl_operator may run, resume, cancel and watch jobs.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'etl_operator') THEN
        CREATE ROLE etl_operator NOLOGIN;
    END IF;
END
$$;

------------------------------------------------------------------------------
-- Tables
------------------------------------------------------------------------------
CREATE TABLE dw_etl_jobs (
    job_id                      serial PRIMARY KEY,
    name                        text NOT NULL UNIQUE,
    enabled                     boolean NOT NULL DEFAULT true,
    url                         text NOT NULL,
    pagination                  text NOT NULL DEFAULT 'offset',
    page_size                   int NOT NULL DEFAULT 1000,
    pagination_options          jsonb NOT NULL DEFAULT '{}',
    records_path                jsonpath NOT NULL DEFAULT '$.value[*]',
    headers                     jsonb NOT NULL DEFAULT '{}',
    target_table                text NOT NULL,
    column_map                  jsonb,
    load_mode                   text NOT NULL DEFAULT 'append',
    key_columns                 text[],
    timeout_seconds             int,
    checkpoint_interval_seconds int,
    max_retries                 int,
    request_timeout_ms          int,
    parameters                  jsonb NOT NULL DEFAULT '{}',
    allow_concurrent_runs       boolean NOT NULL DEFAULT false,
    created_at                  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dw_etl_runs (
    run_id              bigserial PRIMARY KEY,
    job_id              int NOT NULL REFERENCES dw_etl_jobs (job_id),
    status              text NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled', 'interrupted')),
    parameters          jsonb NOT NULL DEFAULT '{}',
    dry_run             boolean NOT NULL DEFAULT false,
    timeout_seconds     int,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    duration_ms         bigint NOT NULL DEFAULT 0,
    records_loaded      bigint NOT NULL DEFAULT 0,
    pages_fetched       bigint NOT NULL DEFAULT 0,
    error_message       text,
    run_context         jsonb NOT NULL DEFAULT '{}',
    worker_pid          int,
    resume_count        int NOT NULL DEFAULT 0,
    -- beyond SPEC's columns:
    started_by          regrole NOT NULL,
    settings            jsonb NOT NULL DEFAULT '{}',
    segment_started_at  timestamptz,
    sqlstate            text
);

CREATE INDEX dw_etl_runs_job_idx ON dw_etl_runs (job_id, run_id);

CREATE INDEX dw_etl_runs_live_idx ON dw_etl_runs (status) WHERE status IN ('queued', 'running');

CREATE TABLE dw_etl_secrets (
    name            text PRIMARY KEY,
    value           text NOT NULL,
    allowed_hosts   text[]
);

SELECT pg_catalog.pg_extension_config_dump('dw_etl_jobs', '');

SELECT pg_catalog.pg_extension_config_dump('dw_etl_jobs_job_id_seq', '');

SELECT pg_catalog.pg_extension_config_dump('dw_etl_secrets', '');

-- Replace runs stage their pages in tables of this schema, which no one but
-- the extension's owner may create in: a run makes its own, never adopts one.
CREATE SCHEMA etl_exec_staging;

------------------------------------------------------------------------------
-- Parallel paging: dw_etl_jobs.concurrency
------------------------------------------------------------------------------
-- the most requests of a run in flight at once; NULL: etl_exec.default_concurrency
ALTER TABLE dw_etl_jobs ADD COLUMN concurrency int;

------------------------------------------------------------------------------
-- Response formats: dw_etl_jobs.format, csv_options
------------------------------------------------------------------------------
-- json (an envelope, records at records_path), ndjson (one JSON record per
-- line), csv (a header row, then one record per row); csv_options as
-- COPY's CSV options: delimiter, quote, escape, null (NULL: the defaults)
ALTER TABLE dw_etl_jobs ADD COLUMN format text NOT NULL DEFAULT 'json',
                        ADD COLUMN csv_options jsonb;

------------------------------------------------------------------------------
-- Requests: POST bodies, body paging, header cursors, response rules
------------------------------------------------------------------------------
-- method: GET or POST; body: a POST's JSON body, a template whose {name}
-- placeholders (in string values) the run's parameters fill, JSON types
-- kept; content_type: the body's; response_rules: an ordered list of
-- {"status": 404 | [500, 599] | "4xx", "body_contains": "...",
--  "action": "ignore" | "retry" | "fail"}, the first match decides
ALTER TABLE dw_etl_jobs ADD COLUMN method text NOT NULL DEFAULT 'GET',
                        ADD COLUMN body jsonb,
                        ADD COLUMN content_type text NOT NULL DEFAULT 'application/json',
                        ADD COLUMN response_rules jsonb;

------------------------------------------------------------------------------
-- A rate budget per host: dw_etl_hosts, resume_after
------------------------------------------------------------------------------
-- Limits per host, shared by every run of the server (host_budget.c): a
-- host's requests are spaced 1/max_requests_per_second apart, and no more
-- than max_concurrency are in flight at once, whatever the runs.  NULL: no
-- limit of ours (the API's own rate-limit headers are honoured anyway).
CREATE TABLE dw_etl_hosts (
    host                    text PRIMARY KEY,
    max_requests_per_second numeric,
    max_concurrency         int
);

SELECT pg_catalog.pg_extension_config_dump('dw_etl_hosts', '');

------------------------------------------------------------------------------
-- Partitions: one run, many parameter sets, one checkpoint
------------------------------------------------------------------------------
-- Where a job's parameter sets come from (NULL: one, today's behaviour):
-- {"query": "SELECT ..."}, {"dates": {...}} or {"values": {"name": [...]}}.
ALTER TABLE dw_etl_jobs ADD COLUMN partitions jsonb;

-- A run's parameter sets, frozen when it starts: a resume asks exactly the
-- same questions whatever the source table holds by then.
CREATE TABLE dw_etl_run_partitions (
    run_id          bigint NOT NULL REFERENCES dw_etl_runs (run_id) ON DELETE CASCADE,
    partition_index int NOT NULL,
    parameters      jsonb NOT NULL,
    PRIMARY KEY (run_id, partition_index)
);

------------------------------------------------------------------------------
-- Schema: etl_infer_table, etl_create_table, on_new_keys
------------------------------------------------------------------------------
-- What a run does with a record key no column of the target takes, when
-- the job maps keys by name: ignore it (as before), add a column for it
-- (the column's type from the page's values), or fail the run.
ALTER TABLE dw_etl_jobs ADD COLUMN on_new_keys text NOT NULL DEFAULT 'ignore';

------------------------------------------------------------------------------
-- Rejected records: on_bad_record, max_rejected, dw_etl_rejects
------------------------------------------------------------------------------
-- What a run does with a record whose value its column's type input or a
-- constraint refuses: 'fail' (the run fails, as before 0.5.0) or 'reject'
-- (the record goes to dw_etl_rejects, the rest of its page loads).
-- max_rejected: past that many rejects in a run, the run fails (NULL: no limit).
ALTER TABLE dw_etl_jobs ADD COLUMN on_bad_record text NOT NULL DEFAULT 'fail';

ALTER TABLE dw_etl_jobs ADD COLUMN max_rejected int;

-- The records runs rejected, committed with their page and its checkpoint
-- (a resume never rejects a record twice), deleted with their run.
-- page_index and record_index are 0-based, like the checkpoint's page_index
-- (a run with partitions counts pages per partition: partition_index);
-- record is the record as the API sent it (a csv record: header -> field).
CREATE TABLE dw_etl_rejects (
    run_id          bigint NOT NULL REFERENCES dw_etl_runs (run_id) ON DELETE CASCADE,
    job_id          int NOT NULL,
    page_index      int NOT NULL,
    record_index    int NOT NULL,
    record          jsonb NOT NULL,
    column_name     text,
    error           text NOT NULL,
    rejected_at     timestamptz NOT NULL DEFAULT now(),
    -- beyond SPEC's columns:
    partition_index int,
    sqlstate        text NOT NULL
);

CREATE INDEX dw_etl_rejects_run_idx ON dw_etl_rejects (run_id);

------------------------------------------------------------------------------
-- Functions
------------------------------------------------------------------------------

------------------------------------------------------------------------------
-- C internals (not for direct use)
------------------------------------------------------------------------------
CREATE FUNCTION _etl_settings() RETURNS jsonb
    AS 'MODULE_PATHNAME', 'etl_settings_snapshot' LANGUAGE C STABLE;

CREATE FUNCTION _etl_run_is_live(run_id bigint) RETURNS boolean
    AS 'MODULE_PATHNAME', 'etl_run_is_live_sql' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION _etl_wait_run_end(run_id bigint, timeout_ms int) RETURNS boolean
    AS 'MODULE_PATHNAME', 'etl_wait_run_end' LANGUAGE C VOLATILE;

CREATE FUNCTION _etl_fresh_run(run_id bigint) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'etl_fresh_run' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION _etl_signal_run(run_id bigint) RETURNS boolean
    AS 'MODULE_PATHNAME', 'etl_signal_run' LANGUAGE C VOLATILE STRICT;

-- a checkpoint counts records of one format, and pages of one request: a
-- resume after the format, the method or the body changed is refused (GET
-- json jobs keep the fingerprint they had)
CREATE OR REPLACE FUNCTION _etl_paging_of(p_job_id int) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('url', j.url, 'pagination', j.pagination,
                              'page_size', j.page_size, 'records_path', j.records_path::text)
           || CASE WHEN j.format <> 'json'
                   THEN jsonb_build_object('format', j.format, 'csv_options', j.csv_options)
                   ELSE '{}' END
           || CASE WHEN j.method <> 'GET' OR j.body IS NOT NULL
                   THEN jsonb_build_object('method', j.method, 'body', j.body)
                   ELSE '{}' END
    FROM @extschema@.dw_etl_jobs j WHERE j.job_id = p_job_id
$$;

-- Append a segment to run_context.segments, keeping the last 20.
CREATE FUNCTION _etl_add_segment(ctx jsonb, segment jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_set(ctx, '{segments}',
        (SELECT coalesce(jsonb_agg(e ORDER BY n), '[]'::jsonb)
         FROM (SELECT e, n, count(*) OVER () AS total
               FROM jsonb_array_elements(coalesce(ctx->'segments', '[]'::jsonb) || jsonb_build_array(segment))
                    WITH ORDINALITY AS t(e, n)) s
         WHERE n > total - 20))
$$;

-- "key: a_label X, b_label Y; ..." for the keys whose values differ.
CREATE FUNCTION _etl_json_differences(a jsonb, b jsonb, a_label text, b_label text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg(format('%s: %s %s, %s %s', k,
                             a_label, coalesce((a -> k)::text, '(absent)'),
                             b_label, coalesce((b -> k)::text, '(absent)')), '; ' ORDER BY k)
    FROM (SELECT jsonb_object_keys(coalesce(a, '{}')) UNION SELECT jsonb_object_keys(coalesce(b, '{}'))) keys(k)
    WHERE a -> k IS DISTINCT FROM b -> k
$$;

CREATE OR REPLACE FUNCTION _etl_run_state(p_status text, p_run_id bigint) RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN p_status = 'running' AND NOT @extschema@._etl_run_is_live(p_run_id)
                THEN 'interrupted' ELSE p_status END
$$;

CREATE OR REPLACE FUNCTION _etl_reap(p_job_id int DEFAULT NULL, p_run_id bigint DEFAULT NULL) RETURNS int
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    n int := 0;
BEGIN
    FOR r IN SELECT x.run_id, x.job_id FROM @extschema@.dw_etl_runs x
             WHERE x.status = 'running'
               AND (p_job_id IS NULL OR x.job_id = p_job_id)
               AND (p_run_id IS NULL OR x.run_id = p_run_id)
    LOOP
        IF @extschema@._etl_run_is_live(r.run_id) THEN
            CONTINUE;
        END IF;
        UPDATE @extschema@.dw_etl_runs x
           SET status = 'interrupted',
               finished_at = now(),
               worker_pid = NULL,
               error_message = format('etl_exec run %s was interrupted: its worker is gone (terminated, killed, '
                                      'or lost in a crash or shutdown); %s. Resume it with: SELECT etl_resume_run(%s);',
                                      x.run_id,
                                      CASE WHEN x.run_context ? 'checkpoint'
                                           THEN format('%s records are loaded and checkpointed', x.records_loaded)
                                           ELSE 'nothing was checkpointed yet, so a resume starts from the first page' END,
                                      x.run_id),
               run_context = @extschema@._etl_add_segment(x.run_context, jsonb_build_object(
                   'started_at', x.segment_started_at, 'ended_at', now(), 'status', 'interrupted',
                   'records_loaded', x.records_loaded, 'pages_fetched', x.pages_fetched))
         WHERE x.run_id = r.run_id AND x.status = 'running'
           AND NOT @extschema@._etl_run_is_live(x.run_id);
        IF FOUND THEN
            PERFORM pg_notify('etl_exec_run', (SELECT json_build_object('run_id', x.run_id, 'job_id', x.job_id,
                                                   'status', x.status, 'records_loaded', x.records_loaded)::text
                                               FROM @extschema@.dw_etl_runs x WHERE x.run_id = r.run_id));
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION _etl_resolve_target(p_target text) RETURNS text
    AS 'MODULE_PATHNAME', 'etl_resolve_target_sql' LANGUAGE C STABLE STRICT;

CREATE OR REPLACE FUNCTION _etl_run_for(p_run_id bigint, p_action text) RETURNS dw_etl_runs
LANGUAGE plpgsql AS $$
DECLARE
    r @extschema@.dw_etl_runs;
BEGIN
    SELECT * INTO r FROM @extschema@.dw_etl_runs x WHERE x.run_id = p_run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'etl_exec run % does not exist', coalesce(p_run_id::text, 'NULL')
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT run_id, job_id, status FROM dw_etl_runs ORDER BY run_id DESC lists the runs.';
    END IF;
    IF NOT pg_has_role(@extschema@._etl_caller(), r.started_by::oid, 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied to % etl_exec run %: it belongs to role %', p_action, r.run_id, r.started_by
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('Only the role that started a run, its members and superusers may %s it.', p_action);
    END IF;
    r.status := @extschema@._etl_run_state(r.status, r.run_id);
    RETURN r;
END
$$;

CREATE OR REPLACE FUNCTION _etl_job_for_run(p_job_id int) RETURNS dw_etl_jobs
LANGUAGE plpgsql AS $$
DECLARE
    j @extschema@.dw_etl_jobs;
BEGIN
    SELECT * INTO j FROM @extschema@.dw_etl_jobs x WHERE x.job_id = p_job_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'etl_exec job % does not exist', coalesce(p_job_id::text, 'NULL')
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT job_id, name FROM dw_etl_jobs lists the jobs.';
    END IF;
    IF NOT j.enabled THEN
        RAISE EXCEPTION 'etl_exec job % (%) is disabled', j.job_id, j.name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Enable it with UPDATE dw_etl_jobs SET enabled = true WHERE job_id = %s;', j.job_id);
    END IF;
    IF @extschema@._etl_resolve_target(j.target_table) IS NULL THEN
        RAISE EXCEPTION 'target table "%" of etl_exec job % does not exist', j.target_table, j.job_id
            USING ERRCODE = 'undefined_table',
                  HINT = 'Create the table before starting the job, or fix dw_etl_jobs.target_table.';
    END IF;
    RETURN j;
END
$$;

-- The timeout a run gets: the call's, else the job's, else the setting;
-- 0 means the one recommended from the job's history.
CREATE FUNCTION _etl_effective_timeout(j dw_etl_jobs, p_timeout int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    t int := coalesce(p_timeout, j.timeout_seconds);
    dflt int := (@extschema@._etl_settings() ->> 'default_timeout_seconds')::int;
    rec int;
BEGIN
    IF p_timeout < 0 THEN
        RAISE EXCEPTION 'timeout must be 0 or more seconds, not %', p_timeout
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass NULL for the job''s timeout or etl_exec.default_timeout_seconds, 0 for the timeout recommended from the job''s history.';
    END IF;
    IF t IS NULL THEN
        RETURN dflt;
    END IF;
    IF t = 0 THEN
        rec := @extschema@.etl_recommended_timeout(j.job_id);
        IF rec IS NULL THEN
            RAISE NOTICE 'job % has fewer than 3 successful runs to recommend a timeout from; using etl_exec.default_timeout_seconds (% s)',
                j.job_id, dflt;
            RETURN dflt;
        END IF;
        RETURN rec;
    END IF;
    RETURN t;
END
$$;

-- p95 of the last 20 successful runs' durations, with 50% headroom,
-- between 60 s and a day; NULL with fewer than 3 runs to go by.
CREATE FUNCTION etl_recommended_timeout(job_id int) RETURNS int
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN count(*) >= 3 THEN
               least(86400, greatest(60, ceil(1.5 * percentile_cont(0.95) WITHIN GROUP (ORDER BY d) / 1000.0)))::int
           END
    FROM (SELECT r.duration_ms AS d FROM @extschema@.dw_etl_runs r
          WHERE r.job_id = etl_recommended_timeout.job_id AND r.status = 'succeeded' AND NOT r.dry_run
          ORDER BY r.run_id DESC LIMIT 20) last_runs
$$;

-- 0.4.0's, but a value such as "..%2Fadmin" or "%2e%2e" is refused too
-- (a server that decodes it moves up the path), with the worker's rule.
CREATE OR REPLACE FUNCTION _etl_check_url_parameters(p_url text, p_parameters jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    missing text;
    dots text;
BEGIN
    SELECT string_agg('{' || m[1] || '}', ', ' ORDER BY m[1]) INTO missing
    FROM regexp_matches(p_url, '\{([^{}]+)\}', 'g') AS m
    WHERE m[1] !~ '^secret:'
      AND (p_parameters -> m[1] IS NULL OR p_parameters -> m[1] = 'null'::jsonb);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'the job''s URL has placeholders without a value: %', missing
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass them in the parameters argument (a JSON object), or set them in dw_etl_jobs.parameters.';
    END IF;
    SELECT string_agg(format('{%s} = "%s"', m[1], p_parameters ->> m[1]), ', ' ORDER BY m[1]) INTO dots
    FROM regexp_matches(substring(p_url from '^[^?#]*'), '\{([^{}]+)\}', 'g') AS m
    WHERE @extschema@._etl_url_holds_dot_segment(p_parameters ->> m[1]);
    IF dots IS NOT NULL THEN
        RAISE EXCEPTION 'URL placeholders in the path must not be "." or "..", nor hold such a segment (percent-encoded or not): %', dots
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A dot segment would send the request, with the job''s secrets, to another path.',
                  HINT = 'Pass the values the API expects.';
    END IF;
END
$$;

-- After a wait: return if the run succeeded, else raise its outcome with
-- a SQLSTATE of class ET (ET001 failed, ET002 timed out, ET003 cancelled,
-- ET004 interrupted).
CREATE FUNCTION _etl_raise_outcome(p_run_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    run jsonb;
    code text;
    msg text;
    detail text;
    hint text;
    lines text[];
BEGIN
    PERFORM @extschema@._etl_wait_run_end(p_run_id, NULL);
    run := @extschema@._etl_fresh_run(p_run_id);
    IF run ->> 'status' IN ('queued', 'running') THEN
        PERFORM @extschema@._etl_reap(NULL, p_run_id);
        run := @extschema@._etl_fresh_run(p_run_id);
    END IF;
    code := CASE run ->> 'status'
                WHEN 'succeeded' THEN NULL
                WHEN 'failed' THEN 'ET001'
                WHEN 'timed_out' THEN 'ET002'
                WHEN 'cancelled' THEN 'ET003'
                ELSE 'ET004' END;
    IF code IS NULL THEN
        IF (run ->> 'dry_run')::boolean THEN
            RAISE NOTICE 'dry run % of job %: %', p_run_id, run ->> 'job_id', run -> 'run_context' -> 'dry_run';
        END IF;
        RETURN;
    END IF;
    -- error_message is "message\nDETAIL: ...\nHINT: ...\nCONTEXT: ..."
    lines := string_to_array(coalesce(run ->> 'error_message', 'no message'), E'\n');
    msg := format('etl_exec run %s %s: %s', p_run_id, run ->> 'status', lines[1]);
    SELECT string_agg(CASE WHEN l LIKE 'DETAIL: %' THEN substr(l, 9)
                           WHEN l LIKE 'CONTEXT: %' THEN 'While: ' || substr(l, 10)
                           ELSE l END, E'\n' ORDER BY n)
      INTO detail
      FROM unnest(lines[2:]) WITH ORDINALITY AS t(l, n) WHERE l NOT LIKE 'HINT: %';
    SELECT substr(l, 7) INTO hint FROM unnest(lines[2:]) AS t(l) WHERE l LIKE 'HINT: %' LIMIT 1;
    detail := coalesce(detail || E'\n', '')
              || format('%s records are loaded, on %s pages.', run ->> 'records_loaded', run ->> 'pages_fetched');
    hint := coalesce(hint || ' ', '') ||
            CASE WHEN run ->> 'status' = 'failed' AND NOT (run -> 'run_context') ? 'checkpoint'
                 THEN format('Then start it again with SELECT etl_retry_run(%s);', p_run_id)
                 WHEN run ->> 'status' = 'failed'
                 THEN format('Then resume it with SELECT etl_resume_run(%s);', p_run_id)
                 ELSE format('Resume it with SELECT etl_resume_run(%s);', p_run_id) END;
    RAISE EXCEPTION USING ERRCODE = code, MESSAGE = msg, DETAIL = detail, HINT = hint;
END
$$;

CREATE OR REPLACE FUNCTION _etl_start_new_run(j dw_etl_jobs, p_parameters jsonb, p_timeout int,
                                              p_dry_run boolean, p_wait boolean) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    active bigint;
    rid bigint;
    t int;
    params jsonb;
    parts jsonb;
BEGIN
    IF p_parameters IS NOT NULL AND jsonb_typeof(p_parameters) <> 'object' THEN
        RAISE EXCEPTION 'parameters must be a JSON object, not %', p_parameters
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: parameters := ''{"date": "2024-01-01"}''';
    END IF;
    t := @extschema@._etl_effective_timeout(j, p_timeout);
    params := j.parameters || coalesce(p_parameters, '{}');
    params := params || @extschema@._etl_history_parameters(j, coalesce(p_parameters, '{}'));
    parts := @extschema@._etl_freeze_partitions(j, params);
    -- a partition's parameters fill what the run's do not (no partition: nothing is asked)
    IF parts IS NULL OR jsonb_array_length(parts) > 0 THEN
        PERFORM @extschema@._etl_check_url_parameters(j.url, params || coalesce(parts -> 0, '{}'));
    END IF;
    IF NOT j.allow_concurrent_runs AND NOT p_dry_run THEN
        SELECT x.run_id INTO active FROM @extschema@.dw_etl_runs x
        WHERE x.job_id = j.job_id AND NOT x.dry_run
          AND (x.status = 'queued' OR (x.status = 'running' AND @extschema@._etl_run_is_live(x.run_id)))
        ORDER BY x.run_id LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'etl_exec job % already has an active run %', j.job_id, active
                USING ERRCODE = 'object_in_use',
                      HINT = format('Wait for it with SELECT etl_wait_run(%s), cancel it with SELECT etl_cancel_run(%s), '
                                    'or set allow_concurrent_runs on the job.', active, active);
        END IF;
    END IF;
    rid := @extschema@._etl_start_worker('new', j.job_id, NULL, t, p_dry_run, params, parts);
    IF p_wait THEN
        PERFORM @extschema@._etl_raise_outcome(rid);
    END IF;
    RETURN rid;
END
$$;

------------------------------------------------------------------------------
-- column_map values "{param:NAME}": a run or partition parameter into a column
------------------------------------------------------------------------------
-- A column_map value may be "{param:NAME}" instead of a jsonpath; the rest
-- of the first trigger is 0.4.0's.  (The second trigger's csv rule already
-- passes a value that is not a jsonpath: the first names what is wrong.)
CREATE OR REPLACE FUNCTION _etl_validate_job() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    opts jsonb := NEW.pagination_options;
    k text;
    v jsonb;
    known_options text[] := ARRAY['skip_param', 'limit_param', 'page_param', 'first_page', 'next_path',
                                  'cursor_param', 'total_path', 'stop_on_short_page',
                                  'next_header', 'has_more_path'];
BEGIN
    IF NEW.pagination NOT IN ('none', 'offset', 'page', 'next_link', 'link_header', 'cursor') THEN
        RAISE EXCEPTION 'job "%": unknown pagination style "%"', NEW.name, NEW.pagination
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use one of: none, offset, page, next_link, link_header, cursor.';
    END IF;
    IF NEW.page_size <= 0 THEN
        RAISE EXCEPTION 'job "%": page_size must be positive, not %', NEW.name, NEW.page_size
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The number of records asked for per page, e.g. 1000.';
    END IF;
    IF NEW.url !~* '^https?://[^/?#]+' THEN
        RAISE EXCEPTION 'job "%": url must be an http:// or https:// URL, not "%"', NEW.name, NEW.url
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: https://api.example.com/odata/Patients (placeholders such as {day} are allowed).';
    END IF;
    IF NEW.load_mode NOT IN ('append', 'upsert', 'replace') THEN
        RAISE EXCEPTION 'job "%": unknown load_mode "%"', NEW.name, NEW.load_mode
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use one of: append, upsert, replace.';
    END IF;
    IF NEW.load_mode = 'upsert' AND coalesce(cardinality(NEW.key_columns), 0) = 0 THEN
        RAISE EXCEPTION 'job "%": load_mode upsert needs key_columns', NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Set key_columns to the columns of a unique index of the target, e.g. ARRAY[''id''].';
    END IF;
    IF NEW.load_mode = 'upsert' AND EXISTS (SELECT 1 FROM unnest(NEW.key_columns) AS kc(name) WHERE kc.name IS NULL OR kc.name = '') THEN
        RAISE EXCEPTION 'job "%": key_columns must not hold NULL or empty names', NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Set key_columns to column names of the target, e.g. ARRAY[''id''].';
    END IF;
    IF jsonb_typeof(opts) <> 'object' THEN
        RAISE EXCEPTION 'job "%": pagination_options must be a JSON object', NEW.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(opts) LOOP
        IF NOT k = ANY (known_options) THEN
            RAISE EXCEPTION 'job "%": unknown pagination option "%"', NEW.name, k
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Known options: ' || array_to_string(known_options, ', ') || '.';
        END IF;
        IF k = 'first_page' AND (jsonb_typeof(v) <> 'number' OR v::numeric < 0 OR v::numeric <> trunc(v::numeric)) THEN
            RAISE EXCEPTION 'job "%": pagination option first_page must be a whole number, 0 or more, not %', NEW.name, v
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'The number of the API''s first page: usually 1, sometimes 0.';
        ELSIF k = 'stop_on_short_page' AND jsonb_typeof(v) <> 'boolean' THEN
            RAISE EXCEPTION 'job "%": pagination option stop_on_short_page must be true or false', NEW.name
                USING ERRCODE = 'invalid_parameter_value';
        ELSIF k NOT IN ('first_page', 'stop_on_short_page') AND jsonb_typeof(v) <> 'string' THEN
            RAISE EXCEPTION 'job "%": pagination option % must be a string', NEW.name, k
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF k IN ('next_path', 'total_path', 'has_more_path') THEN
            BEGIN
                PERFORM (v #>> '{}')::jsonpath;
            EXCEPTION WHEN others THEN
                RAISE EXCEPTION 'job "%": pagination option % is not a valid jsonpath: %', NEW.name, k, v #>> '{}'
                    USING ERRCODE = 'invalid_parameter_value', DETAIL = SQLERRM,
                          HINT = 'For example: $."@odata.nextLink" or $.meta.next_cursor';
            END;
        END IF;
    END LOOP;
    IF NEW.pagination = 'cursor' AND NOT opts ? 'next_path' AND NOT opts ? 'next_header' THEN
        RAISE EXCEPTION 'job "%": cursor pagination needs the pagination option next_path (where the cursor is in a response) or next_header (the response header that holds it)', NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: pagination_options = ''{"next_path": "$.meta.next_cursor", "cursor_param": "cursor"}'' or ''{"next_header": "X-Next-Cursor"}''';
    END IF;
    IF NEW.column_map IS NOT NULL THEN
        IF jsonb_typeof(NEW.column_map) <> 'object' OR NEW.column_map = '{}' THEN
            RAISE EXCEPTION 'job "%": column_map must be a non-empty JSON object {"column": "jsonpath"}', NEW.name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Leave it NULL to map columns to record keys of the same name.';
        END IF;
        FOR k, v IN SELECT * FROM jsonb_each(NEW.column_map) LOOP
            IF jsonb_typeof(v) <> 'string' THEN
                RAISE EXCEPTION 'job "%": column_map entry "%" must be a jsonpath string or {param:NAME}', NEW.name, k
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            -- "{param:NAME}": the column takes the run's (or partition's) parameter NAME
            CONTINUE WHEN v #>> '{}' ~ '^\{param:[^{}]+\}$';
            IF v #>> '{}' LIKE '{param:%' THEN
                RAISE EXCEPTION 'job "%": column_map entry "%" is not a valid parameter reference: %', NEW.name, k, v #>> '{}'
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Write "{param:NAME}", NAME being a parameter of the run or a column of the job''s partitions.';
            END IF;
            BEGIN
                PERFORM (v #>> '{}')::jsonpath;
            EXCEPTION WHEN others THEN
                RAISE EXCEPTION 'job "%": column_map entry "%" is not a valid jsonpath: %', NEW.name, k, v #>> '{}'
                    USING ERRCODE = 'invalid_parameter_value', DETAIL = SQLERRM,
                          HINT = 'For example: {"patient_id": "$.PatientId", "city": "$.address.city"}';
            END;
        END LOOP;
    END IF;
    IF jsonb_typeof(NEW.headers) <> 'object' OR EXISTS (SELECT 1 FROM jsonb_each(NEW.headers) e WHERE jsonb_typeof(e.value) <> 'string') THEN
        RAISE EXCEPTION 'job "%": headers must be a JSON object of strings', NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: {"Authorization": "Bearer {secret:api_token}"}';
    END IF;
    SELECT e.key INTO k FROM jsonb_each_text(NEW.headers) e
    WHERE e.key !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$' OR e.value ~ '[\r\n\x01-\x08\x0b\x0c\x0e-\x1f]' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'job "%": header "%" has an invalid name or a control character (such as a line break) in its value', NEW.name, k
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Header names are HTTP tokens (letters, digits, -); values are one line of text.';
    END IF;
    IF jsonb_typeof(NEW.parameters) <> 'object' THEN
        RAISE EXCEPTION 'job "%": parameters must be a JSON object', NEW.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.timeout_seconds < 0 THEN
        RAISE EXCEPTION 'job "%": timeout_seconds must be 0 (recommended from history) or more, not %', NEW.name, NEW.timeout_seconds
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.checkpoint_interval_seconds < 0 THEN
        RAISE EXCEPTION 'job "%": checkpoint_interval_seconds must be 0 (every page) or more, not %', NEW.name, NEW.checkpoint_interval_seconds
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.max_retries < 0 THEN
        RAISE EXCEPTION 'job "%": max_retries must be 0 or more, not %', NEW.name, NEW.max_retries
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.request_timeout_ms <= 0 THEN
        RAISE EXCEPTION 'job "%": request_timeout_ms must be positive, not %', NEW.name, NEW.request_timeout_ms
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.target_table !~ '^\s*("([^"]|"")+"|[^".\s]+)(\s*\.\s*("([^"]|"")+"|[^".\s]+))?\s*$' THEN
        RAISE EXCEPTION 'job "%": target_table "%" is not a table name', NEW.name, NEW.target_table
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use table or schema.table (quote names that need it).';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION etl_resume_run(run_id bigint, timeout int DEFAULT NULL, wait boolean DEFAULT false)
    RETURNS bigint AS 'MODULE_PATHNAME', 'etl_api_call' LANGUAGE C VOLATILE;

------------------------------------------------------------------------------
-- The entry points: C functions that run _<name> for their caller.
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION etl_execute_job(job_id int, timeout int DEFAULT NULL,
                                           resume_from_checkpoint boolean DEFAULT false,
                                           dry_run boolean DEFAULT false, parameters jsonb DEFAULT NULL,
                                           wait boolean DEFAULT false)
    RETURNS bigint AS 'MODULE_PATHNAME', 'etl_api_call' LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION etl_retry_run(run_id bigint, dry_run boolean DEFAULT false, wait boolean DEFAULT false)
    RETURNS bigint AS 'MODULE_PATHNAME', 'etl_api_call' LANGUAGE C VOLATILE;

CREATE FUNCTION etl_get_checkpoint(run_id bigint)
RETURNS TABLE (skip bigint, page_index int, total_records bigint, saved_at timestamptz,
               next_url text, cursor text, partition_index int, partitions_total int)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    c jsonb;
    ctx jsonb;
BEGIN
    SELECT x.run_context -> 'checkpoint', x.run_context INTO c, ctx FROM @extschema@.dw_etl_runs x
    WHERE x.run_id = etl_get_checkpoint.run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'etl_exec run % does not exist', coalesce(etl_get_checkpoint.run_id::text, 'NULL')
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT run_id, job_id, status FROM dw_etl_runs ORDER BY run_id DESC lists the runs.';
    END IF;
    IF c IS NOT NULL THEN
        RETURN QUERY SELECT (c ->> 'skip')::bigint, (c ->> 'page_index')::int, (c ->> 'total_records')::bigint,
                            (c ->> 'saved_at')::timestamptz, c ->> 'next_url', c ->> 'cursor',
                            (c ->> 'partition_index')::int, (ctx ->> 'partitions_total')::int;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION etl_cancel_run(run_id bigint)
    RETURNS boolean AS 'MODULE_PATHNAME', 'etl_api_call' LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION etl_wait_run(run_id bigint, timeout_ms int DEFAULT NULL)
    RETURNS text AS 'MODULE_PATHNAME', 'etl_api_call' LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION etl_resume_pending(max_resumes int DEFAULT 10, include_cancelled boolean DEFAULT false,
                                              include_failed boolean DEFAULT false)
    RETURNS SETOF bigint AS 'MODULE_PATHNAME', 'etl_api_call_rows' LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION _etl_history_parameters(j dw_etl_jobs, p_given jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    result jsonb := '{}';
    name text;
    col text;
    v text;
    typ regtype;
BEGIN
    FOR name IN
        SELECT m[1] FROM regexp_matches(j.url, '\{(last_success_started_at|max:[^{}]+)\}', 'g')
                         WITH ORDINALITY AS t(m, pos)
        GROUP BY m[1] ORDER BY min(pos)
    LOOP
        CONTINUE WHEN p_given ? name;
        IF name = 'last_success_started_at' THEN
            SELECT to_char(max(r.started_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') INTO v
            FROM @extschema@.dw_etl_runs r
            WHERE r.job_id = j.job_id AND r.status = 'succeeded' AND NOT r.dry_run;
        ELSE
            col := substr(name, 5);
            SELECT a.atttypid::regtype INTO typ FROM pg_attribute a
            WHERE a.attrelid = @extschema@._etl_resolve_target(j.target_table)::regclass AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'URL placeholder {%} names column "%", which target table % does not have', name, col, j.target_table
                    USING ERRCODE = 'undefined_column',
                          HINT = 'Use {max:column} with a column of the target, e.g. {max:modified_at}.';
            END IF;
            IF typ IN ('timestamptz'::regtype, 'timestamp'::regtype) THEN
                v := @extschema@._etl_select_as_caller(
                         format('SELECT pg_catalog.to_char(pg_catalog.max(%I) %s, ''YYYY-MM-DD"T"HH24:MI:SS"Z"'') FROM %s', col,
                                CASE WHEN typ = 'timestamptz'::regtype THEN 'AT TIME ZONE ''UTC''' ELSE '' END,
                                @extschema@._etl_resolve_target(j.target_table)));
            ELSE
                v := @extschema@._etl_select_as_caller(
                         format('SELECT pg_catalog.max(%I)::text FROM %s', col, @extschema@._etl_resolve_target(j.target_table)));
            END IF;
        END IF;
        IF v IS NULL THEN
            IF j.parameters ? name THEN
                CONTINUE;       -- the job's default stands
            END IF;
            RAISE EXCEPTION 'URL placeholder {%} has no value yet: %', name,
                CASE WHEN name = 'last_success_started_at' THEN 'the job has no successful run'
                     ELSE 'the target table is empty' END
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = format('Give a first value in the job''s parameters, e.g. UPDATE dw_etl_jobs SET parameters = parameters || ''{"%s": "2000-01-01T00:00:00Z"}'' WHERE job_id = %s;', name, j.job_id);
        END IF;
        result := result || jsonb_build_object(name, v);
    END LOOP;
    RETURN result;
END
$$;

------------------------------------------------------------------------------
-- Hot standby: what writes fails at once (the C entry points check too)
------------------------------------------------------------------------------
-- 0.3.0's, but on a standby it says so at once (25006) instead of failing
-- at its first write.
CREATE OR REPLACE FUNCTION etl_prune_runs(older_than interval DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    keep interval := coalesce(older_than,
                              make_interval(days => (@extschema@._etl_settings() ->> 'run_retention_days')::int));
    r record;
    n bigint := 0;
    stage text;
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RAISE EXCEPTION 'etl_prune_runs cannot run on a hot standby'
            USING ERRCODE = 'read_only_sql_transaction',
                  DETAIL = 'This server is in recovery: etl_exec starts, resumes and changes runs only on the primary, and no worker runs here.',
                  HINT = 'Run it on the primary.  etl_wait_run, etl_get_checkpoint and the views work here.';
    END IF;
    IF older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must not be negative, not %', older_than
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF older_than IS NULL AND keep = interval '0' THEN
        RAISE NOTICE 'etl_exec.run_retention_days is 0: runs are kept forever';
        RETURN 0;
    END IF;
    PERFORM @extschema@._etl_reap();
    FOR r IN
        DELETE FROM @extschema@.dw_etl_runs x
        WHERE x.status NOT IN ('queued', 'running') AND coalesce(x.finished_at, x.started_at) < now() - keep
        RETURNING x.run_id, x.job_id, x.started_by, x.run_context #>> '{staging,table}' AS staging
    LOOP
        n := n + 1;
        -- the staging table a replace run made, if it is still there: in
        -- etl_exec_staging, named for the run, owned by the run's role
        SELECT format('%I.%I', ns.nspname, c.relname) INTO stage
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace
        WHERE ns.nspname = 'etl_exec_staging'
          AND c.relname ~ ('^_etl_stage_' || r.run_id || '_[0-9a-f]{16}$')
          AND c.relowner = r.started_by::oid
          AND r.staging = format('%I.%I', ns.nspname, c.relname);
        IF FOUND THEN
            EXECUTE 'DROP TABLE IF EXISTS ' || stage;
        END IF;
    END LOOP;
    RETURN n;
END
$$;

------------------------------------------------------------------------------
-- Secrets are bound to origins: allowed_hosts lists host or host:port
-- (no port: the scheme's default), and must be given.
------------------------------------------------------------------------------
CREATE FUNCTION _etl_validate_secret() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bad text;
BEGIN
    IF NEW.allowed_hosts IS NULL THEN
        RAISE EXCEPTION 'secret "%" must list the hosts it may be sent to in allowed_hosts', NEW.name
            USING ERRCODE = 'not_null_violation',
                  DETAIL = 'A secret is sent only to the origins it lists; an empty list sends it nowhere.',
                  HINT = format('For example: INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES (%L, ''...'', ARRAY[''api.example.com'']); '
                                'add the port when it is not the scheme''s default: ''api.example.com:8443''.', NEW.name);
    END IF;
    SELECT coalesce(h, 'NULL') INTO bad FROM unnest(NEW.allowed_hosts) AS h
    WHERE h IS NULL OR h !~ '^([A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$'
          OR coalesce(substring(h from ':([0-9]{1,5})$')::int BETWEEN 1 AND 65535, true) IS NOT TRUE
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'allowed_hosts of secret "%" has an entry that is not a host or host:port: "%"', NEW.name, bad
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'List host names or addresses, each with :port when it is not the scheme''s default, e.g. ARRAY[''api.example.com'', ''10.0.0.5:8443'', ''[2001:db8::1]:8080''].';
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION _etl_caller() RETURNS oid
    AS 'MODULE_PATHNAME', 'etl_caller_sql' LANGUAGE C STABLE;

CREATE FUNCTION _etl_select_as_caller(sql text) RETURNS text
    AS 'MODULE_PATHNAME', 'etl_select_as_caller' LANGUAGE C VOLATILE STRICT;

-- The etl_exec settings in force in this session, as a run started now
-- would store them.
CREATE FUNCTION etl_settings() RETURNS jsonb
    AS 'MODULE_PATHNAME', 'etl_settings_snapshot' LANGUAGE C STABLE;

------------------------------------------------------------------------------
-- Implementations of the entry points: SECURITY DEFINER with a fixed
-- search_path; the caller is _etl_caller(), the target is resolved with the
-- caller's search_path and rights.
------------------------------------------------------------------------------
CREATE FUNCTION _etl_resume_run(run_id bigint, timeout int DEFAULT NULL, wait boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r @extschema@.dw_etl_runs;
    j @extschema@.dw_etl_jobs;
    diff text;
    rid bigint;
BEGIN
    r := @extschema@._etl_run_for(_etl_resume_run.run_id, 'resume');
    IF r.dry_run THEN
        RAISE EXCEPTION 'etl_exec run % is a dry run and cannot be resumed', r.run_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Start a real run with SELECT etl_execute_job(%s);', r.job_id);
    END IF;
    IF r.status = 'succeeded' THEN
        RAISE EXCEPTION 'etl_exec run % already succeeded; there is nothing to resume', r.run_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Start a new run with SELECT etl_execute_job(%s);', r.job_id);
    END IF;
    IF r.status = 'queued' THEN
        RAISE EXCEPTION 'etl_exec run % is queued: it starts when a worker slot is free', r.run_id
            USING ERRCODE = 'object_in_use',
                  HINT = format('Wait for it with SELECT etl_wait_run(%s), or take it out of the queue with SELECT etl_cancel_run(%s).', r.run_id, r.run_id);
    END IF;
    IF r.status = 'running' THEN
        RAISE EXCEPTION 'etl_exec run % is still running (worker pid %)', r.run_id, r.worker_pid
            USING ERRCODE = 'object_in_use',
                  HINT = format('Wait for it with SELECT etl_wait_run(%s), or stop it with SELECT etl_cancel_run(%s).', r.run_id, r.run_id);
    END IF;
    IF r.status = 'failed' AND NOT r.run_context ? 'checkpoint' THEN
        RAISE EXCEPTION 'etl_exec run % failed before it loaded anything, so it has no checkpoint to resume from', r.run_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = r.error_message,
                  HINT = format('Fix the cause, then start it again with SELECT etl_retry_run(%s);', r.run_id);
    END IF;
    j := @extschema@._etl_job_for_run(r.job_id);
    diff := @extschema@._etl_json_differences(r.run_context -> 'paging', @extschema@._etl_paging_of(j.job_id),
                                              'checkpoint has', 'job now has');
    IF r.run_context ? 'paging' AND diff IS NOT NULL THEN
        RAISE EXCEPTION 'cannot resume etl_exec run %: the job''s paging settings changed since its checkpoint', r.run_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = diff,
                  HINT = format('Restore the job''s settings to resume, or start over with SELECT etl_execute_job(%s);', j.job_id);
    END IF;
    rid := @extschema@._etl_start_worker('resume', r.job_id, r.run_id,
                                         @extschema@._etl_effective_timeout(j, _etl_resume_run.timeout),
                                         false, r.parameters);
    IF _etl_resume_run.wait THEN
        PERFORM @extschema@._etl_raise_outcome(rid);
    END IF;
    RETURN rid;
END
$$;

CREATE FUNCTION _etl_execute_job(job_id int, timeout int DEFAULT NULL,
                                resume_from_checkpoint boolean DEFAULT false,
                                dry_run boolean DEFAULT false, parameters jsonb DEFAULT NULL,
                                wait boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j @extschema@.dw_etl_jobs;
    r @extschema@.dw_etl_runs;
    diff text;
BEGIN
    j := @extschema@._etl_job_for_run(_etl_execute_job.job_id);
    IF _etl_execute_job.timeout < 0 THEN
        PERFORM @extschema@._etl_effective_timeout(j, _etl_execute_job.timeout);   -- raises
    END IF;
    IF _etl_execute_job.parameters IS NOT NULL AND jsonb_typeof(_etl_execute_job.parameters) <> 'object' THEN
        RAISE EXCEPTION 'parameters must be a JSON object, not %', _etl_execute_job.parameters
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: parameters := ''{"date": "2024-01-01"}''';
    END IF;
    IF _etl_execute_job.resume_from_checkpoint AND NOT _etl_execute_job.dry_run THEN
        SELECT * INTO r FROM @extschema@.dw_etl_runs x
        WHERE x.job_id = j.job_id AND NOT x.dry_run AND x.run_context ? 'checkpoint'
          AND @extschema@._etl_run_state(x.status, x.run_id) IN ('timed_out', 'cancelled', 'interrupted', 'failed')
        ORDER BY x.run_id DESC LIMIT 1;
        IF FOUND THEN
            -- the keys this call gives must match the run's (a run also has
            -- parameters it resolved itself, such as {max:column})
            diff := @extschema@._etl_json_differences(
                        (SELECT coalesce(jsonb_object_agg(k, r.parameters -> k) FILTER (WHERE r.parameters ? k), '{}')
                         FROM jsonb_object_keys(j.parameters || coalesce(_etl_execute_job.parameters, '{}')) AS k),
                        j.parameters || coalesce(_etl_execute_job.parameters, '{}'),
                        'run has', 'this call has');
            IF _etl_execute_job.parameters IS NOT NULL AND diff IS NOT NULL THEN
                RAISE EXCEPTION 'cannot resume etl_exec run % of job % with different parameters', r.run_id, j.job_id
                    USING ERRCODE = 'invalid_parameter_value',
                          DETAIL = diff,
                          HINT = 'A resume asks the API the same question as the run it continues: leave parameters NULL, '
                                 'or start a new run without resume_from_checkpoint.';
            END IF;
            RETURN @extschema@._etl_resume_run(r.run_id, _etl_execute_job.timeout, _etl_execute_job.wait);
        END IF;
        RAISE NOTICE 'job % has no resumable run with a checkpoint; starting a new run', j.job_id;
    END IF;
    RETURN @extschema@._etl_start_new_run(j, _etl_execute_job.parameters, _etl_execute_job.timeout,
                                          _etl_execute_job.dry_run, _etl_execute_job.wait);
END
$$;

CREATE FUNCTION _etl_retry_run(run_id bigint, dry_run boolean DEFAULT false, wait boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r @extschema@.dw_etl_runs;
BEGIN
    r := @extschema@._etl_run_for(_etl_retry_run.run_id, 'retry');
    IF r.status IN ('queued', 'running') THEN
        RAISE EXCEPTION 'etl_exec run % is still running (worker pid %)', r.run_id, r.worker_pid
            USING ERRCODE = 'object_in_use',
                  HINT = format('Wait for it with SELECT etl_wait_run(%s), or stop it with SELECT etl_cancel_run(%s).', r.run_id, r.run_id);
    END IF;
    IF NOT _etl_retry_run.dry_run AND NOT r.dry_run AND r.run_context ? 'checkpoint'
       AND r.status IN ('timed_out', 'cancelled', 'interrupted', 'failed') THEN
        RETURN @extschema@._etl_resume_run(r.run_id, NULL, _etl_retry_run.wait);
    END IF;
    RETURN @extschema@._etl_start_new_run(@extschema@._etl_job_for_run(r.job_id), r.parameters, NULL,
                                          _etl_retry_run.dry_run, _etl_retry_run.wait);
END
$$;

CREATE FUNCTION _etl_cancel_run(run_id bigint) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r @extschema@.dw_etl_runs;
BEGIN
    PERFORM @extschema@._etl_reap(NULL, _etl_cancel_run.run_id);
    r := @extschema@._etl_run_for(_etl_cancel_run.run_id, 'cancel');
    IF r.status = 'queued' THEN
        -- not started yet: it leaves the queue (unless a worker took it just now)
        UPDATE @extschema@.dw_etl_runs x
           SET status = 'cancelled', finished_at = now(),
               error_message = format('etl_exec run %s was cancelled while queued; %s. Resume it with: SELECT etl_resume_run(%s);',
                                      x.run_id,
                                      CASE WHEN x.run_context ? 'checkpoint'
                                           THEN format('%s records are loaded and checkpointed', x.records_loaded)
                                           ELSE 'nothing was loaded' END, x.run_id)
         WHERE x.run_id = r.run_id AND x.status = 'queued';
        IF FOUND THEN
            PERFORM pg_notify('etl_exec_run', json_build_object('run_id', r.run_id, 'job_id', r.job_id,
                                                                'status', 'cancelled',
                                                                'records_loaded', r.records_loaded)::text);
            RETURN true;
        END IF;
        r := @extschema@._etl_run_for(_etl_cancel_run.run_id, 'cancel');
    END IF;
    IF r.status <> 'running' THEN
        RAISE NOTICE 'etl_exec run % is not running (it is %); nothing to cancel', r.run_id, r.status;
        RETURN false;
    END IF;
    RETURN coalesce(@extschema@._etl_signal_run(r.run_id), false);
END
$$;

CREATE FUNCTION _etl_wait_run(run_id bigint, timeout_ms int DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    run jsonb;
    ended boolean;
BEGIN
    IF _etl_wait_run.timeout_ms < 0 THEN
        RAISE EXCEPTION 'timeout_ms must be 0 or more, not %', _etl_wait_run.timeout_ms
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass NULL to wait until the run ends.';
    END IF;
    IF @extschema@._etl_fresh_run(_etl_wait_run.run_id) IS NULL THEN
        RAISE EXCEPTION 'etl_exec run % does not exist', coalesce(_etl_wait_run.run_id::text, 'NULL')
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT run_id, job_id, status FROM dw_etl_runs ORDER BY run_id DESC lists the runs.';
    END IF;
    ended := @extschema@._etl_wait_run_end(_etl_wait_run.run_id, _etl_wait_run.timeout_ms);
    run := @extschema@._etl_fresh_run(_etl_wait_run.run_id);
    IF ended AND run ->> 'status' IN ('queued', 'running') THEN
        PERFORM @extschema@._etl_reap(NULL, _etl_wait_run.run_id);
        run := @extschema@._etl_fresh_run(_etl_wait_run.run_id);
    END IF;
    RETURN run ->> 'status';
END
$$;

-- etl_resume_pending: a run that stopped because a rate-limited API accepts
-- requests only later (run_context.resume_after) waits until then.
CREATE OR REPLACE FUNCTION _etl_resume_pending(max_resumes int DEFAULT 10, include_cancelled boolean DEFAULT false,
                                              include_failed boolean DEFAULT false)
RETURNS bigint[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    started bigint[] := '{}';
BEGIN
    FOR r IN
        SELECT x.run_id FROM @extschema@.dw_etl_runs x
        WHERE NOT x.dry_run
          AND x.resume_count < _etl_resume_pending.max_resumes
          AND (@extschema@._etl_run_state(x.status, x.run_id) IN ('timed_out', 'interrupted')
               OR (_etl_resume_pending.include_cancelled AND x.status = 'cancelled')
               OR (_etl_resume_pending.include_failed AND x.status = 'failed' AND x.run_context ? 'checkpoint'))
          -- the API asked it to wait
          AND coalesce((x.run_context ->> 'resume_after')::timestamptz <= now(), true)
          -- a newer run of the same job and parameters supersedes it
          AND NOT EXISTS (SELECT 1 FROM @extschema@.dw_etl_runs y
                          WHERE y.job_id = x.job_id AND y.run_id > x.run_id AND NOT y.dry_run
                            AND y.parameters = x.parameters)
          AND pg_has_role(@extschema@._etl_caller(), x.started_by::oid, 'MEMBER')
        ORDER BY x.run_id
    LOOP
        BEGIN
            started := started || @extschema@._etl_resume_run(r.run_id);
        EXCEPTION WHEN others THEN
            RAISE WARNING 'etl_exec: could not resume run %: %', r.run_id, SQLERRM;
        END;
    END LOOP;
    -- queued runs nobody is starting (after a restart, say): as many as
    -- there are free worker slots; each worker then goes on with the queue
    FOR r IN
        SELECT x.run_id, x.job_id FROM @extschema@.dw_etl_runs x
        WHERE x.status = 'queued'
          AND pg_has_role(@extschema@._etl_caller(), x.started_by::oid, 'MEMBER')
        ORDER BY x.run_id
        LIMIT @extschema@._etl_worker_slots_free()
    LOOP
        BEGIN
            PERFORM @extschema@._etl_start_worker('dequeue', r.job_id, r.run_id, 0, false, NULL);
            started := started || r.run_id;
        EXCEPTION WHEN others THEN
            RAISE WARNING 'etl_exec: could not start queued run %: %', r.run_id, SQLERRM;
        END;
    END LOOP;
    RETURN started;
END
$$;

CREATE FUNCTION etl_live_runs()
RETURNS TABLE (run_id bigint, pages bigint, records bigint, rows_per_second numeric,
               expected_total bigint, retries int, backend_start timestamptz,
               waiting_for_rate_limit text, rate_limited_until timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT current_setting('transaction_read_only')::boolean THEN
        PERFORM @extschema@._etl_reap();
    END IF;
    RETURN QUERY
    SELECT r.run_id, m[1]::bigint, m[2]::bigint, m[3]::numeric, nullif(m[4]::bigint, -1), m[5]::int,
           a.backend_start, w[1], to_timestamp(w[2]::bigint / 1000.0)
    FROM @extschema@.dw_etl_runs r
    LEFT JOIN pg_stat_activity a
           ON a.pid = r.worker_pid AND a.application_name = 'etl_exec run ' || r.run_id
    LEFT JOIN LATERAL regexp_match(a.query,
           ': (\d+) pages, (\d+) records, (\d+) rows/s, expected (-?\d+), (\d+) retries') AS m ON true
    LEFT JOIN LATERAL regexp_match(a.query, '\[rate limit: (\S+) until (\d+)\]$') AS w ON true
    WHERE r.status = 'running' AND @extschema@._etl_run_is_live(r.run_id);
END
$$;

------------------------------------------------------------------------------
-- The run queue: at most etl_exec.max_workers runs run at once; the others
-- wait, "queued", and a finishing worker starts the oldest of its database.
-- A queued run has no worker, so the liveness rule (lock free: interrupted)
-- applies to running runs only.
------------------------------------------------------------------------------
CREATE FUNCTION _etl_worker_slots_free() RETURNS int
    AS 'MODULE_PATHNAME', 'etl_worker_slots_free_sql' LANGUAGE C VOLATILE;

-- How a job asks for its pages, and what their bodies are.
CREATE OR REPLACE FUNCTION _etl_validate_job_requests() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    k text;
    v jsonb;
    c text;
    csv_keys text[] := ARRAY['delimiter', 'quote', 'escape', 'null'];
    delimiter text := ',';
    quote text := '"';
    p text;
    keys text[];
    r jsonb;
    i int;
BEGIN
    IF NEW.concurrency < 1 OR NEW.concurrency > 64 THEN
        RAISE EXCEPTION 'job "%": concurrency must be between 1 and 64, not %', NEW.name, NEW.concurrency
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The most requests of a run in flight at once: 1 sends one at a time; NULL takes etl_exec.default_concurrency (4).';
    END IF;

    -- response formats
    IF NEW.format IS NULL OR NEW.format NOT IN ('json', 'ndjson', 'csv') THEN
        RAISE EXCEPTION 'job "%": unknown format "%"', NEW.name, NEW.format
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use one of: json (records at records_path), ndjson (one JSON record per line), csv (a header row, then one record per row).';
    END IF;
    IF NEW.csv_options IS NOT NULL THEN
        IF NEW.format <> 'csv' THEN
            RAISE EXCEPTION 'job "%": csv_options apply to format csv only, not %', NEW.name, NEW.format
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Set format to ''csv'', or csv_options to NULL.';
        END IF;
        IF jsonb_typeof(NEW.csv_options) <> 'object' THEN
            RAISE EXCEPTION 'job "%": csv_options must be a JSON object', NEW.name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'For example: {"delimiter": ";", "quote": "\"", "null": ""}; NULL takes the defaults.';
        END IF;
        FOR k, v IN SELECT * FROM jsonb_each(NEW.csv_options) LOOP
            IF NOT k = ANY (csv_keys) THEN
                RAISE EXCEPTION 'job "%": unknown csv option "%"', NEW.name, k
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Known options: ' || array_to_string(csv_keys, ', ') || ' (as COPY''s CSV options).';
            END IF;
            IF jsonb_typeof(v) <> 'string' THEN
                RAISE EXCEPTION 'job "%": csv option % must be a string, not %', NEW.name, k, v
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'For example: {"delimiter": ";"}.';
            END IF;
            c := v #>> '{}';
            IF k <> 'null' AND (length(c) <> 1 OR octet_length(c) <> 1 OR c IN (E'\r', E'\n')) THEN
                RAISE EXCEPTION 'job "%": csv option % must be a single one-byte character other than a line break, not "%"', NEW.name, k, c
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'For example: {"delimiter": ";"} or {"delimiter": "\t"}.';
            END IF;
            IF k = 'null' AND c ~ E'[\r\n]' THEN
                RAISE EXCEPTION 'job "%": csv option null must not hold a line break', NEW.name
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'The text of an unquoted field that means NULL, e.g. "" (the default) or "NULL".';
            END IF;
        END LOOP;
        delimiter := coalesce(NEW.csv_options ->> 'delimiter', delimiter);
        quote := coalesce(NEW.csv_options ->> 'quote', quote);
        IF delimiter = quote THEN
            RAISE EXCEPTION 'job "%": csv options delimiter and quote must differ (both are "%")', NEW.name, delimiter
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'For example: {"delimiter": ";", "quote": "\""}.';
        END IF;
        IF strpos(coalesce(NEW.csv_options ->> 'null', ''), delimiter) > 0
           OR strpos(coalesce(NEW.csv_options ->> 'null', ''), quote) > 0 THEN
            RAISE EXCEPTION 'job "%": csv option null must not hold the delimiter or the quote character', NEW.name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'The text of an unquoted field that means NULL, e.g. "" (the default) or "NULL".';
        END IF;
    END IF;
    IF NEW.format <> 'json' THEN
        IF NEW.records_path::text <> '$."value"[*]' THEN
            RAISE EXCEPTION 'job "%": records_path does not apply to format %', NEW.name, NEW.format
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = CASE NEW.format WHEN 'ndjson' THEN 'Each non-empty line is a record: leave records_path at its default (''$.value[*]'').'
                                  ELSE 'Each row after the header is a record: leave records_path at its default (''$.value[*]'').' END;
        END IF;
        IF NEW.pagination IN ('next_link', 'cursor') THEN
            RAISE EXCEPTION 'job "%": % pagination reads the next link or cursor from the body, which format % does not have', NEW.name, NEW.pagination, NEW.format
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Use offset or page paging (they stop at an empty page, or at a short one with stop_on_short_page), link_header (RFC 8288 Link headers), or none.';
        END IF;
        FOREACH k IN ARRAY ARRAY['next_path', 'total_path'] LOOP
            IF NEW.pagination_options ? k THEN
                RAISE EXCEPTION 'job "%": pagination option % reads the body, which format % does not have', NEW.name, k, NEW.format
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = CASE k WHEN 'total_path' THEN 'Remove total_path: offset and page paging stop at an empty page (or at a short one with stop_on_short_page).'
                                 ELSE 'Remove next_path: link_header paging follows the response''s Link headers.' END;
            END IF;
        END LOOP;
    END IF;
    IF NEW.format = 'csv' AND NEW.column_map IS NOT NULL AND jsonb_typeof(NEW.column_map) = 'object' THEN
        -- a csv record is flat: a column takes the field of one header
        FOR k, v IN SELECT * FROM jsonb_each(NEW.column_map) LOOP
            BEGIN
                c := (v #>> '{}')::jsonpath::text;
            EXCEPTION WHEN others THEN
                c := NULL;              -- the first trigger names the bad jsonpath
            END;
            IF c IS NOT NULL AND c !~ '^\$\."([^"\\]|\\.)*"$' THEN
                RAISE EXCEPTION 'job "%": column_map entry "%" must name one CSV header, not %', NEW.name, k, v #>> '{}'
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'With format csv a column_map value is $.Header or $."Header Name": the field under that header (case matters).';
            END IF;
        END LOOP;
    END IF;

    -- >>> requests: POST bodies, body paging, header cursors, response rules
    IF NEW.method IS NULL OR NEW.method NOT IN ('GET', 'POST') THEN
        RAISE EXCEPTION 'job "%": unknown method "%"', NEW.name, NEW.method
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use GET (the default) or POST, in capitals.';
    END IF;
    IF NEW.body IS NOT NULL THEN
        IF NEW.method <> 'POST' THEN
            RAISE EXCEPTION 'job "%": a GET sends no body', NEW.name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Set method to ''POST'', or body to NULL.';
        END IF;
        IF jsonb_typeof(NEW.body) NOT IN ('object', 'array') THEN
            RAISE EXCEPTION 'job "%": body must be a JSON object or array, not %', NEW.name, jsonb_typeof(NEW.body)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'For example: {"query": {"match_all": {}}, "size": "{limit}"} -- "{name}" alone in a string takes the parameter with its JSON type.';
        END IF;
        SELECT m[1] INTO p
        FROM jsonb_path_query(NEW.body, 'lax $.**') AS s(x),
             regexp_matches(s.x #>> '{}', '\{([A-Za-z_][A-Za-z0-9_:.-]*)\}', 'g') AS m
        WHERE jsonb_typeof(s.x) = 'string' AND m[1] ~ '^(secret|oauth2):'
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'job "%": body placeholder {%} would put a secret in the body', NEW.name, p
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Secrets go in headers, bound to their hosts: e.g. headers = ''{"Authorization": "Bearer {secret:api_token}"}''.';
        END IF;
    END IF;
    IF NEW.content_type IS NULL
       OR NEW.content_type !~ '^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[^\r\n]*)?$'
       OR NEW.content_type ~ '[\x01-\x1f\x7f]' THEN
        RAISE EXCEPTION 'job "%": content_type "%" is not a media type', NEW.name, NEW.content_type
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: application/json (the default), or application/json; charset=utf-8.';
    END IF;
    -- paging values in the body: "body:a.b" sets member b of member a
    FOREACH k IN ARRAY ARRAY['skip_param', 'limit_param', 'page_param', 'cursor_param'] LOOP
        p := NEW.pagination_options ->> k;
        CONTINUE WHEN p IS NULL OR p NOT LIKE 'body:%';
        IF NEW.method <> 'POST' THEN
            RAISE EXCEPTION 'job "%": pagination option % puts the value in the body ("%"), and a GET has none', NEW.name, k, p
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Set method to ''POST'' (with a body), or name a query parameter.';
        END IF;
        IF p !~ '^body:[^.\s{}]+(\.[^.\s{}]+)*$' THEN
            RAISE EXCEPTION 'job "%": pagination option % is not a body path: "%"', NEW.name, k, p
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'body: then member names joined by dots, e.g. "body:from" or "body:variables.after".';
        END IF;
        IF NEW.body IS NOT NULL AND jsonb_typeof(NEW.body) <> 'object' THEN
            RAISE EXCEPTION 'job "%": pagination option % sets a member of the body, which is not a JSON object', NEW.name, k
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Make the body an object, e.g. {"query": ..., "variables": {}}.';
        END IF;
        keys := string_to_array(substr(p, 6), '.');
        FOR i IN 1 .. cardinality(keys) - 1 LOOP
            v := NEW.body #> keys[1:i];
            IF v IS NOT NULL AND jsonb_typeof(v) <> 'object' THEN
                RAISE EXCEPTION 'job "%": pagination option % goes through member "%" of the body, which is not an object', NEW.name, k, array_to_string(keys[1:i], '.')
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Name a path of objects in the body (missing ones are made), e.g. "body:variables.after" with "variables": {...}.';
            END IF;
        END LOOP;
    END LOOP;
    -- a next link or cursor from a response header
    IF NEW.pagination_options ? 'next_header' THEN
        p := NEW.pagination_options ->> 'next_header';
        IF NEW.pagination NOT IN ('next_link', 'cursor') THEN
            RAISE EXCEPTION 'job "%": pagination option next_header applies to next_link and cursor paging, not %', NEW.name, NEW.pagination
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'With next_link the header holds the next URL, with cursor the next cursor; link_header paging reads RFC 8288 Link headers by itself.';
        END IF;
        IF p !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$' THEN
            RAISE EXCEPTION 'job "%": pagination option next_header is not a header name: "%"', NEW.name, p
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'A header name alone, e.g. X-Next-Cursor.';
        END IF;
        IF NEW.pagination_options ? 'next_path' THEN
            RAISE EXCEPTION 'job "%": pagination options next_header and next_path both say where the next % is', NEW.name,
                            CASE NEW.pagination WHEN 'cursor' THEN 'cursor' ELSE 'link' END
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Keep one: next_header (a response header) or next_path (a jsonpath into the body).';
        END IF;
    END IF;
    IF NEW.pagination_options ? 'has_more_path' AND NEW.pagination = 'none' THEN
        RAISE EXCEPTION 'job "%": pagination option has_more_path needs paging, and the job''s pagination is none', NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Remove has_more_path, or set the job''s pagination.';
    END IF;
    FOREACH k IN ARRAY ARRAY['next_path', 'total_path', 'has_more_path'] LOOP
        IF NEW.pagination_options ->> k ~ '\[\s*-\s*[0-9]' THEN
            RAISE EXCEPTION 'job "%": pagination option % counts an array from its end with a negative index: %', NEW.name, k, NEW.pagination_options ->> k
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'jsonpath says last for the last element: e.g. $.data[last].id (and last - 1 before it).';
        END IF;
    END LOOP;
    -- response rules
    IF NEW.response_rules IS NOT NULL THEN
        IF jsonb_typeof(NEW.response_rules) <> 'array' THEN
            RAISE EXCEPTION 'job "%": response_rules must be a JSON array of rules', NEW.name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'For example: [{"status": 404, "action": "ignore"}, {"status": 200, "body_contains": "\"error\"", "action": "fail"}].';
        END IF;
        i := 0;
        FOR r IN SELECT * FROM jsonb_array_elements(NEW.response_rules) LOOP
            i := i + 1;
            IF jsonb_typeof(r) <> 'object' THEN
                RAISE EXCEPTION 'job "%": response rule % must be a JSON object, not %', NEW.name, i, r
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'For example: {"status": 404, "action": "ignore"}.';
            END IF;
            SELECT x INTO k FROM jsonb_object_keys(r) x WHERE x NOT IN ('status', 'body_contains', 'action') LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'job "%": response rule % has an unknown key "%"', NEW.name, i, k
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'A rule has status, body_contains (at least one of them) and action.';
            END IF;
            IF r -> 'action' IS NULL OR jsonb_typeof(r -> 'action') <> 'string'
               OR r ->> 'action' NOT IN ('ignore', 'retry', 'fail') THEN
                RAISE EXCEPTION 'job "%": response rule % has an unknown action %', NEW.name, i, coalesce((r -> 'action')::text, '(none)')
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Use one of: ignore (an empty page: the run ends normally after it), retry (as a 5xx), fail.';
            END IF;
            IF NOT (r ? 'status' OR r ? 'body_contains') THEN
                RAISE EXCEPTION 'job "%": response rule % matches every response', NEW.name, i
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Give it a status (404, [500, 599] or "4xx") or a body_contains text, or both.';
            END IF;
            v := r -> 'status';
            IF v IS NOT NULL AND NOT (
                   (jsonb_typeof(v) = 'number' AND v::numeric = trunc(v::numeric) AND v::numeric BETWEEN 100 AND 599)
                OR (jsonb_typeof(v) = 'string' AND v #>> '{}' ~ '^[1-5]xx$')
                OR (jsonb_typeof(v) = 'array' AND jsonb_array_length(v) = 2
                    AND jsonb_typeof(v -> 0) = 'number' AND jsonb_typeof(v -> 1) = 'number'
                    AND (v ->> 0)::numeric = trunc((v ->> 0)::numeric) AND (v ->> 1)::numeric = trunc((v ->> 1)::numeric)
                    AND (v ->> 0)::numeric BETWEEN 100 AND 599 AND (v ->> 1)::numeric BETWEEN 100 AND 599
                    AND (v ->> 0)::numeric <= (v ->> 1)::numeric)) THEN
                RAISE EXCEPTION 'job "%": response rule % has a bad status %', NEW.name, i, v
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'A status is a number (404), a range [500, 599], or a class "4xx", all within 100-599.';
            END IF;
            IF r ? 'body_contains' AND (jsonb_typeof(r -> 'body_contains') <> 'string' OR r ->> 'body_contains' = '') THEN
                RAISE EXCEPTION 'job "%": response rule % has a body_contains that is not a non-empty string', NEW.name, i
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'The text to look for in the response body, e.g. "\"errors\"".';
            END IF;
        END LOOP;
    END IF;
    -- <<< requests
    RETURN NEW;
END
$$;

CREATE FUNCTION _etl_validate_host() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.host := lower(NEW.host);
    IF NEW.host ~ '[/?#@]' THEN
        RAISE EXCEPTION 'dw_etl_hosts.host must be a host name, not a URL: "%"', NEW.host
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give the host alone, e.g. ''api.example.com'', with :port when it is not the scheme''s default: ''api.example.com:8443''.';
    END IF;
    IF NEW.host !~ '^([a-z0-9_]([a-z0-9_-]*)(\.[a-z0-9_]([a-z0-9_-]*))*|\[[0-9a-f:.]+\])(:[0-9]{1,5})?$'
       OR length(regexp_replace(NEW.host, ':[0-9]+$', '')) > 253
       OR coalesce(substring(NEW.host from ':([0-9]{1,5})$')::int BETWEEN 1 AND 65535, true) IS NOT TRUE THEN
        RAISE EXCEPTION 'dw_etl_hosts.host is not a host or host:port: "%"', NEW.host
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A host name or address as the job''s URL has it, with :port when it is not the scheme''s default, e.g. ''api.example.com'', ''10.0.0.5:8443'', ''[2001:db8::1]:8080''.';
    END IF;
    IF NOT (NEW.max_requests_per_second > 0 AND NEW.max_requests_per_second <= 100000) THEN
        RAISE EXCEPTION 'max_requests_per_second of host "%" must be more than 0 and at most 100000, not %',
                        NEW.host, NEW.max_requests_per_second
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'NULL means no limit of ours; 0.5 means one request every two seconds.';
    END IF;
    IF NEW.max_concurrency < 1 THEN
        RAISE EXCEPTION 'max_concurrency of host "%" must be 1 or more, not %', NEW.host, NEW.max_concurrency
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'NULL means no limit of ours; 1 means one request at a time across all runs.';
    END IF;
    RETURN NEW;
END
$$;

-- The shared state of every host a run asked since the server started.
CREATE FUNCTION etl_host_budgets()
RETURNS TABLE (host text, in_flight int, next_start timestamptz, paused_until timestamptz,
               quota_remaining bigint, quota_reset_at timestamptz, requests bigint, throttled bigint)
    AS 'MODULE_PATHNAME', 'etl_host_budgets_sql' LANGUAGE C VOLATILE;

-- What the rate-limit header parser makes of header lines (for tests).
CREATE FUNCTION _etl_rate_headers(headers text) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'etl_rate_headers_sql' LANGUAGE C VOLATILE STRICT;

-- 0.4.0's check, but the query is parsed, not executed (it used to be run
-- with LIMIT 0 as whoever wrote the row: pasted into other SQL, a ")" got
-- out of its subquery, and a function of the writer's ran when a superuser
-- or a SECURITY DEFINER function wrote the row).  SECURITY DEFINER, with a
-- fixed search_path, to call the parser (no operator may call internal
-- functions): it runs only the built-in checks below.
CREATE OR REPLACE FUNCTION _etl_validate_job_partitions() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p jsonb := NEW.partitions;
    d jsonb;
    k text;
    v jsonb;
    kinds text[];
    problem text;
BEGIN
    IF p IS NULL THEN
        RETURN NEW;
    END IF;
    IF jsonb_typeof(p) <> 'object' THEN
        RAISE EXCEPTION 'job "%": partitions must be a JSON object, not %', NEW.name, p
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'One of {"query": "SELECT ..."}, {"dates": {"start": ..., "end": "now", "step": "1 day"}} or {"values": {"name": [...]}}.';
    END IF;
    SELECT array_agg(x ORDER BY x) INTO kinds FROM jsonb_object_keys(p) AS x;
    IF coalesce(cardinality(kinds), 0) <> 1 OR NOT kinds[1] = ANY (ARRAY['query', 'dates', 'values']) THEN
        RAISE EXCEPTION 'job "%": partitions must have exactly one of the keys query, dates or values, not "%"', NEW.name,
                        coalesce(array_to_string(kinds, ', '), '')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: {"query": "SELECT id AS customer_id FROM customers WHERE active"}.';
    END IF;
    IF p ? 'query' THEN
        IF jsonb_typeof(p -> 'query') <> 'string' OR btrim(p ->> 'query') = '' THEN
            RAISE EXCEPTION 'job "%": partitions query must be a non-empty string', NEW.name
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- parsed by the raw parser, never run nor planned: this trigger
        -- fires as whoever writes the row (a superuser restoring the
        -- tables too), so it runs none of the text; the tables it reads
        -- may come later.  It runs at run start, as the run's role.
        BEGIN
            problem := @extschema@._etl_select_problem(p ->> 'query');
        EXCEPTION WHEN syntax_error THEN
            problem := SQLERRM;
        END;
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'job "%": partitions query is not one SELECT: %', NEW.name, problem
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'One SELECT whose columns name the parameters, e.g. SELECT id AS customer_id FROM customers WHERE active ORDER BY id.';
        END IF;
    ELSIF p ? 'values' THEN
        IF jsonb_typeof(p -> 'values') <> 'object' OR p -> 'values' = '{}' THEN
            RAISE EXCEPTION 'job "%": partitions values must be a non-empty object of arrays', NEW.name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'For example: {"values": {"region": ["eu", "us", "ap"]}}.';
        END IF;
        FOR k, v IN SELECT * FROM jsonb_each(p -> 'values') LOOP
            IF jsonb_typeof(v) <> 'array' OR jsonb_array_length(v) = 0
               OR EXISTS (SELECT 1 FROM jsonb_array_elements(v) e WHERE jsonb_typeof(e) NOT IN ('string', 'number', 'boolean')) THEN
                RAISE EXCEPTION 'job "%": partitions values "%" must be a non-empty array of strings, numbers or booleans', NEW.name, k
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'For example: {"values": {"region": ["eu", "us", "ap"]}}.';
            END IF;
        END LOOP;
    ELSE
        d := p -> 'dates';
        IF jsonb_typeof(d) <> 'object' THEN
            RAISE EXCEPTION 'job "%": partitions dates must be an object', NEW.name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'For example: {"dates": {"start": "{last_success_started_at}", "end": "now", "step": "1 day", "lookback": "2 hours"}}.';
        END IF;
        FOR k IN SELECT jsonb_object_keys(d) LOOP
            IF NOT k = ANY (ARRAY['start', 'end', 'step', 'lookback', 'start_param', 'end_param']) THEN
                RAISE EXCEPTION 'job "%": unknown partitions dates option "%"', NEW.name, k
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Known options: start, end, step, lookback, start_param, end_param.';
            END IF;
            IF jsonb_typeof(d -> k) <> 'string' THEN
                RAISE EXCEPTION 'job "%": partitions dates option % must be a string', NEW.name, k
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        END LOOP;
        IF NOT d ? 'start' OR NOT d ? 'step' THEN
            RAISE EXCEPTION 'job "%": partitions dates needs start and step', NEW.name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'For example: {"dates": {"start": "2024-01-01T00:00:00Z", "end": "now", "step": "1 day"}}.';
        END IF;
        FOR k IN SELECT unnest(ARRAY['start', 'end']) LOOP
            CONTINUE WHEN NOT d ? k OR (k = 'end' AND d ->> k = 'now') OR (k = 'start' AND d ->> k = '{last_success_started_at}');
            BEGIN
                PERFORM (d ->> k)::timestamptz;
            EXCEPTION WHEN others THEN
                RAISE EXCEPTION 'job "%": partitions dates % "%" is not a timestamp', NEW.name, k, d ->> k
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'An ISO 8601 timestamp such as 2024-01-01T00:00:00Z, "now" (end), or "{last_success_started_at}" (start).';
            END;
        END LOOP;
        FOR k IN SELECT unnest(ARRAY['step', 'lookback']) LOOP
            CONTINUE WHEN NOT d ? k;
            BEGIN
                PERFORM (d ->> k)::interval;
            EXCEPTION WHEN others THEN
                RAISE EXCEPTION 'job "%": partitions dates % "%" is not an interval', NEW.name, k, d ->> k
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'For example: "1 day", "6 hours", "15 minutes".';
            END;
            IF (k = 'step' AND (d ->> k)::interval < interval '1 second') OR (k = 'lookback' AND (d ->> k)::interval < interval '0') THEN
                RAISE EXCEPTION 'job "%": partitions dates % must be %, not %', NEW.name, k,
                                CASE WHEN k = 'step' THEN 'at least 1 second' ELSE '0 or more' END, d ->> k
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'For example: "1 day".';
            END IF;
        END LOOP;
    END IF;
    RETURN NEW;
END
$$;

-- 0.4.0's, but the query runs as it is, read-only (it was pasted into a
-- wrapping SELECT, which a ")" in it could leave).
CREATE OR REPLACE FUNCTION _etl_freeze_partitions(j dw_etl_jobs, p_parameters jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    p jsonb := j.partitions;
    d jsonb;
    result jsonb;
    k text;
    v jsonb;
    t_start timestamptz;
    t_end timestamptz;
    step interval;
    lookback interval;
    last_end text;
    n bigint;
BEGIN
    IF p IS NULL THEN
        RETURN NULL;
    END IF;
    IF p ? 'query' THEN
        -- as the caller, read-only, the text as it is (one SELECT)
        result := @extschema@._etl_partition_rows_as_caller(p ->> 'query');
    ELSIF p ? 'values' THEN
        result := '[{}]';
        FOR k, v IN SELECT * FROM jsonb_each(p -> 'values') LOOP
            SELECT jsonb_agg(r.value || jsonb_build_object(k, e.value) ORDER BY r.ord, e.ord) INTO result
            FROM jsonb_array_elements(result) WITH ORDINALITY AS r(value, ord)
            CROSS JOIN jsonb_array_elements(v) WITH ORDINALITY AS e(value, ord);
        END LOOP;
    ELSE
        d := p -> 'dates';
        step := (d ->> 'step')::interval;
        lookback := coalesce((d ->> 'lookback')::interval, interval '0');
        t_end := CASE WHEN coalesce(d ->> 'end', 'now') = 'now' THEN now() ELSE (d ->> 'end')::timestamptz END;
        IF d ->> 'start' = '{last_success_started_at}' THEN
            -- where the last successful run's windows ended
            SELECT rp.parameters ->> coalesce(d ->> 'end_param', 'to') INTO last_end
            FROM @extschema@.dw_etl_runs r
            JOIN @extschema@.dw_etl_run_partitions rp ON rp.run_id = r.run_id
            WHERE r.job_id = j.job_id AND r.status = 'succeeded' AND NOT r.dry_run
            ORDER BY r.run_id DESC, rp.partition_index DESC LIMIT 1;
            IF last_end IS NULL THEN
                SELECT to_char(max(r.started_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') INTO last_end
                FROM @extschema@.dw_etl_runs r
                WHERE r.job_id = j.job_id AND r.status = 'succeeded' AND NOT r.dry_run;
            END IF;
            last_end := coalesce(last_end, p_parameters ->> 'last_success_started_at');
            IF last_end IS NULL THEN
                RAISE EXCEPTION 'partitions dates start {last_success_started_at} has no value yet: job % has no successful run', j.job_id
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = format('Give a first value in the job''s parameters, e.g. UPDATE dw_etl_jobs SET parameters = parameters || ''{"last_success_started_at": "2024-01-01T00:00:00Z"}'' WHERE job_id = %s;', j.job_id);
            END IF;
            t_start := last_end::timestamptz - lookback;
        ELSE
            t_start := (d ->> 'start')::timestamptz;
        END IF;
        SELECT count(*) INTO n FROM generate_series(t_start, t_end - interval '1 microsecond', step);
        IF n > 100000 THEN
            RAISE EXCEPTION 'partitions dates make % windows of % from % to %; at most 100000', n, step, t_start, t_end
                USING ERRCODE = 'program_limit_exceeded',
                      HINT = 'Use a longer step, or a later start.';
        END IF;
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   coalesce(d ->> 'start_param', 'from'), to_char(w AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                   coalesce(d ->> 'end_param', 'to'), to_char(least(w + step, t_end) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                   ORDER BY w), '[]')
        INTO result
        FROM generate_series(t_start, t_end - interval '1 microsecond', step) AS w;
    END IF;
    IF jsonb_array_length(result) > 100000 THEN
        RAISE EXCEPTION 'job % has % partitions; at most 100000', j.job_id, jsonb_array_length(result)
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    RETURN result;
END
$$;

CREATE FUNCTION _etl_start_worker(mode text, job_id int, run_id bigint, timeout_seconds int,
                                  dry_run boolean, parameters jsonb, partitions jsonb DEFAULT NULL)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'etl_start_worker' LANGUAGE C VOLATILE;

-- Where a job may use secrets: {secret:NAME} in the URL's query string (a
-- query parameter is what a request to another origin leaves out), and in
-- header values; {oauth2:NAME} in header values; {basic:NAME} as a whole
-- header value.
CREATE FUNCTION _etl_validate_job_auth() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bad text;
    k text;
BEGIN
    SELECT m[1] INTO bad FROM regexp_matches(NEW.url, '\{((oauth2|basic):[^{}]*)\}', 'g') AS m LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'job "%": {%} cannot be used in the URL', NEW.name, bad
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'OAuth2 tokens and HTTP Basic credentials go in a header; only {secret:NAME} may be in the URL''s query string.',
                  HINT = 'For example: headers = ''{"Authorization": "Bearer {oauth2:NAME}"}'' or ''{"Authorization": "{basic:NAME}"}''.';
    END IF;
    IF NEW.url ~ '\{secret:\}' THEN
        RAISE EXCEPTION 'job "%": {secret:} in the URL needs a secret name', NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: https://api.example.com/v1/items?api_key={secret:my_api_key}';
    END IF;
    SELECT m[1] INTO bad
    FROM regexp_matches(substring(NEW.url from '^[^?#]*') || coalesce(substring(NEW.url from '#.*$'), ''),
                        '\{(secret:[^{}]+)\}', 'g') AS m LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'job "%": {%} must be in the URL''s query string, not in its path', NEW.name, bad
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A request to an origin the secret does not list goes without the query parameter that holds it; a path cannot do without a part.',
                  HINT = format('For example: https://api.example.com/v1/items?api_key={%s}', bad);
    END IF;
    SELECT e.key, m[1] INTO k, bad
    FROM jsonb_each_text(CASE WHEN jsonb_typeof(NEW.headers) = 'object' THEN NEW.headers ELSE '{}' END) AS e,
         regexp_matches(e.value, '\{(secret|oauth2|basic):\}', 'g') AS m LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'job "%": header "%" has {%:} without a secret name', NEW.name, k, bad
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('For example: {"Authorization": "%s"}',
                                CASE bad WHEN 'basic' THEN '{basic:my_login}' ELSE format('Bearer {%s:my_api}', bad) END);
    END IF;
    SELECT e.key INTO k
    FROM jsonb_each_text(CASE WHEN jsonb_typeof(NEW.headers) = 'object' THEN NEW.headers ELSE '{}' END) AS e
    WHERE e.value ~ '\{basic:' AND e.value !~ '^\{basic:[^{}]+\}$' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'job "%": header "%" must be {basic:NAME} alone', NEW.name, k
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'It becomes "Basic " followed by the base64 of user:password from secret NAME.',
                  HINT = 'For example: {"Authorization": "{basic:my_login}"} with secret my_login = {"user": "...", "password": "..."}.';
    END IF;
    RETURN NEW;
END
$$;

-- The shapes of the JSON secrets: an OAuth2 client (client credentials, or
-- a refresh token) and an HTTP Basic user and password.  Messages name the
-- keys, never a value.  A plain value (an API key, a token) is left alone.
CREATE FUNCTION _etl_validate_secret_shape() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    doc jsonb;
    grant_type text;
    needed text[];
    bad text;
BEGIN
    IF NEW.value !~ '^\s*\{' THEN
        RETURN NEW;
    END IF;
    BEGIN
        doc := NEW.value::jsonb;
    EXCEPTION WHEN others THEN
        RAISE EXCEPTION 'secret "%" starts like a JSON object but is not valid JSON', NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'OAuth2 clients and HTTP Basic logins are JSON objects, e.g. {"user": "...", "password": "..."}; '
                         'check the quotes and commas.';
    END;
    IF doc ?| ARRAY['token_url', 'grant_type', 'refresh_token', 'client_id', 'client_secret'] THEN
        IF doc ? 'grant_type' AND (jsonb_typeof(doc -> 'grant_type') <> 'string'
                                   OR doc ->> 'grant_type' NOT IN ('client_credentials', 'refresh_token')) THEN
            RAISE EXCEPTION 'secret "%": unknown OAuth2 grant_type %', NEW.name, doc -> 'grant_type'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Use "client_credentials" (the default: client_id and client_secret) or "refresh_token" (refresh_token and client_id; client_secret optional).';
        END IF;
        IF doc ? 'refresh_token' AND NOT doc ? 'grant_type' THEN
            RAISE EXCEPTION 'secret "%" has a refresh_token but no grant_type', NEW.name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Add "grant_type": "refresh_token" to use the refresh-token grant.';
        END IF;
        grant_type := coalesce(doc ->> 'grant_type', 'client_credentials');
        needed := ARRAY['token_url', 'client_id']
                  || CASE grant_type WHEN 'refresh_token' THEN ARRAY['refresh_token'] ELSE ARRAY['client_secret'] END;
        SELECT string_agg(n, ', ' ORDER BY ord) INTO bad FROM unnest(needed) WITH ORDINALITY AS t(n, ord)
        WHERE jsonb_typeof(doc -> n) IS DISTINCT FROM 'string' OR doc ->> n = '';
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'secret "%": an OAuth2 % client needs %', NEW.name, grant_type, bad
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'Each as a non-empty JSON string.',
                      HINT = CASE grant_type
                             WHEN 'refresh_token' THEN 'For example: {"token_url": "https://auth.example.com/oauth/token", "grant_type": "refresh_token", "refresh_token": "...", "client_id": "...", "client_secret": "..." (optional), "scope": "..." (optional)}'
                             ELSE 'For example: {"token_url": "https://auth.example.com/oauth/token", "client_id": "...", "client_secret": "...", "scope": "..." (optional)}'
                             END;
        END IF;
        SELECT string_agg(n, ', ') INTO bad FROM unnest(ARRAY['client_secret', 'scope']) AS n
        WHERE doc ? n AND jsonb_typeof(doc -> n) <> 'string';
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'secret "%": % must be a JSON string', NEW.name, bad
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF doc ->> 'token_url' !~* '^https?://[^/?#]+' THEN
            RAISE EXCEPTION 'secret "%": token_url must be an http:// or https:// URL', NEW.name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'The OAuth2 token endpoint, e.g. https://auth.example.com/oauth/token.';
        END IF;
    ELSIF doc ?| ARRAY['user', 'password'] THEN
        SELECT string_agg(n, ', ') INTO bad FROM unnest(ARRAY['user', 'password']) AS n
        WHERE jsonb_typeof(doc -> n) IS DISTINCT FROM 'string';
        IF bad IS NOT NULL OR doc ->> 'user' = '' THEN
            RAISE EXCEPTION 'secret "%": an HTTP Basic login needs user and password as JSON strings (a non-empty user)', NEW.name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'For example: {"user": "etl", "password": "..."}, used as the header value {basic:NAME}.';
        END IF;
        IF strpos(doc ->> 'user', ':') > 0 THEN
            RAISE EXCEPTION 'secret "%": an HTTP Basic user must not contain a colon', NEW.name
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'Basic sends user:password; the server splits it at the first colon (RFC 7617).';
        END IF;
        IF doc ->> 'user' ~ '[\x01-\x1f\x7f]' OR doc ->> 'password' ~ '[\x01-\x1f\x7f]' THEN
            RAISE EXCEPTION 'secret "%": an HTTP Basic user or password must not contain control characters', NEW.name
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION _etl_validate_job_schema() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.on_new_keys NOT IN ('ignore', 'add_columns', 'fail') THEN
        RAISE EXCEPTION 'job "%": on_new_keys must be ignore, add_columns or fail, not "%"', NEW.name, NEW.on_new_keys
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'ignore skips keys no column takes; add_columns adds a column for each; fail stops the run.';
    END IF;
    -- ({param:NAME} entries leave the other columns mapped by name)
    IF NEW.on_new_keys <> 'ignore' AND NEW.column_map IS NOT NULL AND jsonb_typeof(NEW.column_map) = 'object'
       AND EXISTS (SELECT 1 FROM jsonb_each(NEW.column_map) e
                   WHERE jsonb_typeof(e.value) <> 'string' OR e.value #>> '{}' !~ '^\{param:[^{}]+\}$') THEN
        RAISE EXCEPTION 'job "%": on_new_keys % needs a job that maps keys by name, and this one has a column_map',
                        NEW.name, NEW.on_new_keys
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A column_map with jsonpaths names the keys the job takes: every other key is not the job''s, so none is new.',
                  HINT = 'Set column_map to NULL (columns named like the keys, case aside; {param:NAME} entries may stay), or on_new_keys to ignore.';
    END IF;
    RETURN NEW;
END
$$;

-- a sample run: a dry run that reads sample_pages pages, loads nothing,
-- needs no target, and reports its keys' statistics in run_context.dry_run
CREATE FUNCTION _etl_start_sample(job_id int, timeout_seconds int, parameters jsonb,
                                  partitions jsonb, sample_pages int)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'etl_start_sample' LANGUAGE C VOLATILE;

-- one statement run as the caller (the table etl_create_table creates is theirs)
CREATE FUNCTION _etl_execute_as_caller(sql text) RETURNS void
    AS 'MODULE_PATHNAME', 'etl_execute_as_caller' LANGUAGE C VOLATILE STRICT;

-- A record key as a column name: snake_case (birthDate -> birth_date,
-- "Patient ID" -> patient_id), at most 63 bytes, never empty.
CREATE FUNCTION _etl_column_name(p_key text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    n text;
BEGIN
    n := regexp_replace(p_key, '([[:lower:][:digit:]])([[:upper:]])', '\1_\2', 'g');
    n := regexp_replace(n, '([[:upper:]])([[:upper:]][[:lower:]])', '\1_\2', 'g');
    n := btrim(lower(regexp_replace(n, '[^[:alnum:]]+', '_', 'g')), '_');
    IF n = '' THEN
        n := 'column';
    ELSIF n ~ '^[0-9]' THEN
        n := '_' || n;
    END IF;
    WHILE octet_length(n) > 63 LOOP
        n := left(n, -1);
    END LOOP;
    RETURN n;
END
$$;

-- The job's sample, as a sample run reports it (type_infer.c): it runs in a
-- worker as any run of the job would (secrets, allowed hosts, OAuth, rate
-- budgets, formats, POST bodies, partitions), as the caller's run; this
-- waits for it, and cancels it when the wait is cancelled.
CREATE FUNCTION _etl_sample(j dw_etl_jobs, p_parameters jsonb, p_sample_pages int) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    params jsonb;
    parts jsonb;
    rid bigint;
    run jsonb;
    lines text[];
    msg_detail text;
    msg_hint text;
BEGIN
    IF p_sample_pages IS NULL OR p_sample_pages < 1 OR p_sample_pages > 1000 THEN
        RAISE EXCEPTION 'sample_pages must be between 1 and 1000, not %', coalesce(p_sample_pages::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The default, 3, reads the first three pages.';
    END IF;
    IF p_parameters IS NOT NULL AND jsonb_typeof(p_parameters) <> 'object' THEN
        RAISE EXCEPTION 'parameters must be a JSON object, not %', p_parameters
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: parameters := ''{"date": "2024-01-01"}''';
    END IF;
    IF NOT j.enabled THEN
        RAISE EXCEPTION 'etl_exec job % (%) is disabled', j.job_id, j.name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Enable it with UPDATE dw_etl_jobs SET enabled = true WHERE job_id = %s;', j.job_id);
    END IF;
    params := j.parameters || coalesce(p_parameters, '{}');
    -- {max:column} and the like read the target: only when there is one
    -- (and the caller may see it: a sample needs no target)
    BEGIN
        IF @extschema@._etl_resolve_target(j.target_table) IS NOT NULL THEN
            params := params || @extschema@._etl_history_parameters(j, coalesce(p_parameters, '{}'));
        END IF;
    EXCEPTION WHEN insufficient_privilege THEN
        NULL;
    END;
    parts := @extschema@._etl_freeze_partitions(j, params);
    IF parts IS NULL OR jsonb_array_length(parts) > 0 THEN
        PERFORM @extschema@._etl_check_url_parameters(j.url, params || coalesce(parts -> 0, '{}'));
    END IF;
    rid := @extschema@._etl_start_sample(j.job_id, @extschema@._etl_effective_timeout(j, NULL),
                                         params, parts, p_sample_pages);
    BEGIN
        PERFORM @extschema@._etl_wait_run_end(rid, NULL);
    EXCEPTION WHEN query_canceled THEN
        -- a cancel or statement_timeout of the caller ends the sample run too
        PERFORM @extschema@._etl_signal_run(rid);
        RAISE;
    END;
    run := @extschema@._etl_fresh_run(rid);
    IF run ->> 'status' IN ('queued', 'running') THEN
        PERFORM @extschema@._etl_reap(NULL, rid);
        run := @extschema@._etl_fresh_run(rid);
    END IF;
    IF run ->> 'status' <> 'succeeded' THEN
        lines := string_to_array(coalesce(run ->> 'error_message', 'no message'), E'\n');
        SELECT string_agg(CASE WHEN l LIKE 'DETAIL: %' THEN substr(l, 9)
                               WHEN l LIKE 'CONTEXT: %' THEN 'While: ' || substr(l, 10)
                               ELSE l END, E'\n' ORDER BY n)
          INTO msg_detail
          FROM unnest(lines[2:]) WITH ORDINALITY AS t(l, n) WHERE l NOT LIKE 'HINT: %';
        SELECT substr(l, 7) INTO msg_hint FROM unnest(lines[2:]) AS t(l) WHERE l LIKE 'HINT: %' LIMIT 1;
        msg_hint := coalesce(msg_hint, format('The sample run is dry run %s in dw_etl_runs.', rid));
        IF msg_detail IS NULL THEN
            RAISE EXCEPTION 'could not sample job % (sample run % %): %', j.job_id, rid, run ->> 'status', lines[1]
                USING ERRCODE = coalesce(run ->> 'sqlstate',
                                         CASE run ->> 'status' WHEN 'failed' THEN 'ET001' WHEN 'timed_out' THEN 'ET002'
                                                               WHEN 'cancelled' THEN 'ET003' ELSE 'ET004' END),
                      HINT = msg_hint;
        END IF;
        RAISE EXCEPTION 'could not sample job % (sample run % %): %', j.job_id, rid, run ->> 'status', lines[1]
            USING ERRCODE = coalesce(run ->> 'sqlstate',
                                     CASE run ->> 'status' WHEN 'failed' THEN 'ET001' WHEN 'timed_out' THEN 'ET002'
                                                           WHEN 'cancelled' THEN 'ET003' ELSE 'ET004' END),
                  DETAIL = msg_detail, HINT = msg_hint;
    END IF;
    -- (with the parameters its first partition asked with: for {param:NAME} columns)
    RETURN (run -> 'run_context' -> 'dry_run')
           || jsonb_build_object('parameters', params || coalesce(parts -> 0, '{}'));
END
$$;

-- The table a sample calls for: the CREATE TABLE statement, the column_map
-- that takes each key to its column when names changed (else NULL), and the
-- whole text etl_infer_table returns (statement, suggested key, column_map).
CREATE FUNCTION _etl_infer(j dw_etl_jobs, p_parameters jsonb, p_sample_pages int,
                           OUT create_statement text, OUT column_map jsonb, OUT ddl text)
LANGUAGE plpgsql AS $$
DECLARE
    sample jsonb := @extschema@._etl_sample(j, p_parameters, p_sample_pages);
    k record;
    -- (system column names are taken: xmin -> xmin_2)
    taken text[] := '{tableoid,cmax,xmax,cmin,xmin,ctid}';
    -- a job that watches for new keys maps them by name: columns named as the keys
    as_keys boolean := j.on_new_keys <> 'ignore';
    param record;
    param_value jsonb;
    param_cols text[] := '{}';
    notes text := '';
    name text;
    base text;
    n int;
    cols text[] := '{}';
    map jsonb := '{}';
    renamed boolean := false;
    key_name text;
    key_column text;
    target text;
BEGIN
    IF coalesce((sample ->> 'records')::bigint, 0) = 0 THEN
        RAISE EXCEPTION 'the % sampled pages of job % have no records: nothing to infer a table from',
                        coalesce(sample ->> 'pages', '0'), j.job_id
            USING ERRCODE = 'no_data_found',
                  HINT = 'Check the job''s records_path and parameters, or sample more pages (sample_pages).';
    END IF;
    -- the key to suggest: unique and never null in a sample of 2 records or
    -- more; "id" first, then names ending in id, then bigint and uuid keys
    SELECT e ->> 'key' INTO key_name
      FROM jsonb_array_elements(sample -> 'keys') WITH ORDINALITY AS t(e, i)
     WHERE (e ->> 'unique')::boolean AND (e ->> 'nulls')::bigint = 0
       AND (e ->> 'records')::bigint = (sample ->> 'records')::bigint AND (e ->> 'records')::bigint > 1
       AND e ->> 'type' IN ('bigint', 'text', 'uuid')
     ORDER BY lower(e ->> 'key') = 'id' DESC, @extschema@._etl_column_name(e ->> 'key') ~ '(^|_)id$' DESC,
              e ->> 'type' <> 'text' DESC, i
     LIMIT 1;
    -- columns the job's column_map gives a parameter ({param:NAME}) come
    -- first, of the type of the value the sample asked with; jsonpath entries
    -- are the job's own mapping, which a table made from the keys replaces
    IF j.column_map IS NOT NULL THEN
        FOR param IN SELECT e.key AS col, substring(e.value #>> '{}' FROM '^\{param:([^{}]+)\}$') AS name
                     FROM jsonb_each(j.column_map) e ORDER BY e.key LOOP
            IF param.name IS NULL THEN
                notes := E'-- the job''s column_map has jsonpaths: this table follows the record keys instead\n';
                CONTINUE;
            END IF;
            param_value := sample -> 'parameters' -> param.name;
            cols := cols || format('    %s %s', quote_ident(param.col),
                                   CASE jsonb_typeof(param_value)
                                       WHEN 'number' THEN CASE WHEN param_value::text ~ '^-?[0-9]{1,18}$' THEN 'bigint' ELSE 'numeric' END
                                       WHEN 'boolean' THEN 'boolean'
                                       WHEN 'object' THEN 'jsonb' WHEN 'array' THEN 'jsonb'
                                       ELSE 'text' END);
            taken := taken || param.col;
            param_cols := param_cols || param.col;
            map := map || jsonb_build_object(param.col, '{param:' || param.name || '}');
        END LOOP;
    END IF;
    -- the columns: the key first, then in the order the sample has the keys
    FOR k IN SELECT e ->> 'key' AS key, e ->> 'type' AS typ
             FROM jsonb_array_elements(sample -> 'keys') WITH ORDINALITY AS t(e, i)
             ORDER BY e ->> 'key' IS NOT DISTINCT FROM key_name DESC, i
    LOOP
        IF as_keys THEN
            IF k.key = '' OR octet_length(k.key) > 63 OR k.key = ANY (taken) THEN
                RAISE EXCEPTION 'key "%" of job % cannot be a column of its own name, which on_new_keys % needs',
                                k.key, j.job_id, j.on_new_keys
                    USING ERRCODE = 'invalid_name',
                          DETAIL = 'A job that watches for new keys maps every key to the column of its name; this key is empty, longer than 63 bytes, a system column''s name or a parameter column''s.',
                          HINT = 'Set the job''s on_new_keys to ignore (the table then gets snake_case names and a column_map), or create the table yourself.';
            END IF;
            name := k.key;
        ELSE
            base := @extschema@._etl_column_name(k.key);
            name := base;
            n := 1;
            WHILE name = ANY (taken) LOOP
                n := n + 1;
                name := base;
                -- (63 bytes at most, in whole characters)
                WHILE octet_length(name || '_' || n) > 63 LOOP
                    name := left(name, -1);
                END LOOP;
                name := name || '_' || n;
            END LOOP;
        END IF;
        taken := taken || name;
        cols := cols || format('    %s %s', quote_ident(name), k.typ);
        -- $."key": any key, quoted as json_path.c reads it
        map := map || jsonb_build_object(name, '$."' || replace(replace(k.key, '\', '\\'), '"', '\"') || '"');
        -- (the loader maps a key to the column of its name, ASCII case aside)
        renamed := renamed OR translate(name, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
                              <> translate(k.key, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz');
        IF k.key = key_name THEN
            key_column := name;
        END IF;
    END LOOP;
    SELECT string_agg(quote_ident(x), '.' ORDER BY i) INTO target
      FROM unnest(parse_ident(j.target_table)) WITH ORDINALITY AS t(x, i);
    create_statement := format(E'CREATE TABLE %s (\n%s\n)', target, array_to_string(cols, E',\n'));
    column_map := CASE WHEN renamed THEN map END;
    ddl := format(E'-- job %s: %s records on %s sampled pages\n%s%s;\n', j.job_id,
                  sample ->> 'records', sample ->> 'pages', notes, create_statement);
    IF key_column IS NOT NULL THEN
        ddl := ddl || format(E'-- key: %s is unique and never null in the sample (an upsert''s key_columns: ''{%s}'', with a unique index on it)\n',
                             quote_ident(key_column), quote_ident(key_column));
    END IF;
    IF renamed THEN
        ddl := ddl || format(E'-- column names differ from the record keys: the job needs this column_map\nUPDATE %s SET column_map = %L WHERE job_id = %s;\n',
                             '@extschema@.dw_etl_jobs', column_map::text, j.job_id);
    END IF;
END
$$;

CREATE FUNCTION _etl_job_for_schema(p_job_id int) RETURNS dw_etl_jobs
LANGUAGE plpgsql AS $$
DECLARE
    j @extschema@.dw_etl_jobs;
BEGIN
    SELECT * INTO j FROM @extschema@.dw_etl_jobs x WHERE x.job_id = p_job_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'etl_exec job % does not exist', coalesce(p_job_id::text, 'NULL')
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT job_id, name FROM dw_etl_jobs lists the jobs.';
    END IF;
    IF btrim(coalesce(j.target_table, '')) = '' THEN
        RAISE EXCEPTION 'etl_exec job % has no target_table to infer', j.job_id
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Set the job''s target_table to the name the table should have.';
    END IF;
    RETURN j;
END
$$;

CREATE FUNCTION _etl_infer_table(job_id int, parameters jsonb DEFAULT NULL, sample_pages int DEFAULT 3)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    r := @extschema@._etl_infer(@extschema@._etl_job_for_schema(_etl_infer_table.job_id),
                                _etl_infer_table.parameters, _etl_infer_table.sample_pages);
    RETURN r.ddl;
END
$$;

-- 0.5.0's, but the job's column_map is updated as the caller.
CREATE OR REPLACE FUNCTION _etl_create_table(job_id int, parameters jsonb DEFAULT NULL, sample_pages int DEFAULT 3)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j @extschema@.dw_etl_jobs := @extschema@._etl_job_for_schema(_etl_create_table.job_id);
    existing text := @extschema@._etl_resolve_target(j.target_table);
    r record;
BEGIN
    IF existing IS NOT NULL THEN
        RAISE EXCEPTION 'target table % of etl_exec job % exists already', existing, j.job_id
            USING ERRCODE = 'duplicate_table',
                  HINT = format('etl_create_table creates the table; SELECT etl_infer_table(%s) shows what it would create.', j.job_id);
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_each(j.column_map) e WHERE e.value #>> '{}' !~ '^\{param:[^{}]+\}$') THEN
        RAISE EXCEPTION 'etl_exec job % has a column_map with jsonpaths, which a table made from the record keys would not fit', j.job_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'etl_create_table names the columns after the record keys and sets the column_map that takes each key to its column.',
                  HINT = format('Set the job''s column_map to NULL first ({param:NAME} entries may stay), or create the table yourself; SELECT etl_infer_table(%s) shows the table the keys call for.', j.job_id);
    END IF;
    r := @extschema@._etl_infer(j, _etl_create_table.parameters, _etl_create_table.sample_pages);
    -- the job's column_map changes only for a role that may change it
    IF r.column_map IS NOT NULL AND r.column_map IS DISTINCT FROM j.column_map
       AND NOT has_column_privilege(@extschema@._etl_caller(), '@extschema@.dw_etl_jobs', 'column_map', 'UPDATE') THEN
        RAISE EXCEPTION 'permission denied to set the column_map of etl_exec job %, which the table etl_create_table would create needs', j.job_id
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'Its column names differ from the record keys, so the job needs a column_map to load it; nothing was created.',
                  HINT = format('Let a role that may UPDATE dw_etl_jobs run it, or run the statements SELECT etl_infer_table(%s) shows as such a role.', j.job_id);
    END IF;
    PERFORM @extschema@._etl_execute_as_caller(r.create_statement);
    IF r.column_map IS NOT NULL AND r.column_map IS DISTINCT FROM j.column_map THEN
        -- as the caller, whose right it is (checked above): the job's
        -- triggers fire as the role that changes the row, never as ours
        PERFORM @extschema@._etl_execute_as_caller(
            format('UPDATE %I.dw_etl_jobs SET column_map = %L::jsonb WHERE job_id = %s',
                   '@extschema@', r.column_map::text, j.job_id));
    END IF;
    RETURN r.ddl;
END
$$;

CREATE FUNCTION etl_infer_table(job_id int, parameters jsonb DEFAULT NULL, sample_pages int DEFAULT 3)
    RETURNS text AS 'MODULE_PATHNAME', 'etl_api_call' LANGUAGE C VOLATILE;

CREATE FUNCTION etl_create_table(job_id int, parameters jsonb DEFAULT NULL, sample_pages int DEFAULT 3)
    RETURNS text AS 'MODULE_PATHNAME', 'etl_api_call' LANGUAGE C VOLATILE;

CREATE FUNCTION _etl_validate_job_rejects() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.on_bad_record NOT IN ('fail', 'reject') THEN
        RAISE EXCEPTION 'job "%": on_bad_record must be ''fail'' or ''reject'', not "%"', NEW.name, NEW.on_bad_record
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = '''fail'' fails the run on a record a column or a constraint refuses; ''reject'' keeps the record in dw_etl_rejects and loads the rest.';
    END IF;
    IF NEW.max_rejected < 0 THEN
        RAISE EXCEPTION 'job "%": max_rejected must be 0 or more, not %', NEW.name, NEW.max_rejected
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'NULL means no limit; 0 fails the run on the first bad record.';
    END IF;
    RETURN NEW;
END
$$;

------------------------------------------------------------------------------
-- A job's query text: checked by the raw parser, run only as the run's role
------------------------------------------------------------------------------
-- Why a text is not exactly one plain SELECT (NULL: it is), by the raw
-- parser alone: no name looked up, no function called, nothing planned.
CREATE FUNCTION _etl_select_problem(sql text) RETURNS text
    AS 'MODULE_PATHNAME', 'etl_select_problem_sql' LANGUAGE C STABLE STRICT;

-- A partitions query's rows as a JSON array, run as the caller, read-only,
-- in a restricted operation, only when it is one plain SELECT.
CREATE FUNCTION _etl_partition_rows_as_caller(query text) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'etl_partition_rows_as_caller' LANGUAGE C VOLATILE STRICT;

------------------------------------------------------------------------------
-- Dot segments in path parameters, percent-encoded too
------------------------------------------------------------------------------
CREATE FUNCTION _etl_url_holds_dot_segment(value text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'etl_url_holds_dot_segment_sql' LANGUAGE C IMMUTABLE STRICT;

------------------------------------------------------------------------------
-- The page reader, for the differential test against jsonb
------------------------------------------------------------------------------
-- What the one-pass page reader makes of a JSON page mapped by name onto
-- columns: + or - (records_path led somewhere, or not), the columns it
-- mentions, a line, then its records as COPY text;
-- NULL when it leaves the page to the jsonb path (for tests).
CREATE FUNCTION _etl_scan_page(body text, records_path text, columns text[], jsonb_columns boolean[])
    RETURNS text AS 'MODULE_PATHNAME', 'etl_scan_page_sql' LANGUAGE C IMMUTABLE STRICT;

------------------------------------------------------------------------------
-- Views
------------------------------------------------------------------------------

CREATE OR REPLACE VIEW etl_job_timeout_report AS
WITH runs AS (
    SELECT r.*, row_number() OVER (PARTITION BY r.job_id ORDER BY r.run_id DESC) AS recency
    FROM @extschema@.dw_etl_runs r WHERE NOT r.dry_run
), stats AS (
    SELECT r.job_id,
           count(*) AS runs,
           count(*) FILTER (WHERE r.status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE r.status = 'failed') AS failed,
           sum((SELECT count(*) FROM jsonb_array_elements(r.run_context -> 'segments') s
                WHERE s ->> 'status' = 'timed_out')) AS timeouts,
           count(*) FILTER (WHERE r.status = 'timed_out') AS timed_out_now,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY r.duration_ms) FILTER (WHERE r.status = 'succeeded' AND r.recency <= 20) AS p50_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY r.duration_ms) FILTER (WHERE r.status = 'succeeded' AND r.recency <= 20) AS p95_ms,
           max(r.duration_ms) FILTER (WHERE r.status = 'succeeded') AS max_ms,
           max(r.timeout_seconds) FILTER (WHERE r.recency = 1) AS last_timeout_seconds
    FROM runs r GROUP BY r.job_id
)
SELECT j.job_id,
       j.name,
       coalesce(s.runs, 0) AS runs,
       coalesce(s.succeeded, 0) AS succeeded,
       coalesce(s.failed, 0) AS failed,
       coalesce(s.timeouts, 0) AS timeouts,
       round((s.p50_ms / 1000.0)::numeric, 1) AS p50_seconds,
       round((s.p95_ms / 1000.0)::numeric, 1) AS p95_seconds,
       round((s.max_ms / 1000.0)::numeric, 1) AS max_seconds,
       CASE WHEN j.timeout_seconds = 0 THEN coalesce(@extschema@.etl_recommended_timeout(j.job_id),
                                                   d.default_timeout)
            ELSE coalesce(j.timeout_seconds, d.default_timeout)
       END AS current_timeout_seconds,
       @extschema@.etl_recommended_timeout(j.job_id) AS recommended_timeout_seconds,
       CASE
           WHEN coalesce(s.timed_out_now, 0) > 0 THEN 'timed out: runs are waiting to be resumed'
           WHEN s.p95_ms IS NOT NULL
                AND s.p95_ms / 1000.0 > 0.8 * coalesce(nullif(j.timeout_seconds, 0),
                                                       d.default_timeout)
               THEN 'at risk: p95 duration is over 80% of the timeout'
           WHEN coalesce(s.timeouts, 0) > 0 THEN 'has timed out before'
           ELSE 'ok'
       END AS risk
FROM @extschema@.dw_etl_jobs j
CROSS JOIN (SELECT (@extschema@.etl_settings() ->> 'default_timeout_seconds')::int AS default_timeout) d
LEFT JOIN stats s ON s.job_id = j.job_id;

-- The progress view reads the runs as its owner (a queued run's position
-- counts every queued run), then shows the caller the rows of its roles.
CREATE OR REPLACE VIEW etl_run_progress AS
SELECT p.* FROM (
SELECT r.run_id,
       r.job_id,
       j.name AS job_name,
       r.status,
       r.started_by,
       greatest(coalesce(l.records, 0), r.records_loaded) AS records_loaded,
       greatest(coalesce(l.pages, 0), r.pages_fetched) AS pages_fetched,
       coalesce(l.expected_total, (r.run_context ->> 'expected_total')::bigint) AS expected_total,
       round(100.0 * greatest(coalesce(l.records, 0), r.records_loaded)
             / nullif(coalesce(l.expected_total, (r.run_context ->> 'expected_total')::bigint), 0), 1) AS percent_done,
       l.rows_per_second,
       clock_timestamp() - r.started_at AS elapsed,
       clock_timestamp() - r.segment_started_at AS segment_elapsed,
       CASE WHEN l.rows_per_second > 0 AND coalesce(l.expected_total, (r.run_context ->> 'expected_total')::bigint) IS NOT NULL
            THEN make_interval(secs => greatest(0, coalesce(l.expected_total, (r.run_context ->> 'expected_total')::bigint)
                                                   - greatest(coalesce(l.records, 0), r.records_loaded))
                                              / l.rows_per_second)
       END AS eta,
       clock_timestamp() - (r.run_context #>> '{checkpoint,saved_at}')::timestamptz AS checkpoint_age,
       (r.segment_started_at + make_interval(secs => r.timeout_seconds)) AS deadline,
       coalesce(l.retries, (r.run_context ->> 'retries')::int, 0) AS retries,
       r.resume_count,
       r.worker_pid,
       NULL::bigint AS queue_position,
       l.waiting_for_rate_limit,
       l.rate_limited_until,
       (r.run_context #>> '{checkpoint,partition_index}')::int AS partitions_done,
       (r.run_context ->> 'partitions_total')::int AS partitions_total
FROM @extschema@.etl_live_runs() l
JOIN @extschema@.dw_etl_runs r ON r.run_id = l.run_id
JOIN @extschema@.dw_etl_jobs j ON j.job_id = r.job_id
UNION ALL
-- queued runs: waiting for a worker slot, oldest first
SELECT r.run_id, r.job_id, j.name, r.status, r.started_by, r.records_loaded, r.pages_fetched,
       (r.run_context ->> 'expected_total')::bigint,
       round(100.0 * r.records_loaded / nullif((r.run_context ->> 'expected_total')::bigint, 0), 1),
       NULL::numeric, clock_timestamp() - r.started_at, NULL::interval, NULL::interval,
       clock_timestamp() - (r.run_context #>> '{checkpoint,saved_at}')::timestamptz,
       NULL::timestamptz, coalesce((r.run_context ->> 'retries')::int, 0), r.resume_count, NULL::int,
       row_number() OVER (ORDER BY r.run_id),
       NULL::text, NULL::timestamptz,
       (r.run_context #>> '{checkpoint,partition_index}')::int, (r.run_context ->> 'partitions_total')::int
FROM @extschema@.dw_etl_runs r
JOIN @extschema@.dw_etl_jobs j ON j.job_id = r.job_id
WHERE r.status = 'queued'
) AS p
WHERE pg_catalog.pg_has_role(p.started_by::oid, 'MEMBER');

------------------------------------------------------------------------------
-- Validation triggers, comments, row-level security
------------------------------------------------------------------------------

COMMENT ON TABLE dw_etl_jobs IS 'etl_exec: one row per job (an API to pull and the table to load it into)';

COMMENT ON TABLE dw_etl_runs IS 'etl_exec: one row per run; run_context holds its checkpoint';

CREATE TRIGGER dw_etl_jobs_validate
    BEFORE INSERT OR UPDATE ON dw_etl_jobs
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_job();

COMMENT ON VIEW etl_job_timeout_report IS 'etl_exec: per job, run counts, p50/p95/max durations, timeouts, current and recommended timeout';

CREATE TRIGGER dw_etl_secrets_validate
    BEFORE INSERT OR UPDATE ON dw_etl_secrets
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_secret();

COMMENT ON SCHEMA etl_exec_staging IS 'etl_exec: staging tables of replace runs (each owned by its run''s role)';

CREATE TRIGGER dw_etl_jobs_validate_requests
    BEFORE INSERT OR UPDATE ON dw_etl_jobs
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_job_requests();

COMMENT ON TABLE dw_etl_hosts IS 'etl_exec: request budgets per host (host or host:port), shared by all runs: requests per second and in flight';

CREATE TRIGGER dw_etl_hosts_validate
    BEFORE INSERT OR UPDATE ON dw_etl_hosts
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_host();

COMMENT ON FUNCTION etl_host_budgets() IS 'etl_exec: per host (shared by all runs): requests in flight, next start the spacing allows, 429 pause, the API''s quota left and its reset, requests started and 429s seen since the server started';

COMMENT ON VIEW etl_run_progress IS 'etl_exec: running runs with records, pages, expected total, percent, rows/s, elapsed, ETA and checkpoint age, the host whose rate limit a run waits for and until when, and partitions done of all; queued runs with their queue_position';

COMMENT ON TABLE dw_etl_run_partitions IS 'etl_exec: the parameter sets (partitions) of each run, frozen when it started, in order';

CREATE TRIGGER dw_etl_jobs_validate_partitions
    BEFORE INSERT OR UPDATE ON dw_etl_jobs
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_job_partitions();

CREATE TRIGGER dw_etl_jobs_validate_auth
    BEFORE INSERT OR UPDATE ON dw_etl_jobs
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_job_auth();

CREATE TRIGGER dw_etl_secrets_validate_shape
    BEFORE INSERT OR UPDATE ON dw_etl_secrets
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_secret_shape();

COMMENT ON TABLE dw_etl_secrets IS 'etl_exec: values for {secret:NAME} in job headers and URL query strings, OAuth2 clients for {oauth2:NAME}, user and password for {basic:NAME}; sent only to the origins in allowed_hosts (host or host:port)';

CREATE TRIGGER dw_etl_jobs_validate_schema
    BEFORE INSERT OR UPDATE ON dw_etl_jobs
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_job_schema();

COMMENT ON FUNCTION etl_infer_table(int, jsonb, int) IS 'etl_exec: a CREATE TABLE statement for the job''s target, its column types inferred from up to sample_pages pages of the API (a dry run), with the suggested key and the column_map when names changed';

COMMENT ON FUNCTION etl_create_table(int, jsonb, int) IS 'etl_exec: create the job''s target table as etl_infer_table infers it (as the caller), set the job''s column_map when names changed; returns the DDL';

CREATE TRIGGER dw_etl_jobs_validate_rejects
    BEFORE INSERT OR UPDATE ON dw_etl_jobs
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_job_rejects();

COMMENT ON TABLE dw_etl_rejects IS 'etl_exec: the records each run rejected (on_bad_record = reject), with the error that refused them';

-- Only the extension writes it (its worker).  Operators read the rejects of
-- the runs they may act for -- those started by a role they are a member
-- of, as for resuming or cancelling a run: a rejected record holds data
-- bound for a table that not every operator may read.
ALTER TABLE dw_etl_rejects ENABLE ROW LEVEL SECURITY;

CREATE POLICY dw_etl_rejects_own_runs ON dw_etl_rejects FOR SELECT
    USING (EXISTS (SELECT 1 FROM @extschema@.dw_etl_runs r
                   WHERE r.run_id = dw_etl_rejects.run_id
                     AND pg_catalog.pg_has_role(r.started_by::oid, 'MEMBER')));

------------------------------------------------------------------------------
-- Run-scoped rows are for the runs' roles
------------------------------------------------------------------------------
-- An operator reads the runs, partitions and rejects of the runs it may
-- act for -- those started by a role it is a member of, as for resuming
-- or cancelling a run (superusers: all).  A run's parameters, partition
-- values, error messages and run_context hold data its role read from
-- tables, or its API sent, that not every operator may read.  The worker
-- and the entry points read and write as the extension's owner.
ALTER TABLE dw_etl_runs ENABLE ROW LEVEL SECURITY;

CREATE POLICY dw_etl_runs_own_runs ON dw_etl_runs FOR SELECT
    USING (pg_catalog.pg_has_role(started_by::oid, 'MEMBER'));

ALTER TABLE dw_etl_run_partitions ENABLE ROW LEVEL SECURITY;

CREATE POLICY dw_etl_run_partitions_own_runs ON dw_etl_run_partitions FOR SELECT
    USING (EXISTS (SELECT 1 FROM @extschema@.dw_etl_runs r
                   WHERE r.run_id = dw_etl_run_partitions.run_id
                     AND pg_catalog.pg_has_role(r.started_by::oid, 'MEMBER')));

------------------------------------------------------------------------------
-- Privileges: no function runs for anyone but the owner unless granted here
------------------------------------------------------------------------------

DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
                                        AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
             JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'etl_exec'
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;

-- what members of etl_operator may call (the internal _etl_* functions run
-- only through these, SECURITY DEFINER)
GRANT EXECUTE ON FUNCTION
    etl_cancel_run(bigint),
    etl_create_table(integer,jsonb,integer),
    etl_execute_job(integer,integer,boolean,boolean,jsonb,boolean),
    etl_get_checkpoint(bigint),
    etl_host_budgets(),
    etl_infer_table(integer,jsonb,integer),
    etl_live_runs(),
    etl_recommended_timeout(integer),
    etl_resume_pending(integer,boolean,boolean),
    etl_resume_run(bigint,integer,boolean),
    etl_retry_run(bigint,boolean,boolean),
    etl_settings(),
    etl_wait_run(bigint,integer)
TO etl_operator;

GRANT SELECT ON dw_etl_jobs, dw_etl_runs, dw_etl_run_partitions, dw_etl_rejects, dw_etl_hosts,
    etl_run_progress, etl_job_timeout_report TO etl_operator;
-- secrets: the owner's alone
REVOKE ALL ON dw_etl_secrets FROM PUBLIC;

REVOKE ALL ON SCHEMA etl_exec_staging FROM PUBLIC;
GRANT USAGE ON SCHEMA etl_exec_staging TO PUBLIC;
