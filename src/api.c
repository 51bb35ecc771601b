/*-------------------------------------------------------------------------
 *
 * api.c
 *	  The SQL-callable entry points operators call.
 *
 * etl_execute_job(), etl_resume_run() and the other public functions are
 * thin C functions: each runs its implementation (_etl_execute_job(), ...,
 * SECURITY DEFINER, with a fixed search_path) on behalf of its caller.  So
 * no internal function need be executable by operators: only these entry
 * points are granted, and none of them takes a target, a URL, headers or
 * any other part of a job.  The implementation learns who called from
 * _etl_caller() -- current_user at the call, even a role reached by SET
 * ROLE -- and resolves the job's target table with the caller's
 * search_path and rights (_etl_resolve_target), never with its own
 * (caller.c keeps who called, and acts as them).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "compat.h"
#include "etl_exec.h"

/* A public function: its name, and its implementation ("_" + its name, same arguments). */
typedef struct ApiEntry
{
	FmgrInfo	impl;
	char		name[NAMEDATALEN];
} ApiEntry;

static ApiEntry *
entry_of(FunctionCallInfo fcinfo)
{
	ApiEntry   *entry = (ApiEntry *) fcinfo->flinfo->fn_extra;
	Oid			fn_oid = fcinfo->flinfo->fn_oid;
	HeapTuple	tup;
	Form_pg_proc proc;
	List	   *name;
	Oid			impl_oid;

	if (entry != NULL)
		return entry;
	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn_oid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", fn_oid);
	proc = (Form_pg_proc) GETSTRUCT(tup);
	name = list_make2(makeString(get_namespace_name(proc->pronamespace)),
					  makeString(psprintf("_%s", NameStr(proc->proname))));
	impl_oid = LookupFuncName(name, proc->pronargs, proc->proargtypes.values, false);

	entry = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(ApiEntry));
	strlcpy(entry->name, NameStr(proc->proname), NAMEDATALEN);
	ReleaseSysCache(tup);
	/* no EXECUTE check: that is the point; the entry point's was made */
	fmgr_info_cxt(impl_oid, &entry->impl, fcinfo->flinfo->fn_mcxt);
	fcinfo->flinfo->fn_extra = entry;
	return entry;
}

/*
 * etl_execute_job(), etl_resume_run(), etl_retry_run(), etl_cancel_run(),
 * etl_wait_run(), etl_infer_table(), etl_create_table(): run the
 * implementation for the caller.  On a hot standby all but etl_wait_run
 * fail at once: they start, resume or change runs (etl_infer_table's
 * sample run too), which only the primary does.
 */
PG_FUNCTION_INFO_V1(etl_api_call);
Datum
etl_api_call(PG_FUNCTION_ARGS)
{
	ApiEntry   *entry = entry_of(fcinfo);
	bool		isnull;
	Datum		result;

	if (strcmp(entry->name, "etl_wait_run") != 0)
		etl_refuse_on_standby(entry->name);
	result = etl_call_for_caller(fcinfo, &entry->impl, &isnull);
	fcinfo->isnull = isnull;
	return result;
}

/*
 * etl_resume_pending(): its implementation returns the run_ids as an
 * array; the entry point returns them as rows -- none on a hot standby.
 */
PG_FUNCTION_INFO_V1(etl_api_call_rows);
Datum
etl_api_call_rows(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ApiEntry   *entry = entry_of(fcinfo);
	bool		isnull;
	Datum		result;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	/*
	 * a standby resumes nothing, quietly: pg_cron may call it on every
	 * node, and the primary's call does the work
	 */
	if (RecoveryInProgress())
		return (Datum) 0;
	result = etl_call_for_caller(fcinfo, &entry->impl, &isnull);
	if (!isnull)
	{
		ArrayType  *ids = DatumGetArrayTypeP(result);
		Datum	   *elems;
		bool	   *nulls;
		int			n;

		deconstruct_array(ids, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &nulls, &n);
		for (int i = 0; i < n; i++)
			if (!nulls[i])
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &elems[i], &nulls[i]);
	}
	return (Datum) 0;
}

/* _etl_caller() RETURNS oid: see etl_api_caller() */
PG_FUNCTION_INFO_V1(etl_caller_sql);
Datum
etl_caller_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_OID(etl_api_caller());
}

