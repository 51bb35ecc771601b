/*-------------------------------------------------------------------------
 *
 * ext_schema.c
 *	  Reaching the extension's own tables: the schema they live in, their
 *	  qualified names, and SPI statements on them with text arguments.
 *
 * The worker's statements run with search_path = pg_catalog, pg_temp, so
 * every name of ours is written qualified.  A leaf: the job and run store
 * modules (job.c, run_store.c), secrets.c and launcher.c build on it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "etl_exec.h"

#define ETL_MAX_ARGS 16

static char *extension_schema = NULL;

/* The schema etl_exec is installed in (looked up once per process). */
char *
etl_extension_schema(void)
{
	if (extension_schema == NULL)
	{
		char	   *name;

		SPI_connect();
		if (SPI_execute("SELECT n.nspname FROM pg_catalog.pg_extension e "
						"JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace "
						"WHERE e.extname = 'etl_exec'", true, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("extension \"etl_exec\" is not installed in this database"),
					 errhint("Run CREATE EXTENSION etl_exec.")));
		name = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		extension_schema = MemoryContextStrdup(TopMemoryContext, name);
		SPI_finish();
	}
	return extension_schema;
}

/* schema-qualified, quoted name of one of the extension's objects */
const char *
etl_qualified(const char *relname)
{
	return quote_qualified_identifier(etl_extension_schema(), relname);
}

/*
 * Run one statement with text arguments ($1::type casts in the SQL), inside
 * the caller's SPI_connect().  NULL argument pointers are SQL NULLs.
 * Returns SPI_processed; the result stays in SPI_tuptable until the
 * caller's SPI_finish().
 */
uint64
etl_spi_run(const char *sql, int nargs, const char **args, int expect)
{
	Oid			types[ETL_MAX_ARGS];
	Datum		values[ETL_MAX_ARGS];
	char		nulls[ETL_MAX_ARGS];
	int			rc;

	Assert(nargs <= ETL_MAX_ARGS);
	for (int i = 0; i < nargs; i++)
	{
		types[i] = TEXTOID;
		values[i] = args[i] ? CStringGetTextDatum(args[i]) : (Datum) 0;
		nulls[i] = args[i] ? ' ' : 'n';
	}
	rc = SPI_execute_with_args(sql, nargs, nargs ? types : NULL, nargs ? values : NULL,
							   nargs ? nulls : NULL, false, 0);
	if (rc != expect)
		elog(ERROR, "etl_exec: unexpected SPI result %s for: %s",
			 SPI_result_code_string(rc), sql);
	return SPI_processed;
}

/* column "col" of result row 0, copied into cxt (NULL for SQL NULL) */
char *
etl_spi_value(MemoryContext cxt, int col)
{
	char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col);

	return v ? MemoryContextStrdup(cxt, v) : NULL;
}
