/* etl_exec--0.1.0.sql: tables, validation, and the SQL surface of etl_exec */

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

COMMENT ON TABLE dw_etl_jobs IS 'etl_exec: one row per job (an API to pull and the table to load it into)';

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

COMMENT ON TABLE dw_etl_runs IS 'etl_exec: one row per run; run_context holds its checkpoint';

CREATE TABLE dw_etl_secrets (
    name            text PRIMARY KEY,
    value           text NOT NULL,
    allowed_hosts   text[]
);

COMMENT ON TABLE dw_etl_secrets IS 'etl_exec: values for {secret:NAME} in job headers; sent only to allowed_hosts (NULL: the host of the job''s URL)';

REVOKE ALL ON dw_etl_secrets FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('dw_etl_jobs', '');
SELECT pg_catalog.pg_extension_config_dump('dw_etl_jobs_job_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('dw_etl_secrets', '');

------------------------------------------------------------------------------
-- C internals (not for direct use)
------------------------------------------------------------------------------

CREATE FUNCTION _etl_settings() RETURNS jsonb
    AS 'MODULE_PATHNAME', 'etl_settings_snapshot' LANGUAGE C STABLE;

CREATE FUNCTION _etl_run_is_live(run_id bigint) RETURNS boolean
    AS 'MODULE_PATHNAME', 'etl_run_is_live_sql' LANGUAGE C VOLATILE STRICT;

-- Starts the worker; the session's settings go with the run (read in C, so
-- no caller can hand a worker settings a superuser did not allow).
CREATE FUNCTION _etl_start_worker(mode text, job_id int, run_id bigint, timeout_seconds int,
                                  dry_run boolean, parameters jsonb, run_as oid, target text)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'etl_start_worker' LANGUAGE C VOLATILE;

CREATE FUNCTION _etl_wait_run_end(run_id bigint, timeout_ms int) RETURNS boolean
    AS 'MODULE_PATHNAME', 'etl_wait_run_end' LANGUAGE C VOLATILE;

CREATE FUNCTION _etl_fresh_run(run_id bigint) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'etl_fresh_run' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION _etl_signal_run(run_id bigint) RETURNS boolean
    AS 'MODULE_PATHNAME', 'etl_signal_run' LANGUAGE C VOLATILE STRICT;

------------------------------------------------------------------------------
-- Helpers
------------------------------------------------------------------------------

-- The paging settings a checkpoint is only valid for.
CREATE FUNCTION _etl_paging_of(p_job_id int) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('url', j.url, 'pagination', j.pagination,
                              'page_size', j.page_size, 'records_path', j.records_path::text)
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

-- A run's status with the liveness rule applied: queued/running without a
-- worker holding its lock is interrupted.  Functions that start workers use
-- this instead of recording it (_etl_reap): a row they updated would stay
-- locked by the caller's transaction, and the worker that claims the row
-- would wait for it while the caller waits for the worker.  The claiming
-- worker records the interruption itself.
CREATE FUNCTION _etl_run_state(p_status text, p_run_id bigint) RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN p_status IN ('queued', 'running') AND NOT @extschema@._etl_run_is_live(p_run_id)
                THEN 'interrupted' ELSE p_status END
$$;

-- Record runs whose worker is gone (lock free while queued/running) as
-- interrupted, with a NOTIFY.  Either argument narrows it down.
CREATE FUNCTION _etl_reap(p_job_id int DEFAULT NULL, p_run_id bigint DEFAULT NULL) RETURNS int
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    n int := 0;
BEGIN
    FOR r IN SELECT x.run_id, x.job_id FROM @extschema@.dw_etl_runs x
             WHERE x.status IN ('queued', 'running')
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
         WHERE x.run_id = r.run_id AND x.status IN ('queued', 'running')
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

