/* etl_exec--0.4.0--0.5.0.sql: partition parameters in column_map; schema inference, drift and rejected records */

\echo Use "ALTER EXTENSION etl_exec UPDATE TO '0.5.0'" to load this file. \quit

------------------------------------------------------------------------------
-- column_map values "{param:NAME}": a run or partition parameter into a column
------------------------------------------------------------------------------

------------------------------------------------------------------------------
-- Schema: etl_infer_table, etl_create_table, on_new_keys
------------------------------------------------------------------------------

-- What a run does with a record key no column of the target takes, when
-- the job maps keys by name: ignore it (as before), add a column for it
-- (the column's type from the page's values), or fail the run.
ALTER TABLE dw_etl_jobs ADD COLUMN on_new_keys text NOT NULL DEFAULT 'ignore';

CREATE FUNCTION _etl_validate_job_schema() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.on_new_keys NOT IN ('ignore', 'add_columns', 'fail') THEN
        RAISE EXCEPTION 'job "%": on_new_keys must be ignore, add_columns or fail, not "%"', NEW.name, NEW.on_new_keys
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'ignore skips keys no column takes; add_columns adds a column for each; fail stops the run.';
    END IF;
    IF NEW.on_new_keys <> 'ignore' AND NEW.column_map IS NOT NULL THEN
        RAISE EXCEPTION 'job "%": on_new_keys % needs a job that maps keys by name, and this one has a column_map',
                        NEW.name, NEW.on_new_keys
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A column_map names the keys the job takes: every other key is not the job''s, so none is new.',
                  HINT = 'Set column_map to NULL (columns named like the keys, case aside), or on_new_keys to ignore.';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER dw_etl_jobs_validate_schema
    BEFORE INSERT OR UPDATE ON dw_etl_jobs
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_job_schema();

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
    IF @extschema@._etl_resolve_target(j.target_table) IS NOT NULL THEN
        params := params || @extschema@._etl_history_parameters(j, coalesce(p_parameters, '{}'));
    END IF;
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
        RAISE EXCEPTION 'could not sample job % (sample run % %): %', j.job_id, rid, run ->> 'status', lines[1]
            USING ERRCODE = coalesce(run ->> 'sqlstate',
                                     CASE run ->> 'status' WHEN 'failed' THEN 'ET001' WHEN 'timed_out' THEN 'ET002'
                                                           WHEN 'cancelled' THEN 'ET003' ELSE 'ET004' END),
                  DETAIL = coalesce(msg_detail, ''),
                  HINT = coalesce(msg_hint, format('The sample run is dry run %s in dw_etl_runs.', rid));
    END IF;
    RETURN run -> 'run_context' -> 'dry_run';
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
    taken text[] := '{}';
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
    -- the columns: the key first, then in the order the sample has the keys
    FOR k IN SELECT e ->> 'key' AS key, e ->> 'type' AS typ
             FROM jsonb_array_elements(sample -> 'keys') WITH ORDINALITY AS t(e, i)
             ORDER BY e ->> 'key' IS NOT DISTINCT FROM key_name DESC, i
    LOOP
        base := @extschema@._etl_column_name(k.key);
        name := base;
        n := 1;
        WHILE name = ANY (taken) LOOP
            n := n + 1;
            name := left(base, 63 - octet_length('_' || n)) || '_' || n;
        END LOOP;
        taken := taken || name;
        cols := cols || format('    %s %s', quote_ident(name), k.typ);
        -- $."key": any key, quoted as json_path.c reads it
        map := map || jsonb_build_object(name, '$."' || replace(replace(k.key, '\', '\\'), '"', '\"') || '"');
        renamed := renamed OR lower(name) <> lower(k.key);
        IF k.key = key_name THEN
            key_column := name;
        END IF;
    END LOOP;
    SELECT string_agg(quote_ident(x), '.' ORDER BY i) INTO target
      FROM unnest(parse_ident(j.target_table)) WITH ORDINALITY AS t(x, i);
    create_statement := format(E'CREATE TABLE %s (\n%s\n)', target, array_to_string(cols, E',\n'));
    column_map := CASE WHEN renamed THEN map END;
    ddl := format(E'-- job %s: %s records on %s sampled pages\n%s;\n', j.job_id,
                  sample ->> 'records', sample ->> 'pages', create_statement);
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

CREATE FUNCTION _etl_create_table(job_id int, parameters jsonb DEFAULT NULL, sample_pages int DEFAULT 3)
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
    r := @extschema@._etl_infer(j, _etl_create_table.parameters, _etl_create_table.sample_pages);
    PERFORM @extschema@._etl_execute_as_caller(r.create_statement);
    IF r.column_map IS NOT NULL THEN
        UPDATE @extschema@.dw_etl_jobs x SET column_map = r.column_map WHERE x.job_id = j.job_id;
    END IF;
    RETURN r.ddl;
END
$$;

CREATE FUNCTION etl_infer_table(job_id int, parameters jsonb DEFAULT NULL, sample_pages int DEFAULT 3)
    RETURNS text AS 'MODULE_PATHNAME', 'etl_api_call' LANGUAGE C VOLATILE;
CREATE FUNCTION etl_create_table(job_id int, parameters jsonb DEFAULT NULL, sample_pages int DEFAULT 3)
    RETURNS text AS 'MODULE_PATHNAME', 'etl_api_call' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION etl_infer_table(int, jsonb, int) IS 'etl_exec: a CREATE TABLE statement for the job''s target, its column types inferred from up to sample_pages pages of the API (a dry run), with the suggested key and the column_map when names changed';
COMMENT ON FUNCTION etl_create_table(int, jsonb, int) IS 'etl_exec: create the job''s target table as etl_infer_table infers it (as the caller), set the job''s column_map when names changed; returns the DDL';
REVOKE ALL ON FUNCTION etl_infer_table(int, jsonb, int), etl_create_table(int, jsonb, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION etl_infer_table(int, jsonb, int), etl_create_table(int, jsonb, int) TO etl_operator;

------------------------------------------------------------------------------
-- Rejected records: on_bad_record, max_rejected, dw_etl_rejects
------------------------------------------------------------------------------

------------------------------------------------------------------------------
-- Privileges: no internal function new in 0.5.0 is anyone's but the owner's
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
