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

------------------------------------------------------------------------------
-- Upsert at COPY speed
------------------------------------------------------------------------------

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
