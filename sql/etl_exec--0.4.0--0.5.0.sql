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
