/* etl_exec--0.2.0--0.3.0.sql: security -- entry points that act for their caller, secrets bound to origins */

\echo Use "ALTER EXTENSION etl_exec UPDATE TO '0.3.0'" to load this file. \quit

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

-- Existing secrets without a list get the origins of the jobs that use them
-- now (none: sent nowhere).  The trigger comes after, so this is allowed.
UPDATE dw_etl_secrets s
   SET allowed_hosts = coalesce((
       SELECT array_agg(DISTINCT lower(o) ORDER BY lower(o))
       FROM dw_etl_jobs j,
            LATERAL substring(j.url from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#]+)') AS o
       WHERE (strpos(j.headers::text, '{secret:' || s.name || '}') > 0
              OR strpos(j.headers::text, '{oauth2:' || s.name || '}') > 0)
         AND o IS NOT NULL AND strpos(o, '{') = 0), '{}')
 WHERE s.allowed_hosts IS NULL;

CREATE TRIGGER dw_etl_secrets_validate
    BEFORE INSERT OR UPDATE ON dw_etl_secrets
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_secret();

-- Say what the upgrade decided, and which entries now match nothing.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT s.name FROM dw_etl_secrets s WHERE s.allowed_hosts = '{}' LOOP
        RAISE NOTICE 'etl_exec 0.3.0: secret "%" is sent nowhere (no job names a host it is used for); set its allowed_hosts', r.name;
    END LOOP;
    FOR r IN SELECT s.name, h FROM dw_etl_secrets s, unnest(s.allowed_hosts) AS h
             WHERE h !~ '^([A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$' LOOP
        RAISE NOTICE 'etl_exec 0.3.0: allowed_hosts entry "%" of secret "%" is not a host or host:port and matches nothing', r.h, r.name;
    END LOOP;
END
$$;

-- Replace runs stage their pages in tables of this schema, which no one but
-- the extension's owner may create in: a run makes its own, never adopts one.
CREATE SCHEMA etl_exec_staging;
REVOKE ALL ON SCHEMA etl_exec_staging FROM PUBLIC;
GRANT USAGE ON SCHEMA etl_exec_staging TO PUBLIC;
COMMENT ON SCHEMA etl_exec_staging IS 'etl_exec: staging tables of replace runs (each owned by its run''s role)';

COMMENT ON TABLE dw_etl_secrets IS 'etl_exec: values for {secret:NAME} in job headers; sent only to the origins in allowed_hosts (host or host:port)';

------------------------------------------------------------------------------
-- C internals: the launch takes no target and no role, only call options;
-- entry points act for their caller.
------------------------------------------------------------------------------

DROP FUNCTION _etl_start_worker(text, int, bigint, int, boolean, jsonb, oid, text);

CREATE FUNCTION _etl_start_worker(mode text, job_id int, run_id bigint, timeout_seconds int,
                                  dry_run boolean, parameters jsonb)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'etl_start_worker' LANGUAGE C VOLATILE;

CREATE FUNCTION _etl_caller() RETURNS oid
    AS 'MODULE_PATHNAME', 'etl_caller_sql' LANGUAGE C STABLE;

CREATE OR REPLACE FUNCTION _etl_resolve_target(p_target text) RETURNS text
    AS 'MODULE_PATHNAME', 'etl_resolve_target_sql' LANGUAGE C STABLE STRICT;

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

CREATE FUNCTION _etl_resume_pending(max_resumes int DEFAULT 10, include_cancelled boolean DEFAULT false,
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
    rid := @extschema@._etl_start_worker('new', j.job_id, NULL, t, p_dry_run, params);
    IF p_wait THEN
        PERFORM @extschema@._etl_raise_outcome(rid);
    END IF;
    RETURN rid;
END
$$;

CREATE OR REPLACE FUNCTION etl_prune_runs(older_than interval DEFAULT NULL) RETURNS bigint
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

CREATE FUNCTION etl_live_runs()
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
    WHERE r.status = 'running' AND @extschema@._etl_run_is_live(r.run_id);
END
$$;

CREATE OR REPLACE VIEW etl_run_progress AS
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
       NULL::bigint AS queue_position
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
       row_number() OVER (ORDER BY r.run_id)
FROM @extschema@.dw_etl_runs r
JOIN @extschema@.dw_etl_jobs j ON j.job_id = r.job_id
WHERE r.status = 'queued';

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

-- Every {name} in the URL must have a value, and none in the path may be a
-- dot segment ("." or ".."), which would move the request up the path.
CREATE OR REPLACE FUNCTION _etl_check_url_parameters(p_url text, p_parameters jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    missing text;
    dots text;
BEGIN
    SELECT string_agg('{' || m[1] || '}', ', ' ORDER BY m[1]) INTO missing
    FROM regexp_matches(p_url, '\{([^{}]+)\}', 'g') AS m
    WHERE p_parameters -> m[1] IS NULL OR p_parameters -> m[1] = 'null'::jsonb;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'the job''s URL has placeholders without a value: %', missing
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass them in the parameters argument (a JSON object), or set them in dw_etl_jobs.parameters.';
    END IF;
    SELECT string_agg(format('{%s} = "%s"', m[1], p_parameters ->> m[1]), ', ' ORDER BY m[1]) INTO dots
    FROM regexp_matches(substring(p_url from '^[^?#]*'), '\{([^{}]+)\}', 'g') AS m
    WHERE p_parameters ->> m[1] IN ('.', '..');
    IF dots IS NOT NULL THEN
        RAISE EXCEPTION 'URL placeholders in the path must not be "." or "..": %', dots
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A dot segment would send the request, with the job''s secrets, to another path.',
                  HINT = 'Pass the values the API expects.';
    END IF;
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

-- a run 0.2.0 left "queued" had a worker that never confirmed it: gone
UPDATE dw_etl_runs SET status = 'interrupted', finished_at = now(), worker_pid = NULL
 WHERE status = 'queued' AND NOT _etl_run_is_live(run_id);

------------------------------------------------------------------------------
-- The entry points: C functions that run _<name> for their caller.
------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION etl_execute_job(job_id int, timeout int DEFAULT NULL,
                                           resume_from_checkpoint boolean DEFAULT false,
                                           dry_run boolean DEFAULT false, parameters jsonb DEFAULT NULL,
                                           wait boolean DEFAULT false)
    RETURNS bigint AS 'MODULE_PATHNAME', 'etl_api_call' LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION etl_resume_run(run_id bigint, timeout int DEFAULT NULL, wait boolean DEFAULT false)
    RETURNS bigint AS 'MODULE_PATHNAME', 'etl_api_call' LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION etl_retry_run(run_id bigint, dry_run boolean DEFAULT false, wait boolean DEFAULT false)
    RETURNS bigint AS 'MODULE_PATHNAME', 'etl_api_call' LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION etl_cancel_run(run_id bigint)
    RETURNS boolean AS 'MODULE_PATHNAME', 'etl_api_call' LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION etl_wait_run(run_id bigint, timeout_ms int DEFAULT NULL)
    RETURNS text AS 'MODULE_PATHNAME', 'etl_api_call' LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION etl_resume_pending(max_resumes int DEFAULT 10, include_cancelled boolean DEFAULT false,
                                              include_failed boolean DEFAULT false)
    RETURNS SETOF bigint AS 'MODULE_PATHNAME', 'etl_api_call_rows' LANGUAGE C VOLATILE;

DROP FUNCTION _etl_live_runs();

------------------------------------------------------------------------------
-- Privileges: operators get the entry points and views, no internal function
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
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, etl_operator', f);
    END LOOP;
END
$$;

GRANT EXECUTE ON FUNCTION
    etl_execute_job(int, int, boolean, boolean, jsonb, boolean),
    etl_resume_run(bigint, int, boolean),
    etl_retry_run(bigint, boolean, boolean),
    etl_get_checkpoint(bigint),
    etl_cancel_run(bigint),
    etl_wait_run(bigint, int),
    etl_resume_pending(int, boolean, boolean),
    etl_recommended_timeout(int),
    etl_settings(),
    etl_live_runs()
TO etl_operator;

COMMENT ON VIEW etl_run_progress IS 'etl_exec: running runs with records, pages, expected total, percent, rows/s, elapsed, ETA and checkpoint age; queued runs with their queue_position';
