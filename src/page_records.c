/*-------------------------------------------------------------------------
 *
 * page_records.c
 *	  The records of an ndjson or csv page as jsonb, and the errors of a
 *	  page that is not what its format says.
 *
 * The loader's jsonb path takes the pages the one-pass reader
 * (page_scan.c) does not: dry runs, upserts, row-level security, json
 * columns, and pages the reader gave up on -- among them every page with
 * a bad line, whose error is raised here, naming the page and the line.
 *
 * An ndjson line is parsed as jsonb.  A csv record becomes an object whose
 * keys are the header's names and whose values are the fields' text as
 * JSON strings (a NULL field: null), so that a column takes a field by
 * name or through column_map exactly as it takes a JSON key; a field bound
 * for a json or jsonb column is parsed as JSON instead, as COPY (and the
 * one-pass reader) would read it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "compat.h"
#include "etl_exec.h"

#define SNIPPET_BYTES 100

/* where a page's line is, for error contexts */
typedef struct LinePosition
{
	int32		page_index;
	int			line;
	const char *url;
	const char *start;			/* the line (or record) in the body */
	const char *end;			/* the body's end */
} LinePosition;

/* the start of a line or record, at most SNIPPET_BYTES of it */
static char *
snippet(const char *start, const char *end)
{
	const char *nl = memchr(start, '\n', end - start);
	int			len = (nl ? nl : end) - start;

	if (len > SNIPPET_BYTES)
		len = pg_mbcliplen(start, len, SNIPPET_BYTES);
	return pnstrdup(start, len);
}

static void
line_error_context(void *arg)
{
	LinePosition *pos = (LinePosition *) arg;

	errcontext("line %d of page %d of the response to %s: %s", pos->line, pos->page_index + 1,
			   pos->url, snippet(pos->start, pos->end));
}

/* ---------- ndjson ---------- */

static bool
blank(const char *p, const char *end)
{
	for (; p < end; p++)
		if (*p != ' ' && *p != '\t' && *p != '\r')
			return false;
	return true;
}

/* Each line that is not blank, parsed: one object, one record. */
static int
ndjson_records(const char *body, size_t len, int32 page_index, const char *url,
			   JsonbValue **records)
{
	const char *end = body + len;
	const char *p = body;
	int			n = 0;
	int			cap = 64;
	LinePosition pos = {page_index, 0, url, NULL, end};
	ErrorContextCallback errcb;

	*records = palloc(sizeof(JsonbValue) * cap);
	if (len >= 3 && memcmp(body, "\xEF\xBB\xBF", 3) == 0)
		p += 3;
	errcb.callback = line_error_context;
	errcb.arg = &pos;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	while (p < end)
	{
		const char *nl = memchr(p, '\n', end - p);
		const char *line_end = nl ? nl : end;

		pos.line++;
		pos.start = p;
		if (!blank(p, line_end))
		{
			Jsonb	   *jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
																CStringGetDatum(pnstrdup(p, line_end - p))));

			if (!JB_ROOT_IS_OBJECT(jb))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
						 errmsg("line %d of page %d is not a JSON object", pos.line, page_index + 1),
						 errhint("With format ndjson each line that is not blank is one record: a JSON object.")));
			if (n == cap)
				*records = repalloc(*records, sizeof(JsonbValue) * (cap *= 2));
			etl_jsonb_as_value(jb, &(*records)[n++]);
		}
		p = nl ? nl + 1 : end;
	}
	error_context_stack = errcb.previous;
	return n;
}

/* ---------- csv ---------- */

/* a header of a csv page: its name, and the json/jsonb column it feeds */
typedef struct CsvHeader
{
	char	   *name;
	int			len;
	const char *json_column;	/* NULL: its field is a string */
} CsvHeader;

/*
 * Which headers feed a json or jsonb column, mapped as the loader maps
 * them: through column_map's one-step paths, else by name (the key
 * resolver over the columns a load may write).
 */
