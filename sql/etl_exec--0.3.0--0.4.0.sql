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
-- HOST until EPOCH_MS]").  New columns go at the end.
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
       l.rate_limited_until
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
       NULL::text, NULL::timestamptz
FROM @extschema@.dw_etl_runs r
JOIN @extschema@.dw_etl_jobs j ON j.job_id = r.job_id
WHERE r.status = 'queued';

COMMENT ON VIEW etl_run_progress IS 'etl_exec: running runs with records, pages, expected total, percent, rows/s, elapsed, ETA and checkpoint age, and the host whose rate limit a run waits for, until when; queued runs with their queue_position';

REVOKE ALL ON FUNCTION etl_live_runs(), etl_host_budgets(), _etl_validate_host(), _etl_rate_headers(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION etl_live_runs(), etl_host_budgets() TO etl_operator;
GRANT SELECT ON etl_run_progress TO etl_operator;

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
