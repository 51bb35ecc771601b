/*-------------------------------------------------------------------------
 *
 * fuzz_page_records.c
 *	  libFuzzer harness: the jsonb path for pages -- ndjson lines and csv
 *	  records as jsonb (src/page_records.c), JSON envelopes through the
 *	  records, total and next paths (json_path.c) -- checked against the
 *	  one-pass reader (page_scan.c) on the same page.
 *
 * Input: one line of options (fuzz_spec.c says which), then the page's
 * body.
 *
 * The jsonb path raises the errors of a bad page (a line that is not a
 * JSON object, a csv row with too many fields ...): an ERROR is a normal
 * outcome.  The reader gives up, rather than raise, on anything it does
 * not handle exactly as the jsonb path would; so whenever it reads a page
 * the jsonb path must read it too, with the same number of records and
 * the same total and next values, and what it puts in a jsonb column
 * must be JSON that jsonb_in takes -- for a body page.c lets through (text
 * of the database encoding, no NUL).  csv records are built as the API sent
 * them (as_sent): the other way reads the target table's columns from
 * the catalog.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"

#include "fuzz_spec.h"

typedef struct RecordsCase
{
	FuzzPageSpec *ps;
	const char *body;
	size_t		len;
	EtlPath    *records;
	EtlPath    *total;
	EtlPath    *next;
	int			nrec;
	char	   *total_text;
	char	   *next_text;
} RecordsCase;

/* the job's paths (a job's are valid jsonpaths: keys that are not, are skipped) */
static void
compile(void *arg)
{
	RecordsCase *c = arg;

	c->records = etl_path_compile(c->ps->records_path);
	c->total = c->ps->total_path ? etl_path_compile(c->ps->total_path) : NULL;
	c->next = c->ps->next_path ? etl_path_compile(c->ps->next_path) : NULL;
}

/* the value a path finds first, as the pagination reads it, or NULL */
static char *
first_text(const EtlPath *path, const JsonbValue *doc)
{
	return path ? etl_jsonb_value_text(etl_path_first(path, doc)) : NULL;
}

static void
jsonb_path(void *arg)
{
	RecordsCase *c = arg;
	JsonbValue *records;

	if (c->ps->spec.format == ETL_FORMAT_JSON)
	{
		Jsonb	   *jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
															CStringGetDatum(pnstrdup(c->body, c->len))));
		JsonbValue	doc;

		etl_jsonb_as_value(jb, &doc);
		c->nrec = etl_path_query(c->records, &doc, &records);
		c->total_text = first_text(c->total, &doc);
		c->next_text = first_text(c->next, &doc);
	}
	else
	{
		EtlJob		job = {0};

		job.format = c->ps->spec.format;
		job.csv = c->ps->csv;
		job.target_table = "fuzz_target";
		c->nrec = etl_page_records(&job, c->body, c->len, 0, "https://api.example.com/page",
								   true, &records);
	}
}

/* a field of COPY text, unescaped */
static char *
copy_field(const char *p, const char *end)
{
	char	   *out = palloc(end - p + 1);
	char	   *o = out;

	for (; p < end; p++)
	{
		if (*p == '\\' && p + 1 < end)
		{
			p++;
			*o++ = *p == 'n' ? '\n' : *p == 'r' ? '\r' : *p == 't' ? '\t' : *p;
		}
		else
			*o++ = *p;
	}
	*o = '\0';
	return out;
}

static void
parse_jsonb(void *arg)
{
	(void) DirectFunctionCall1(jsonb_in, CStringGetDatum((char *) arg));
}

/*
 * The reader's COPY text for a jsonb column is JSON text from the page,
 * which it validated itself: jsonb_in, which COPY runs on it, must agree.
 */
static void
check_jsonb_fields(const FuzzPageSpec *ps, const EtlScanResult *res)
{
	int			cols[FUZZ_MAX_COLS];
	int			npresent = 0;
	const char *p = res->copy_text;
	const char *end = p + res->copy_len;

	for (int c = 0; c < ps->spec.ncols; c++)
		if (res->present[c])
			cols[npresent++] = c;
	while (p < end)
	{
		for (int f = 0; f < npresent; f++)
		{
			const char *field_end = p + strcspn(p, "\t\n");
			bool		is_null = field_end - p == 2 && p[0] == '\\' && p[1] == 'N';
			char	   *text = copy_field(p, field_end);

			if (ps->is_json[cols[f]] && !is_null && !fuzz_call(parse_jsonb, text))
				fuzz_fail("the reader's value \"%s\" for jsonb column %d is not JSON: %s",
						  text, cols[f] + 1, fuzz_error_message());
			p = field_end + 1;
		}
		if (npresent == 0)
			p++;
	}
}

static bool
same_text(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FuzzInput	in;
	FuzzPageSpec ps;
	RecordsCase c = {&ps};
	char	   *body;
	EtlScanResult res;
	bool		compiled;
	bool		scanned;
	bool		loaded;
	bool		text;

	fuzz_begin();
	fuzz_input_init(&in, data, size);
	fuzz_page_spec(fuzz_take_line(&in), &ps);
	body = fuzz_take_rest(&in, &c.len);
	c.body = body;

	compiled = ps.spec.format != ETL_FORMAT_JSON || fuzz_call(compile, &c);
	scanned = etl_scan_page(&ps.spec, body, c.len, &res);
	loaded = compiled && fuzz_call(jsonb_path, &c);
	/* page.c refuses a body that is not text of the database's encoding (NUL
	 * included) before either reader: both still run on it above, unchecked */
	text = pg_verify_mbstr(GetDatabaseEncoding(), body, c.len, true);
	fuzz_debug("reader: %s, %d records; jsonb path: %d records%s%s", scanned ? "read" : "gave up",
			   res.nrec, loaded ? c.nrec : -1, loaded ? "" : ", error: ",
			   loaded ? "" : fuzz_error_message());
	if (scanned && compiled && text)
	{
		if (!loaded)
			fuzz_fail("the reader read a page the jsonb path refuses (%s)", fuzz_error_message());
		if (res.nrec != c.nrec)
			fuzz_fail("the reader found %d records, the jsonb path %d", res.nrec, c.nrec);
		if (!same_text(res.total_text, c.total_text))
			fuzz_fail("total: the reader says %s, the jsonb path %s",
					  res.total_text ? res.total_text : "NULL",
					  c.total_text ? c.total_text : "NULL");
		if (ps.spec.format != ETL_FORMAT_CSV)
			check_jsonb_fields(&ps, &res);
		if (!same_text(res.next_text, c.next_text))
			fuzz_fail("next: the reader says %s, the jsonb path %s",
					  res.next_text ? res.next_text : "NULL",
					  c.next_text ? c.next_text : "NULL");
	}
	etl_scan_result_free(&res);
	fuzz_page_spec_free(&ps);
	free(body);
	fuzz_end();
	return 0;
}
