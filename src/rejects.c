/*-------------------------------------------------------------------------
 *
 * rejects.c
 *	  Records a run rejects (on_bad_record = 'reject'): which errors reject
 *	  a record, what is kept of one, and its row in dw_etl_rejects.
 *
 * A record is rejected for an error of class 22 (data exception: a value
 * its column type's input refuses, a domain check, a string too long, a
 * number out of range) or class 23 (integrity constraint violation: NOT
 * NULL, CHECK, UNIQUE, FOREIGN KEY, EXCLUSION) -- the errors a record
 * itself causes.  Everything else (privileges, row-level security, locks,
 * cancels, resources, the target's own breakage) fails the run as before.
 *
 * The loader (loader.c) finds the records and their errors; their rows
 * are written here, as the worker, in the page's transaction: they commit
 * with the page and its checkpoint, or not at all.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "etl_exec.h"

/* Whether an error is the record's own: it rejects the record. */
bool
etl_error_rejects_record(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_DATA_EXCEPTION:
		case ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION:
			return true;
		default:
			return false;
	}
}

/*
 * The column a value error names in its context: the loader's error
 * contexts say 'page N, record M, column "name", value ...' (loader.c's
 * convert_error_context and name_copy_position).  NULL when none does.
 */
static char *
context_column(const char *context)
{
	const char *line;

	for (line = context; line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
	{
		const char *line_end = line + strcspn(line, "\n");
		const char *col;
		const char *end;

		if (strncmp(line, "page ", 5) != 0 ||
			(col = strstr(line, ", column \"")) == NULL || col > line_end)
			continue;
		col += 10;
		/* the name ends where the value begins (a name may hold quotes) */
		end = strstr(col, "\", value ");
		if (end == NULL || end > line_end)
			continue;
		return pnstrdup(col, end - col);
	}
	return NULL;
}

/*
 * What is kept of a rejected record: its index in the page, the column
 * whose value was refused when the error says (a NOT NULL violation, a
 * value its column type refuses; a CHECK constraint spans columns: NULL),
 * the message and the SQLSTATE.
 */
EtlRejectedRecord *
etl_rejected_record(const ErrorData *edata, int record_index)
{
	EtlRejectedRecord *r = palloc0(sizeof(EtlRejectedRecord));

	r->record_index = record_index;
	if (edata->column_name)
		r->column_name = pstrdup(edata->column_name);
	else if (edata->context)
		r->column_name = context_column(edata->context);
	/* a value the API echoed from a secret is named in the error: redacted */
	if (r->column_name)
		r->column_name = etl_redact(r->column_name);
	r->error = etl_redact(edata->message ? edata->message : "unknown error");
	r->sqlerrcode = edata->sqlerrcode;
	return r;
}

/*
 * Write the page's rejects (EtlRejectedRecord *) into dw_etl_rejects, each
 * with its record as the API sent it (records[record_index]), in the
 * current transaction, as the worker; a secret value in it is redacted.
 * partition_index -1: the run has no partitions.
 */
void
etl_store_rejects(int64 run_id, int32 job_id, int32 partition_index, int32 page_index,
				  List *rejects, JsonbValue *records, int nrec)
{
	Oid			types[9] = {INT8OID, INT4OID, INT4OID, INT4OID, INT4OID, JSONBOID, TEXTOID,
	TEXTOID, TEXTOID};
	ListCell   *lc;
	char	   *sql;

	if (rejects == NIL)
		return;
	sql = psprintf("INSERT INTO %s (run_id, job_id, partition_index, page_index, record_index, "
				   "  record, column_name, error, sqlstate) "
				   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", etl_qualified("dw_etl_rejects"));
	SPI_connect();
	foreach(lc, rejects)
	{
		EtlRejectedRecord *r = (EtlRejectedRecord *) lfirst(lc);
		Datum		values[9];
		char		nulls[9];

		if (r->record_index < 0 || r->record_index >= nrec)
			elog(ERROR, "etl_exec: rejected record %d of page %d is not among its %d records",
				 r->record_index + 1, page_index + 1, nrec);
		memset(nulls, ' ', sizeof(nulls));
		values[0] = Int64GetDatum(run_id);
		values[1] = Int32GetDatum(job_id);
		values[2] = Int32GetDatum(partition_index);
		nulls[2] = partition_index < 0 ? 'n' : ' ';
		values[3] = Int32GetDatum(page_index);
		values[4] = Int32GetDatum(r->record_index);
		values[5] = JsonbPGetDatum(etl_redact_jsonb(JsonbValueToJsonb(&records[r->record_index])));
		values[6] = r->column_name ? CStringGetTextDatum(r->column_name) : (Datum) 0;
		nulls[6] = r->column_name ? ' ' : 'n';
		values[7] = CStringGetTextDatum(r->error);
		values[8] = CStringGetTextDatum(unpack_sql_state(r->sqlerrcode));
		if (SPI_execute_with_args(sql, 9, types, values, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "etl_exec: could not record a rejected record of run " INT64_FORMAT, run_id);
	}
	SPI_finish();
}

/*
 * A dry run's rejects, as the JSON members
 * "rejected": n, "rejects": [{"record_index", "column_name", "error"}, ...].
 */
char *
etl_describe_rejects(List *rejects)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	appendStringInfo(&buf, "\"rejected\": %d, \"rejects\": [", list_length(rejects));
	foreach(lc, rejects)
	{
		EtlRejectedRecord *r = (EtlRejectedRecord *) lfirst(lc);

		appendStringInfo(&buf, "%s{\"record_index\": %d, \"column_name\": ",
						 foreach_current_index(lc) ? ", " : "", r->record_index);
		if (r->column_name)
			escape_json(&buf, r->column_name);
		else
			appendStringInfoString(&buf, "null");
		appendStringInfoString(&buf, ", \"error\": ");
		escape_json(&buf, r->error);
		appendStringInfoChar(&buf, '}');
	}
	appendStringInfoChar(&buf, ']');
	return buf.data;
}