static void
find_json_columns(const EtlJob *job, CsvHeader *headers, int nheaders)
{
	Oid			relid = RangeVarGetRelid(makeRangeVarFromNameList(etl_qualified_name_list(job->target_table)),
										 AccessShareLock, true);
	Relation	rel;
	TupleDesc	desc;
	char	  **names;
	bool	   *is_json;
	int			ncols = 0;

	/* a sample run's table need not exist: then every field is a string */
	if (!OidIsValid(relid))
		return;
	rel = relation_open(relid, NoLock);
	desc = RelationGetDescr(rel);
	names = palloc(sizeof(char *) * Max(desc->natts, 1));
	is_json = palloc(sizeof(bool) * Max(desc->natts, 1));

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->attgenerated || att->attidentity == ATTRIBUTE_IDENTITY_ALWAYS)
			continue;
		names[ncols] = pstrdup(NameStr(att->attname));
		is_json[ncols++] = att->atttypid == JSONBOID || getBaseType(att->atttypid) == JSONOID;
	}
	relation_close(rel, AccessShareLock);

	if (job->column_map)
	{
		JsonbIterator *it = JsonbIteratorInit(&job->column_map->root);
		JsonbValue	v;
		JsonbIteratorToken tok;
		char	   *column = NULL;

		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			EtlKeyPath	path;
			EtlKeyPath	after;
			bool		star;
			int			c;

			if (tok == WJB_KEY)
				column = pnstrdup(v.val.string.val, v.val.string.len);
			if (tok != WJB_VALUE || v.type != jbvString)
				continue;
			for (c = 0; c < ncols && strcmp(names[c], column) != 0; c++)
				;
			/* ({param:NAME}: a value of the run's, not a field of the page) */
			if (c == ncols || !is_json[c] ||
				etl_column_map_parameter(v.val.string.val, v.val.string.len) != NULL ||
				!etl_path_split(etl_path_compile(pnstrdup(v.val.string.val, v.val.string.len)),
								&path, &star, &after) || star || path.n != 1)
				continue;
			for (int h = 0; h < nheaders; h++)
				if (headers[h].len == path.lens[0] &&
					memcmp(headers[h].name, path.keys[0], path.lens[0]) == 0)
					headers[h].json_column = names[c];
		}
	}
	else
	{
		EtlKeyResolver *keys = etl_key_resolver_create(ncols, names);

		if (keys == NULL)
			elog(ERROR, "etl_exec: out of memory");
		for (int h = 0; h < nheaders; h++)
		{
			int			c = etl_key_resolver_column(keys, h, headers[h].name, headers[h].len);

			if (c >= 0 && is_json[c])
				headers[h].json_column = names[c];
		}
		etl_key_resolver_free(keys);
	}
}

/* the header's names; a name given twice is an error */
static CsvHeader *
read_header(const EtlCsvReader *r, int32 page_index)
{
	CsvHeader  *headers = palloc0(sizeof(CsvHeader) * Max(r->nfields, 1));

	for (int h = 0; h < r->nfields; h++)
	{
		const char *data = etl_csv_field_data(r, &r->fields[h]);

		/* (page.c refuses a NUL in a body; this reader does not rely on it) */
		if (memchr(data, '\0', r->fields[h].len) != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
					 errmsg("the CSV header of page %d holds a NUL byte in field %d", page_index + 1, h + 1),
					 errhint("A csv page's field names must be text.")));
		headers[h].len = r->fields[h].len;
		headers[h].name = pnstrdup(data, headers[h].len);
		for (int g = 0; g < h; g++)
			if (strcmp(headers[g].name, headers[h].name) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
						 errmsg("the CSV header of page %d names the field \"%s\" twice", page_index + 1,
								headers[h].name),
						 errhint("Each field of a csv page's header must have a name of its own.")));
	}
	return headers;
}

/* where a field bound for a json or jsonb column is, for the error context */
typedef struct FieldPosition
{
	int32		page_index;
	int			record;
	const char *column;
	const char *value;
} FieldPosition;

static void
field_error_context(void *arg)
{
	FieldPosition *pos = (FieldPosition *) arg;

	/* as the loader names a value that does not fit */
	errcontext("page %d, record %d, column \"%s\", value \"%.200s\"",
			   pos->page_index + 1, pos->record, pos->column, pos->value);
}

/* A field bound for a json or jsonb column, parsed as JSON. */
static void
json_field(const char *text, const char *column, int32 page_index, int record, JsonbValue *v)
{
	FieldPosition pos = {page_index, record, column, text};
	ErrorContextCallback errcb;

	errcb.callback = field_error_context;
	errcb.arg = &pos;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	etl_jsonb_as_value(DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text))), v);
	error_context_stack = errcb.previous;
}

