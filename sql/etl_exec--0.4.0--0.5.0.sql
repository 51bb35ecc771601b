/* etl_exec--0.4.0--0.5.0.sql: partition parameters in column_map; schema inference, drift and rejected records */

\echo Use "ALTER EXTENSION etl_exec UPDATE TO '0.5.0'" to load this file. \quit

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

-- What a run does with a record whose value its column's type input or a
-- constraint refuses: 'fail' (the run fails, as before 0.5.0) or 'reject'
-- (the record goes to dw_etl_rejects, the rest of its page loads).
-- max_rejected: past that many rejects in a run, the run fails (NULL: no limit).
ALTER TABLE dw_etl_jobs ADD COLUMN on_bad_record text NOT NULL DEFAULT 'fail';
ALTER TABLE dw_etl_jobs ADD COLUMN max_rejected int;

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

CREATE TRIGGER dw_etl_jobs_validate_rejects
    BEFORE INSERT OR UPDATE ON dw_etl_jobs
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_job_rejects();

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
GRANT SELECT ON dw_etl_rejects TO etl_operator;

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
