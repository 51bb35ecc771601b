/* etl_exec--0.1.0--0.2.0.sql: incremental-load parameters and run history pruning */

\echo Use "ALTER EXTENSION etl_exec UPDATE TO '0.2.0'" to load this file. \quit

-- Parameters that come from history, for nightly incremental jobs:
--   {last_success_started_at}  start of the job's last successful run
--   {max:column}               the largest value of a target column
-- Each is resolved once, when a new run starts, unless the call passes it;
-- the value is frozen in the run's parameters so a resume asks the API the
-- same question.  With no history (or an empty target) the job's own
-- parameters give the default; without one the start is refused.
CREATE FUNCTION _etl_history_parameters(j dw_etl_jobs, p_given jsonb) RETURNS jsonb
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
            WHERE a.attrelid = to_regclass(j.target_table) AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'URL placeholder {%} names column "%", which target table % does not have', name, col, j.target_table
                    USING ERRCODE = 'undefined_column',
                          HINT = 'Use {max:column} with a column of the target, e.g. {max:modified_at}.';
            END IF;
            IF typ IN ('timestamptz'::regtype, 'timestamp'::regtype) THEN
                EXECUTE format('SELECT to_char(max(%I) %s, ''YYYY-MM-DD"T"HH24:MI:SS"Z"'') FROM %s', col,
                               CASE WHEN typ = 'timestamptz'::regtype THEN 'AT TIME ZONE ''UTC''' ELSE '' END,
                               to_regclass(j.target_table))
                    INTO v;
            ELSE
                EXECUTE format('SELECT max(%I)::text FROM %s', col, to_regclass(j.target_table)) INTO v;
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

CREATE OR REPLACE FUNCTION _etl_start_new_run(j dw_etl_jobs, p_parameters jsonb, p_timeout int,
                                              p_dry_run boolean, p_wait boolean) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    active bigint;
    rid bigint;
    t int;
    params jsonb;
BEGIN
    IF p_parameters IS NOT NULL AND jsonb_typeof(p_parameters) <> 'object' THEN
        RAISE EXCEPTION 'parameters must be a JSON object, not %', p_parameters
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: parameters := ''{"date": "2024-01-01"}''';
    END IF;
    t := @extschema@._etl_effective_timeout(j, p_timeout);
    params := j.parameters || coalesce(p_parameters, '{}');
    params := params || @extschema@._etl_history_parameters(j, coalesce(p_parameters, '{}'));
    PERFORM @extschema@._etl_check_url_parameters(j.url, params);
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
    rid := @extschema@._etl_start_worker('new', j.job_id, NULL, t, p_dry_run, params, NULL,
                                         @extschema@._etl_resolve_target(j.target_table));
    IF p_wait THEN
        PERFORM @extschema@._etl_raise_outcome(rid);
    END IF;
    RETURN rid;
END
$$;

-- Run history does not grow without bound: delete finished runs older than
-- older_than (default: etl_exec.run_retention_days), with the staging
-- tables replace-mode runs may have left.  Returns how many runs went.
CREATE FUNCTION etl_prune_runs(older_than interval DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    keep interval := coalesce(older_than,
                              make_interval(days => (@extschema@._etl_settings() ->> 'run_retention_days')::int));
    r record;
    n bigint := 0;
    stage text;
BEGIN
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
        RETURNING x.run_id, x.job_id
    LOOP
        n := n + 1;
        SELECT quote_ident(ns.nspname) || '.' || quote_ident('_etl_stage_' || r.run_id) INTO stage
        FROM @extschema@.dw_etl_jobs j
        JOIN pg_class c ON c.oid = to_regclass(j.target_table)
        JOIN pg_namespace ns ON ns.oid = c.relnamespace
        WHERE j.job_id = r.job_id AND j.load_mode = 'replace';
        IF stage IS NOT NULL THEN
            EXECUTE 'DROP TABLE IF EXISTS ' || stage;
        END IF;
    END LOOP;
    RETURN n;
END
$$;

REVOKE EXECUTE ON FUNCTION _etl_history_parameters(dw_etl_jobs, jsonb), etl_prune_runs(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _etl_history_parameters(dw_etl_jobs, jsonb) TO etl_operator;
