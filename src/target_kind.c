/*-------------------------------------------------------------------------
 *
 * target_kind.c
 *	  Tells whether a target table is one that another extension takes
 *	  over, so that the loader must not feed PostgreSQL's COPY machinery
 *	  with it directly.
 *
 * A Citus table on the coordinator (distributed, reference, single-shard
 * or Citus-managed local) is a shell: its rows live in shards, and Citus
 * routes writes to them in its planner (INSERT) and its utility hook
 * (COPY).  BeginCopyFrom/CopyFrom bypass that hook and would write into
 * the shell, where no query sees them.  A TimescaleDB hypertable is the
 * same kind of table (its chunks take the rows).  Such targets load
 * through SQL that the extension plans.
 *
 * The check reads the other extension's catalog through SPI, guarded by
 * to_regclass(): etl_exec neither links against nor requires either one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "utils/builtins.h"

#include "etl_exec.h"

/* pg_dist_partition: Citus's table of its tables (partmethod, repmodel) */
static void
read_citus_kind(Oid relid, EtlTargetInfo *info, MemoryContext cxt)
{
	char		relid_text[16];
	const char *args[1] = {relid_text};
	char	   *method;
	char	   *repmodel;
	char	   *colocation;

	snprintf(relid_text, sizeof(relid_text), "%u", relid);
	if (etl_spi_run("SELECT p.partmethod::text, p.repmodel::text, "
					"pg_catalog.column_to_column_name(p.logicalrelid, p.partkey), "
					"p.colocationid::text "
					"FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1::oid",
					1, args, SPI_OK_SELECT) == 0)
		return;
	method = etl_spi_value(cxt, 1);
	repmodel = etl_spi_value(cxt, 2);
	info->distribution_column = etl_spi_value(cxt, 3);
	colocation = etl_spi_value(cxt, 4);

	if (strcmp(method, "a") == 0)
		info->kind = ETL_TARGET_CITUS_APPEND;
	else if (strcmp(method, "n") != 0)
		info->kind = ETL_TARGET_CITUS_DISTRIBUTED;	/* hash, range */
	else if (strcmp(repmodel, "t") == 0)
		info->kind = ETL_TARGET_CITUS_REFERENCE;
	else if (colocation && strcmp(colocation, "0") != 0)
		info->kind = ETL_TARGET_CITUS_DISTRIBUTED;	/* single-shard */
	else
		info->kind = ETL_TARGET_CITUS_LOCAL;
}

/* TimescaleDB's catalog of hypertables (schema_name, table_name) */
static void
read_hypertable(Oid relid, EtlTargetInfo *info)
{
	char		relid_text[16];
	const char *args[1] = {relid_text};

	snprintf(relid_text, sizeof(relid_text), "%u", relid);
	if (etl_spi_run("SELECT 1 FROM _timescaledb_catalog.hypertable h, pg_catalog.pg_class c, "
					"pg_catalog.pg_namespace n "
					"WHERE c.oid = $1::oid AND n.oid = c.relnamespace "
					"AND h.schema_name = n.nspname AND h.table_name = c.relname",
					1, args, SPI_OK_SELECT) > 0)
		info->kind = ETL_TARGET_HYPERTABLE;
}

/*
 * What kind of table relid is, as far as loading it goes.  Runs in a
 * transaction, as the worker (not as the run's role: the catalogs are
 * read whatever the role may see).
 */
void
etl_target_kind(Oid relid, EtlTargetInfo *info)
{
	MemoryContext cxt = CurrentMemoryContext;
	bool		citus;
	bool		timescale;

	info->kind = ETL_TARGET_PLAIN;
	info->distribution_column = NULL;

	SPI_connect();
	if (etl_spi_run("SELECT pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL, "
					"pg_catalog.to_regclass('_timescaledb_catalog.hypertable') IS NOT NULL",
					0, NULL, SPI_OK_SELECT) != 1)
		elog(ERROR, "etl_exec: could not look up the kind of table %u", relid);
	/* (each query below replaces SPI_tuptable) */
	citus = strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "t") == 0;
	timescale = strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2), "t") == 0;
	if (citus)
		read_citus_kind(relid, info, cxt);
	if (info->kind == ETL_TARGET_PLAIN && timescale)
		read_hypertable(relid, info);
	SPI_finish();
}

/* The kind, in words, for messages. */
const char *
etl_target_kind_name(EtlTargetKind kind)
{
	switch (kind)
	{
		case ETL_TARGET_PLAIN:
			return "table";
		case ETL_TARGET_CITUS_DISTRIBUTED:
			return "Citus distributed table";
		case ETL_TARGET_CITUS_APPEND:
			return "Citus append-distributed table";
		case ETL_TARGET_CITUS_REFERENCE:
			return "Citus reference table";
		case ETL_TARGET_CITUS_LOCAL:
			return "Citus local table";
		case ETL_TARGET_HYPERTABLE:
			return "TimescaleDB hypertable";
	}
	return "table";
}