/* A csv record as a jsonb object: header name -> field. */
static void
csv_record(const EtlCsvReader *r, const CsvHeader *headers, int32 page_index, int record,
		   JsonbValue *out)
{
	JsonbParseState *state = NULL;
	JsonbValue	k;
	JsonbValue	v;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int h = 0; h < r->nfields; h++)
	{
		const EtlCsvField *f = &r->fields[h];

		k.type = jbvString;
		k.val.string.val = headers[h].name;
		k.val.string.len = headers[h].len;
		pushJsonbValue(&state, WJB_KEY, &k);
		if (f->isnull)
			v.type = jbvNull;
		else if (headers[h].json_column)
			json_field(pnstrdup(etl_csv_field_data(r, f), f->len), headers[h].json_column,
					   page_index, record, &v);
		else
		{
			v.type = jbvString;
			v.val.string.val = (char *) etl_csv_field_data(r, f);
			v.val.string.len = f->len;
		}
		pushJsonbValue(&state, WJB_VALUE, &v);
	}
	etl_jsonb_as_value(JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL)), out);
}

/* The records after the header row, read by r. */
static int
csv_rows(const EtlJob *job, EtlCsvReader *r, int32 page_index, LinePosition *pos,
		 bool as_sent, JsonbValue **records)
{
	CsvHeader  *headers = NULL;
	int			nheaders = 0;
	int			n = 0;
	int			cap = 64;
	int			rc;

	*records = palloc(sizeof(JsonbValue) * cap);
	while ((rc = etl_csv_next(r)) != 0)
	{
		pos->line = r->line;
		pos->start = r->start;
		if (rc < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("bad CSV on line %d of page %d: %s", r->line, page_index + 1, r->error),
					 errhint("Check the job's csv_options (delimiter, quote, escape) against the API's CSV.")));
		if (headers == NULL)
		{
			headers = read_header(r, page_index);
			nheaders = r->nfields;
			if (!as_sent)
				find_json_columns(job, headers, nheaders);
			continue;
		}
		if (r->nfields != nheaders)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("line %d of page %d has %d fields where the CSV header has %d",
							r->line, page_index + 1, r->nfields, nheaders),
					 errhint("Each row of a csv page has a field for each header; check the job's csv_options (delimiter, quote, escape).")));
		if (n == cap)
			*records = repalloc(*records, sizeof(JsonbValue) * (cap *= 2));
		csv_record(r, headers, page_index, n + 1, &(*records)[n]);
		n++;
	}
	return n;
}

/* The header row names the fields; each row after it is a record. */
static int
csv_records(const EtlJob *job, const char *body, size_t len, int32 page_index, const char *url,
			bool as_sent, JsonbValue **records)
{
	EtlCsvReader *r = palloc(sizeof(EtlCsvReader));
	LinePosition pos = {page_index, 0, url, body, body + len};
	ErrorContextCallback errcb;
	volatile int n = 0;

	etl_csv_reader_init(r, &job->csv, body, len);
	errcb.callback = line_error_context;
	errcb.arg = &pos;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	PG_TRY();
	{
		n = csv_rows(job, r, page_index, &pos, as_sent, records);
	}
	PG_FINALLY();
	{
		etl_csv_reader_free(r);		/* malloc'd */
	}
	PG_END_TRY();
	error_context_stack = errcb.previous;
	return n;
}

/*
 * The records of an ndjson or csv page (in the current memory context),
 * for the loader's jsonb path; returns how many.  url names the request
 * in error messages.  as_sent: a csv record's fields all as strings, none
 * parsed as JSON for a json column (the record as the API sent it, for
 * dw_etl_rejects: a field that is not JSON is kept, not an error).
 */
int
etl_page_records(const EtlJob *job, const char *body, size_t len, int32 page_index,
				 const char *url, bool as_sent, JsonbValue **records)
{
	if (job->format == ETL_FORMAT_NDJSON)
		return ndjson_records(body, len, page_index, url, records);
	return csv_records(job, body, len, page_index, url, as_sent, records);
}
