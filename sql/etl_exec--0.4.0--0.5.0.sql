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