/* _etl_resolve_target(name text) RETURNS text: see etl_resolve_target() */
PG_FUNCTION_INFO_V1(etl_resolve_target_sql);
Datum
etl_resolve_target_sql(PG_FUNCTION_ARGS)
{
	char	   *result = etl_resolve_target(text_to_cstring(PG_GETARG_TEXT_PP(0)));

	if (result == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(result));
}

/*
 * _etl_select_as_caller(sql text) RETURNS text
 *
 * The first column of the first row of a query run as the caller: a
 * query on a table of the caller's choosing (the target, for {max:col})
 * must run with the caller's rights, never the implementation's.  One
 * SELECT, read-only.
 */
PG_FUNCTION_INFO_V1(etl_select_as_caller);
Datum
etl_select_as_caller(PG_FUNCTION_ARGS)
{
	char	   *sql = text_to_cstring(PG_GETARG_TEXT_PP(0));
	EtlRoleSwitch sw;
	char	   *value = NULL;
	MemoryContext cxt = CurrentMemoryContext;

	if (etl_select_problem(sql) != NULL)
		elog(ERROR, "etl_exec: not one SELECT: %s", sql);
	etl_act_as_caller(&sw, true);
	SPI_connect();
	if (SPI_execute(sql, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "etl_exec: unexpected result of %s", sql);
	if (SPI_processed > 0)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (v)
			value = MemoryContextStrdup(cxt, v);
	}
	SPI_finish();
	etl_role_switch_leave(&sw);
	if (value == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(value));
}

/*
 * _etl_partition_rows_as_caller(query text) RETURNS jsonb
 *
 * A job's partitions query, run as the caller (the run's role) with the
 * caller's search_path, read-only, in a restricted operation: its rows
 * as a JSON array of objects (column name -> value, as to_jsonb makes of
 * a row), in the query's order.  The text runs as it is, never pasted
 * into other SQL, and only when it is exactly one plain SELECT
 * (select_check.c): a second statement, SELECT INTO, a data-modifying
 * WITH or FOR UPDATE is refused before anything runs.
 */
PG_FUNCTION_INFO_V1(etl_partition_rows_as_caller);
Datum
etl_partition_rows_as_caller(PG_FUNCTION_ARGS)
{
	char	   *query = text_to_cstring(PG_GETARG_TEXT_PP(0));
	const char *problem = etl_select_problem(query);
	EtlRoleSwitch sw;
	StringInfoData rows;
	FmgrInfo	to_jsonb;
	TupleDesc	tupdesc;

	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partitions query is not one SELECT: %s", problem),
				 errhint("One SELECT whose columns name the parameters, e.g. SELECT id AS customer_id FROM customers WHERE active ORDER BY id.")));

	/* to_jsonb(record): it learns the argument's type from its expression */
	fmgr_info(F_TO_JSONB, &to_jsonb);
	fmgr_info_set_expr((Node *) makeFuncExpr(F_TO_JSONB, JSONBOID,
											 list_make1(makeNullConst(RECORDOID, -1, InvalidOid)),
											 InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL),
					   &to_jsonb);
	initStringInfo(&rows);
	appendStringInfoChar(&rows, '[');

	etl_act_as_caller(&sw, true);
	SPI_connect();
	if (SPI_execute(query, true, 0) != SPI_OK_SELECT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partitions query did not return rows")));
	tupdesc = BlessTupleDesc(SPI_tuptable->tupdesc);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		Datum		row = heap_copy_tuple_as_datum(SPI_tuptable->vals[i], tupdesc);
		Jsonb	   *obj = DatumGetJsonbP(FunctionCall1(&to_jsonb, row));

		if (i > 0)
			appendStringInfoString(&rows, ", ");
		(void) JsonbToCString(&rows, &obj->root, VARSIZE(obj));
	}
	SPI_finish();
	etl_role_switch_leave(&sw);

	appendStringInfoChar(&rows, ']');
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(rows.data)));
}

/*
 * _etl_execute_as_caller(sql text) RETURNS void
 *
 * One statement run as the caller, with the caller's search_path: the
 * CREATE TABLE of etl_create_table, whose table is the caller's, made
 * with the caller's rights, never the implementation's.
 */
