/* etl_exec--0.3.0--0.4.0.sql: latency-bound APIs -- parallel paging, a rate budget per host, upsert at COPY speed */

\echo Use "ALTER EXTENSION etl_exec UPDATE TO '0.4.0'" to load this file. \quit

------------------------------------------------------------------------------
-- Parallel paging: dw_etl_jobs.concurrency
------------------------------------------------------------------------------

-- the most requests of a run in flight at once; NULL: etl_exec.default_concurrency
ALTER TABLE dw_etl_jobs ADD COLUMN concurrency int;

-- How a job asks for its pages (the first trigger checks what it asks for).
CREATE FUNCTION _etl_validate_job_requests() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.concurrency < 1 OR NEW.concurrency > 64 THEN
        RAISE EXCEPTION 'job "%": concurrency must be between 1 and 64, not %', NEW.name, NEW.concurrency
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The most requests of a run in flight at once: 1 sends one at a time; NULL takes etl_exec.default_concurrency (4).';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER dw_etl_jobs_validate_requests
    BEFORE INSERT OR UPDATE ON dw_etl_jobs
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_job_requests();

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

-- The first trigger knows the new pagination options: next_header (a next
-- link or cursor from a response header; cursor paging may have it instead
-- of next_path) and has_more_path (a boolean in the body: false ends the run).
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

COMMENT ON TABLE dw_etl_hosts IS 'etl_exec: request budgets per host (host or host:port), shared by all runs: requests per second and in flight';

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

CREATE TRIGGER dw_etl_hosts_validate
    BEFORE INSERT OR UPDATE ON dw_etl_hosts
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_host();

SELECT pg_catalog.pg_extension_config_dump('dw_etl_hosts', '');

-- like dw_etl_jobs: operators read it; writing it is for the roles granted that
GRANT SELECT ON dw_etl_hosts TO etl_operator;

-- The shared state of every host a run asked since the server started.
CREATE FUNCTION etl_host_budgets()
RETURNS TABLE (host text, in_flight int, next_start timestamptz, paused_until timestamptz,
               quota_remaining bigint, quota_reset_at timestamptz, requests bigint, throttled bigint)
    AS 'MODULE_PATHNAME', 'etl_host_budgets_sql' LANGUAGE C VOLATILE;

COMMENT ON FUNCTION etl_host_budgets() IS 'etl_exec: per host (shared by all runs): requests in flight, next start the spacing allows, 429 pause, the API''s quota left and its reset, requests started and 429s seen since the server started';

-- What the rate-limit header parser makes of header lines (for tests).
CREATE FUNCTION _etl_rate_headers(headers text) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'etl_rate_headers_sql' LANGUAGE C VOLATILE STRICT;

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

-- etl_run_progress: a run waiting for a host's rate limit says which host,
-- and until when (the worker's pg_stat_activity text: "... [rate limit:
-- HOST until EPOCH_MS]"); a run with partitions, how many are done (the
-- checkpoint's partition) of all.  New columns go at the end.
DROP VIEW etl_run_progress;
DROP FUNCTION etl_live_runs();

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
WHERE r.status = 'queued';
COMMENT ON VIEW etl_run_progress IS 'etl_exec: running runs with records, pages, expected total, percent, rows/s, elapsed, ETA and checkpoint age, the host whose rate limit a run waits for and until when, and partitions done of all; queued runs with their queue_position';