-- The target table as the caller's search_path finds it, schema-qualified:
-- a run loads this table for all its life, whatever the job says later.
CREATE FUNCTION _etl_resolve_target(p_target text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format('%I.%I', n.nspname, c.relname)
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = pg_catalog.to_regclass(p_target)
$$;

-- The run a function acts on, with the liveness rule applied to its status;
-- refuses an unknown run, and a caller who is not the run's role, a member
-- of it, or a superuser (p_action says what was refused).
CREATE FUNCTION _etl_run_for(p_run_id bigint, p_action text) RETURNS dw_etl_runs
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
    IF NOT pg_has_role(current_user, r.started_by::oid, 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied to % etl_exec run %: it belongs to role %', p_action, r.run_id, r.started_by
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('Only the role that started a run, its members and superusers may %s it.', p_action);
    END IF;
    r.status := @extschema@._etl_run_state(r.status, r.run_id);
    RETURN r;
END
$$;

-- The job, checked for a start: it exists, is enabled, its table exists.
CREATE FUNCTION _etl_job_for_run(p_job_id int) RETURNS dw_etl_jobs
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
    IF to_regclass(j.target_table) IS NULL THEN
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

-- Every {name} in the URL must have a value.
CREATE FUNCTION _etl_check_url_parameters(p_url text, p_parameters jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    missing text;
BEGIN
    SELECT string_agg('{' || m[1] || '}', ', ' ORDER BY m[1]) INTO missing
    FROM regexp_matches(p_url, '\{([^{}]+)\}', 'g') AS m
    WHERE p_parameters -> m[1] IS NULL OR p_parameters -> m[1] = 'null'::jsonb;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'the job''s URL has placeholders without a value: %', missing
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass them in the parameters argument (a JSON object), or set them in dw_etl_jobs.parameters.';
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

-- Start a new run of a checked job.
CREATE FUNCTION _etl_start_new_run(j dw_etl_jobs, p_parameters jsonb, p_timeout int,
                                   p_dry_run boolean, p_wait boolean) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    active bigint;
    rid bigint;
    t int;
BEGIN
    IF p_parameters IS NOT NULL AND jsonb_typeof(p_parameters) <> 'object' THEN
        RAISE EXCEPTION 'parameters must be a JSON object, not %', p_parameters
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: parameters := ''{"date": "2024-01-01"}''';
    END IF;
    t := @extschema@._etl_effective_timeout(j, p_timeout);
    PERFORM @extschema@._etl_check_url_parameters(j.url, j.parameters || coalesce(p_parameters, '{}'));
    IF NOT j.allow_concurrent_runs AND NOT p_dry_run THEN
        SELECT x.run_id INTO active FROM @extschema@.dw_etl_runs x
        WHERE x.job_id = j.job_id AND x.status IN ('queued', 'running') AND NOT x.dry_run
          AND @extschema@._etl_run_is_live(x.run_id)
        ORDER BY x.run_id LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'etl_exec job % already has an active run %', j.job_id, active
                USING ERRCODE = 'object_in_use',
                      HINT = format('Wait for it with SELECT etl_wait_run(%s), cancel it with SELECT etl_cancel_run(%s), '
                                    'or set allow_concurrent_runs on the job.', active, active);
        END IF;
    END IF;
    rid := @extschema@._etl_start_worker('new', j.job_id, NULL, t, p_dry_run,
                                         j.parameters || coalesce(p_parameters, '{}'), NULL,
                                         @extschema@._etl_resolve_target(j.target_table));
    IF p_wait THEN
        PERFORM @extschema@._etl_raise_outcome(rid);
    END IF;
    RETURN rid;
END
$$;

------------------------------------------------------------------------------
-- Job validation: a job row that contradicts itself is refused when written
------------------------------------------------------------------------------

CREATE FUNCTION _etl_validate_job() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    opts jsonb := NEW.pagination_options;
    k text;
    v jsonb;
    known_options text[] := ARRAY['skip_param', 'limit_param', 'page_param', 'first_page', 'next_path',
                                  'cursor_param', 'total_path', 'stop_on_short_page'];
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
        IF k IN ('next_path', 'total_path') THEN
            BEGIN
                PERFORM (v #>> '{}')::jsonpath;
            EXCEPTION WHEN others THEN
                RAISE EXCEPTION 'job "%": pagination option % is not a valid jsonpath: %', NEW.name, k, v #>> '{}'
                    USING ERRCODE = 'invalid_parameter_value', DETAIL = SQLERRM,
                          HINT = 'For example: $."@odata.nextLink" or $.meta.next_cursor';
            END;
        END IF;
    END LOOP;
    IF NEW.pagination = 'cursor' AND NOT opts ? 'next_path' THEN
        RAISE EXCEPTION 'job "%": cursor pagination needs the pagination option next_path (where the cursor is in a response)', NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: pagination_options = ''{"next_path": "$.meta.next_cursor", "cursor_param": "cursor"}''';
    END IF;
    IF NEW.column_map IS NOT NULL THEN
        IF jsonb_typeof(NEW.column_map) <> 'object' OR NEW.column_map = '{}' THEN
            RAISE EXCEPTION 'job "%": column_map must be a non-empty JSON object {"column": "jsonpath"}', NEW.name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Leave it NULL to map columns to record keys of the same name.';
        END IF;
        FOR k, v IN SELECT * FROM jsonb_each(NEW.column_map) LOOP
            IF jsonb_typeof(v) <> 'string' THEN
                RAISE EXCEPTION 'job "%": column_map entry "%" must be a jsonpath string', NEW.name, k
                    USING ERRCODE = 'invalid_parameter_value';
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

CREATE TRIGGER dw_etl_jobs_validate
    BEFORE INSERT OR UPDATE ON dw_etl_jobs
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_job();

------------------------------------------------------------------------------
-- The SQL surface
------------------------------------------------------------------------------

CREATE FUNCTION etl_resume_run(run_id bigint, timeout int DEFAULT NULL, wait boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    r @extschema@.dw_etl_runs;
    j @extschema@.dw_etl_jobs;
    diff text;
    rid bigint;
BEGIN
    r := @extschema@._etl_run_for(etl_resume_run.run_id, 'resume');
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
    IF r.status IN ('queued', 'running') THEN
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
                                         @extschema@._etl_effective_timeout(j, etl_resume_run.timeout),
                                         false, r.parameters, r.started_by::oid,
                                         coalesce(r.run_context ->> 'target',
                                                  @extschema@._etl_resolve_target(j.target_table)));
    IF etl_resume_run.wait THEN
        PERFORM @extschema@._etl_raise_outcome(rid);
    END IF;
    RETURN rid;
END
$$;

CREATE FUNCTION etl_execute_job(job_id int, timeout int DEFAULT NULL,
                                resume_from_checkpoint boolean DEFAULT false,
                                dry_run boolean DEFAULT false, parameters jsonb DEFAULT NULL,
                                wait boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    j @extschema@.dw_etl_jobs;
    r @extschema@.dw_etl_runs;
    diff text;
BEGIN
    j := @extschema@._etl_job_for_run(etl_execute_job.job_id);
    IF etl_execute_job.timeout < 0 THEN
        PERFORM @extschema@._etl_effective_timeout(j, etl_execute_job.timeout);   -- raises
    END IF;
    IF etl_execute_job.parameters IS NOT NULL AND jsonb_typeof(etl_execute_job.parameters) <> 'object' THEN
        RAISE EXCEPTION 'parameters must be a JSON object, not %', etl_execute_job.parameters
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: parameters := ''{"date": "2024-01-01"}''';
    END IF;
    IF etl_execute_job.resume_from_checkpoint AND NOT etl_execute_job.dry_run THEN
        SELECT * INTO r FROM @extschema@.dw_etl_runs x
        WHERE x.job_id = j.job_id AND NOT x.dry_run AND x.run_context ? 'checkpoint'
          AND @extschema@._etl_run_state(x.status, x.run_id) IN ('timed_out', 'cancelled', 'interrupted', 'failed')
        ORDER BY x.run_id DESC LIMIT 1;
        IF FOUND THEN
            -- the keys this call gives must match the run's (a run also has
            -- parameters it resolved itself, such as {max:column})
            diff := @extschema@._etl_json_differences(
                        (SELECT coalesce(jsonb_object_agg(k, r.parameters -> k) FILTER (WHERE r.parameters ? k), '{}')
                         FROM jsonb_object_keys(j.parameters || coalesce(etl_execute_job.parameters, '{}')) AS k),
                        j.parameters || coalesce(etl_execute_job.parameters, '{}'),
                        'run has', 'this call has');
            IF etl_execute_job.parameters IS NOT NULL AND diff IS NOT NULL THEN
                RAISE EXCEPTION 'cannot resume etl_exec run % of job % with different parameters', r.run_id, j.job_id
                    USING ERRCODE = 'invalid_parameter_value',
                          DETAIL = diff,
                          HINT = 'A resume asks the API the same question as the run it continues: leave parameters NULL, '
                                 'or start a new run without resume_from_checkpoint.';
            END IF;
            RETURN @extschema@.etl_resume_run(r.run_id, etl_execute_job.timeout, etl_execute_job.wait);
        END IF;
        RAISE NOTICE 'job % has no resumable run with a checkpoint; starting a new run', j.job_id;
    END IF;
    RETURN @extschema@._etl_start_new_run(j, etl_execute_job.parameters, etl_execute_job.timeout,
                                          etl_execute_job.dry_run, etl_execute_job.wait);
END
$$;

CREATE FUNCTION etl_retry_run(run_id bigint, dry_run boolean DEFAULT false, wait boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    r @extschema@.dw_etl_runs;
BEGIN
    r := @extschema@._etl_run_for(etl_retry_run.run_id, 'retry');
    IF r.status IN ('queued', 'running') THEN
        RAISE EXCEPTION 'etl_exec run % is still running (worker pid %)', r.run_id, r.worker_pid
            USING ERRCODE = 'object_in_use',
                  HINT = format('Wait for it with SELECT etl_wait_run(%s), or stop it with SELECT etl_cancel_run(%s).', r.run_id, r.run_id);
    END IF;
    IF NOT etl_retry_run.dry_run AND NOT r.dry_run AND r.run_context ? 'checkpoint'
       AND r.status IN ('timed_out', 'cancelled', 'interrupted', 'failed') THEN
        RETURN @extschema@.etl_resume_run(r.run_id, NULL, etl_retry_run.wait);
    END IF;
    RETURN @extschema@._etl_start_new_run(@extschema@._etl_job_for_run(r.job_id), r.parameters, NULL,
                                          etl_retry_run.dry_run, etl_retry_run.wait);
END
$$;

CREATE FUNCTION etl_get_checkpoint(run_id bigint)
RETURNS TABLE (skip bigint, page_index int, total_records bigint, saved_at timestamptz,
               next_url text, cursor text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    c jsonb;
BEGIN
    SELECT x.run_context -> 'checkpoint' INTO c FROM @extschema@.dw_etl_runs x
    WHERE x.run_id = etl_get_checkpoint.run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'etl_exec run % does not exist', coalesce(etl_get_checkpoint.run_id::text, 'NULL')
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT run_id, job_id, status FROM dw_etl_runs ORDER BY run_id DESC lists the runs.';
    END IF;
    IF c IS NOT NULL THEN
        RETURN QUERY SELECT (c ->> 'skip')::bigint, (c ->> 'page_index')::int, (c ->> 'total_records')::bigint,
                            (c ->> 'saved_at')::timestamptz, c ->> 'next_url', c ->> 'cursor';
    END IF;
END
$$;

CREATE FUNCTION etl_cancel_run(run_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    r @extschema@.dw_etl_runs;
BEGIN
    PERFORM @extschema@._etl_reap(NULL, etl_cancel_run.run_id);
    r := @extschema@._etl_run_for(etl_cancel_run.run_id, 'cancel');
    IF r.status NOT IN ('queued', 'running') THEN
        RAISE NOTICE 'etl_exec run % is not running (it is %); nothing to cancel', r.run_id, r.status;
        RETURN false;
    END IF;
    RETURN coalesce(@extschema@._etl_signal_run(r.run_id), false);
END
$$;

CREATE FUNCTION etl_wait_run(run_id bigint, timeout_ms int DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    run jsonb;
    ended boolean;
BEGIN
    IF etl_wait_run.timeout_ms < 0 THEN
        RAISE EXCEPTION 'timeout_ms must be 0 or more, not %', etl_wait_run.timeout_ms
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass NULL to wait until the run ends.';
    END IF;
    IF @extschema@._etl_fresh_run(etl_wait_run.run_id) IS NULL THEN
        RAISE EXCEPTION 'etl_exec run % does not exist', coalesce(etl_wait_run.run_id::text, 'NULL')
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT run_id, job_id, status FROM dw_etl_runs ORDER BY run_id DESC lists the runs.';
    END IF;
    ended := @extschema@._etl_wait_run_end(etl_wait_run.run_id, etl_wait_run.timeout_ms);
    run := @extschema@._etl_fresh_run(etl_wait_run.run_id);
    IF ended AND run ->> 'status' IN ('queued', 'running') THEN
        PERFORM @extschema@._etl_reap(NULL, etl_wait_run.run_id);
        run := @extschema@._etl_fresh_run(etl_wait_run.run_id);
    END IF;
    RETURN run ->> 'status';
END
$$;

CREATE FUNCTION etl_resume_pending(max_resumes int DEFAULT 10, include_cancelled boolean DEFAULT false,
                                   include_failed boolean DEFAULT false)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT x.run_id FROM @extschema@.dw_etl_runs x
        WHERE NOT x.dry_run
          AND x.resume_count < etl_resume_pending.max_resumes
          AND (@extschema@._etl_run_state(x.status, x.run_id) IN ('timed_out', 'interrupted')
               OR (etl_resume_pending.include_cancelled AND x.status = 'cancelled')
               OR (etl_resume_pending.include_failed AND x.status = 'failed' AND x.run_context ? 'checkpoint'))
          -- a newer run of the same job and parameters supersedes it
          AND NOT EXISTS (SELECT 1 FROM @extschema@.dw_etl_runs y
                          WHERE y.job_id = x.job_id AND y.run_id > x.run_id AND NOT y.dry_run
                            AND y.parameters = x.parameters)
          AND pg_has_role(current_user, x.started_by::oid, 'MEMBER')
        ORDER BY x.run_id
    LOOP
        BEGIN
            RETURN NEXT @extschema@.etl_resume_run(r.run_id);
        EXCEPTION WHEN others THEN
            RAISE WARNING 'etl_exec: could not resume run %: %', r.run_id, SQLERRM;
        END;
    END LOOP;
END
$$;

------------------------------------------------------------------------------
-- Views: live progress and timeout analysis
------------------------------------------------------------------------------

-- Live runs with the progress their workers report in pg_stat_activity
-- (between commits the table lags behind).  SECURITY DEFINER: workers run
-- as a superuser session, whose activity other roles cannot see.
CREATE FUNCTION _etl_live_runs()
RETURNS TABLE (run_id bigint, pages bigint, records bigint, rows_per_second numeric,
               expected_total bigint, retries int, backend_start timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT current_setting('transaction_read_only')::boolean THEN
        PERFORM @extschema@._etl_reap();
    END IF;
    RETURN QUERY
    SELECT r.run_id, m[1]::bigint, m[2]::bigint, m[3]::numeric, nullif(m[4]::bigint, -1), m[5]::int,
           a.backend_start
    FROM @extschema@.dw_etl_runs r
    LEFT JOIN pg_stat_activity a
           ON a.pid = r.worker_pid AND a.application_name = 'etl_exec run ' || r.run_id
    LEFT JOIN LATERAL regexp_match(a.query,
           ': (\d+) pages, (\d+) records, (\d+) rows/s, expected (-?\d+), (\d+) retries') AS m ON true
    WHERE r.status IN ('queued', 'running') AND @extschema@._etl_run_is_live(r.run_id);
END
$$;

CREATE VIEW etl_run_progress AS
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
       r.worker_pid
FROM @extschema@._etl_live_runs() l
JOIN @extschema@.dw_etl_runs r ON r.run_id = l.run_id
JOIN @extschema@.dw_etl_jobs j ON j.job_id = r.job_id;

COMMENT ON VIEW etl_run_progress IS 'etl_exec: live runs with records, pages, expected total, percent, rows/s, elapsed, ETA and checkpoint age';

CREATE VIEW etl_job_timeout_report AS
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
CROSS JOIN (SELECT (@extschema@._etl_settings() ->> 'default_timeout_seconds')::int AS default_timeout) d
LEFT JOIN stats s ON s.job_id = j.job_id;

COMMENT ON VIEW etl_job_timeout_report IS 'etl_exec: per job, run counts, p50/p95/max durations, timeouts, current and recommended timeout';

------------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC; etl_operator runs and watches jobs
------------------------------------------------------------------------------

REVOKE EXECUTE ON FUNCTION
    _etl_settings(), _etl_run_is_live(bigint),
    _etl_start_worker(text, int, bigint, int, boolean, jsonb, oid, text),
    _etl_wait_run_end(bigint, int), _etl_fresh_run(bigint), _etl_signal_run(bigint),
    _etl_paging_of(int), _etl_add_segment(jsonb, jsonb), _etl_json_differences(jsonb, jsonb, text, text),
    _etl_reap(int, bigint), _etl_run_state(text, bigint), _etl_run_for(bigint, text), _etl_resolve_target(text),
    _etl_job_for_run(int), _etl_effective_timeout(dw_etl_jobs, int),
    etl_recommended_timeout(int), _etl_check_url_parameters(text, jsonb), _etl_raise_outcome(bigint),
    _etl_start_new_run(dw_etl_jobs, jsonb, int, boolean, boolean),
    etl_resume_run(bigint, int, boolean),
    etl_execute_job(int, int, boolean, boolean, jsonb, boolean),
    etl_retry_run(bigint, boolean, boolean), etl_get_checkpoint(bigint), etl_cancel_run(bigint),
    etl_wait_run(bigint, int), etl_resume_pending(int, boolean, boolean), _etl_live_runs()
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    _etl_settings(), _etl_run_is_live(bigint),
    _etl_start_worker(text, int, bigint, int, boolean, jsonb, oid, text),
    _etl_wait_run_end(bigint, int), _etl_fresh_run(bigint), _etl_signal_run(bigint),
    _etl_paging_of(int), _etl_add_segment(jsonb, jsonb), _etl_json_differences(jsonb, jsonb, text, text),
    _etl_reap(int, bigint), _etl_run_state(text, bigint), _etl_run_for(bigint, text), _etl_resolve_target(text),
    _etl_job_for_run(int), _etl_effective_timeout(dw_etl_jobs, int),
    etl_recommended_timeout(int), _etl_check_url_parameters(text, jsonb), _etl_raise_outcome(bigint),
    _etl_start_new_run(dw_etl_jobs, jsonb, int, boolean, boolean),
    etl_resume_run(bigint, int, boolean),
    etl_execute_job(int, int, boolean, boolean, jsonb, boolean),
    etl_retry_run(bigint, boolean, boolean), etl_get_checkpoint(bigint), etl_cancel_run(bigint),
    etl_wait_run(bigint, int), etl_resume_pending(int, boolean, boolean), _etl_live_runs()
TO etl_operator;

GRANT SELECT ON etl_run_progress, etl_job_timeout_report TO etl_operator;

-- Operators run jobs; defining them (what a run writes where, and which
-- host gets a job's secrets) is for the jobs' owners: grant that explicitly.
GRANT SELECT ON dw_etl_jobs TO etl_operator;
GRANT SELECT ON dw_etl_runs TO etl_operator;