PG_FUNCTION_INFO_V1(etl_execute_as_caller);
Datum
etl_execute_as_caller(PG_FUNCTION_ARGS)
{
	char	   *sql = text_to_cstring(PG_GETARG_TEXT_PP(0));
	EtlRoleSwitch sw;

	etl_act_as_caller(&sw, false);
	SPI_connect();
	if (SPI_execute(sql, false, 0) < 0)
		elog(ERROR, "etl_exec: could not run %s", sql);
	SPI_finish();
	etl_role_switch_leave(&sw);
	PG_RETURN_VOID();
}

/* _etl_url_holds_dot_segment(value text) RETURNS boolean: see url.c */
PG_FUNCTION_INFO_V1(etl_url_holds_dot_segment_sql);
Datum
etl_url_holds_dot_segment_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(etl_url_holds_dot_segment(text_to_cstring(PG_GETARG_TEXT_PP(0))));
}

/*
 * _etl_scan_page(body text, records_path text, columns text[],
 *				  jsonb_columns boolean[]) RETURNS text
 *
 * What the one-pass page reader (page_scan.c) makes of a JSON page whose
 * records (at records_path, one [*]) map by name onto those columns:
 * "+" or "-" (records_path led somewhere, or not) and the columns the
 * page mentions, a line, then the records as COPY text -- or NULL
 * when the reader gives the page to the jsonb path.  For the differential
 * test against PostgreSQL's own jsonb parser.
 */
PG_FUNCTION_INFO_V1(etl_scan_page_sql);
Datum
etl_scan_page_sql(PG_FUNCTION_ARGS)
{
	text	   *body = PG_GETARG_TEXT_PP(0);
	EtlPath    *records = etl_path_compile(text_to_cstring(PG_GETARG_TEXT_PP(1)));
	Datum	   *names;
	Datum	   *flags;
	bool	   *nulls;
	int			ncols;
	int			nflags;
	char	  **cnames;
	EtlScanSpec spec;
	EtlScanResult result;
	bool		star;
	bool		ok;
	StringInfoData out;

	deconstruct_array(PG_GETARG_ARRAYTYPE_P(2), TEXTOID, -1, false, TYPALIGN_INT, &names, &nulls, &ncols);
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(3), BOOLOID, 1, true, TYPALIGN_CHAR, &flags, &nulls, &nflags);
	if (nflags != ncols)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("columns and jsonb_columns must have as many elements")));
	memset(&spec, 0, sizeof(spec));
	if (!etl_path_split(records, &spec.records_before, &star, &spec.records_after) || !star)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("records_path must be member steps with one [*]")));
	spec.total.n = -1;
	spec.next.n = -1;
	spec.ncols = ncols;
	spec.column_is_json = palloc0(sizeof(bool) * Max(ncols, 1));
	spec.column_is_array = palloc0(sizeof(bool) * Max(ncols, 1));
	spec.map = palloc0(sizeof(EtlKeyPath) * Max(ncols, 1));
	cnames = palloc(sizeof(char *) * Max(ncols, 1));
	for (int c = 0; c < ncols; c++)
	{
		cnames[c] = TextDatumGetCString(names[c]);
		spec.column_is_json[c] = DatumGetBool(flags[c]);
		spec.map[c].n = -1;
	}
	spec.keys = etl_key_resolver_create(ncols, cnames);
	spec.format = ETL_FORMAT_JSON;
	memset(&result, 0, sizeof(result));
	ok = etl_scan_page(&spec, VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), &result);
	etl_key_resolver_free(spec.keys);
	if (!ok)
	{
		etl_scan_result_free(&result);
		PG_RETURN_NULL();
	}
	initStringInfo(&out);
	/* "+": records_path led somewhere; "-": it did not */
	appendStringInfoChar(&out, result.container_seen ? '+' : '-');
	for (int c = 0; c < ncols; c++)
		if (result.present[c])
			appendStringInfo(&out, "%s%s", out.len > 1 ? "," : "", cnames[c]);
	appendStringInfoChar(&out, '\n');
	appendBinaryStringInfo(&out, result.copy_text ? result.copy_text : "", result.copy_len);
	etl_scan_result_free(&result);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(out.data, out.len));
}