REVOKE ALL ON FUNCTION etl_live_runs(), etl_host_budgets(), _etl_validate_host(), _etl_rate_headers(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION etl_live_runs(), etl_host_budgets() TO etl_operator;
GRANT SELECT ON etl_run_progress TO etl_operator;

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
COMMENT ON TABLE dw_etl_run_partitions IS 'etl_exec: the parameter sets (partitions) of each run, frozen when it started, in order';
GRANT SELECT ON dw_etl_run_partitions TO etl_operator;

CREATE FUNCTION _etl_validate_job_partitions() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    p jsonb := NEW.partitions;
    d jsonb;
    k text;
    v jsonb;
    kinds text[];
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
        BEGIN
            -- parsed, never run (LIMIT 0), as the role writing the job; the
            -- tables it reads may come later (a restore, say): only a
            -- query that is not one SELECT is refused here
            EXECUTE format('SELECT * FROM (%s) AS etl_partitions LIMIT 0', p ->> 'query');
        EXCEPTION
            WHEN syntax_error THEN
                RAISE EXCEPTION 'job "%": partitions query is not one SELECT: %', NEW.name, SQLERRM
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'One SELECT whose columns name the parameters, e.g. SELECT id AS customer_id FROM customers WHERE active ORDER BY id.';
            WHEN others THEN
                NULL;
        END;
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

CREATE TRIGGER dw_etl_jobs_validate_partitions
    BEFORE INSERT OR UPDATE ON dw_etl_jobs
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_job_partitions();

-- A new run's partitions, in order (a JSON array of parameter objects), or
-- NULL when the job has none.  The query runs as the caller (the run's
-- role), with the caller's search_path; date windows start where the last
-- successful run's windows ended, minus the lookback.
CREATE FUNCTION _etl_freeze_partitions(j dw_etl_jobs, p_parameters jsonb) RETURNS jsonb
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
        result := @extschema@._etl_select_as_caller(
            format('SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(etl_partitions)), ''[]''::pg_catalog.jsonb)::pg_catalog.text '
                   'FROM (%s) AS etl_partitions', p ->> 'query'))::jsonb;
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

-- the partitions go to the worker, which stores them with the run it creates
DROP FUNCTION _etl_start_worker(text, int, bigint, int, boolean, jsonb);
CREATE FUNCTION _etl_start_worker(mode text, job_id int, run_id bigint, timeout_seconds int,
                                  dry_run boolean, parameters jsonb, partitions jsonb DEFAULT NULL)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'etl_start_worker' LANGUAGE C VOLATILE;

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

-- the checkpoint's partition, and how many the run has
DROP FUNCTION etl_get_checkpoint(bigint);
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
REVOKE ALL ON FUNCTION etl_get_checkpoint(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION etl_get_checkpoint(bigint) TO etl_operator;

------------------------------------------------------------------------------
-- Upsert at COPY speed
------------------------------------------------------------------------------

------------------------------------------------------------------------------
-- Authentication: query-string secrets, OAuth2 refresh tokens, HTTP Basic
------------------------------------------------------------------------------

-- Every {name} in the URL must have a value -- but {secret:NAME}, which each
-- request fills in as it goes out (never from the parameters, never kept in
-- a URL the run stores) -- and none in the path may be a dot segment.
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
    WHERE p_parameters ->> m[1] IN ('.', '..');
    IF dots IS NOT NULL THEN
        RAISE EXCEPTION 'URL placeholders in the path must not be "." or "..": %', dots
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A dot segment would send the request, with the job''s secrets, to another path.',
                  HINT = 'Pass the values the API expects.';
    END IF;
END
$$;

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

CREATE TRIGGER dw_etl_jobs_validate_auth
    BEFORE INSERT OR UPDATE ON dw_etl_jobs
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_job_auth();

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

CREATE TRIGGER dw_etl_secrets_validate_shape
    BEFORE INSERT OR UPDATE ON dw_etl_secrets
    FOR EACH ROW EXECUTE FUNCTION _etl_validate_secret_shape();

COMMENT ON TABLE dw_etl_secrets IS 'etl_exec: values for {secret:NAME} in job headers and URL query strings, OAuth2 clients for {oauth2:NAME}, user and password for {basic:NAME}; sent only to the origins in allowed_hosts (host or host:port)';

------------------------------------------------------------------------------
-- Privileges: no internal function new in 0.4.0 is anyone's but the owner's
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
