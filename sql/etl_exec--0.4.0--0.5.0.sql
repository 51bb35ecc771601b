/* etl_exec--0.4.0--0.5.0.sql: partition parameters in column_map; schema inference, drift and rejected records */

\echo Use "ALTER EXTENSION etl_exec UPDATE TO '0.5.0'" to load this file. \quit

------------------------------------------------------------------------------
-- column_map values "{param:NAME}": a run or partition parameter into a column
------------------------------------------------------------------------------

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
