/* etl_exec--0.5.0--0.6.0.sql: security (job text is parsed, never run, to check it; run-scoped rows visible
   to the runs' roles only), hot standby */

\echo Use "ALTER EXTENSION etl_exec UPDATE TO '0.6.0'" to load this file. \quit

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
-- Dot segments in path parameters, percent-encoded too
------------------------------------------------------------------------------

CREATE FUNCTION _etl_url_holds_dot_segment(value text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'etl_url_holds_dot_segment_sql' LANGUAGE C IMMUTABLE STRICT;

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
-- The page reader, for the differential test against jsonb
------------------------------------------------------------------------------

-- What the one-pass page reader makes of a JSON page mapped by name onto
-- columns: + or - (records_path led somewhere, or not), the columns it
-- mentions, a line, then its records as COPY text;
-- NULL when it leaves the page to the jsonb path (for tests).
CREATE FUNCTION _etl_scan_page(body text, records_path text, columns text[], jsonb_columns boolean[])
    RETURNS text AS 'MODULE_PATHNAME', 'etl_scan_page_sql' LANGUAGE C IMMUTABLE STRICT;

------------------------------------------------------------------------------
-- Privileges: no internal function new in 0.6.0 is anyone's but the owner's
------------------------------------------------------------------------------

DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
                                        AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
             JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'etl_exec'
             WHERE p.proname LIKE '\_etl\_%'
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, etl_operator', f);
    END LOOP;
END
$$;
