/*-------------------------------------------------------------------------
 *
 * fuzz_json_path.c
 *	  libFuzzer harness: jsonpath evaluation (src/json_path.c) as the
 *	  loader uses it -- a records_path over a page's body, then a
 *	  column_map path over each record found -- checked against
 *	  PostgreSQL's own jsonpath engine.
 *
 * Input: two lines, then a JSON document.
 *
 *	  line 1	the records path ($.value[*])
 *	  line 2	the column path ($.address.city)
 *	  rest		the page's body
 *
 * json_path.c evaluates plain member chains with [*] itself, in lax-mode
 * semantics, on values that point into the parsed page; it must find
 * exactly what jsonb_path_query_array(doc, path, '{}', silent => true)
 * finds, value for value and in the same order.  The other helpers
 * (etl_path_split, etl_jsonb_value_text, etl_jsonb_top_keys,
 * etl_jsonb_str/int) run on the same document for their memory safety.
 * An invalid path or document is an ERROR: a normal outcome.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"

#include "etl_exec.h"
#include "fuzz.h"

typedef struct PathCase
{
	const char *records_text;
	const char *column_text;
	const char *body;
	EtlPath    *records;
	EtlPath    *column;
	Datum		records_jsonpath;	/* for PostgreSQL's engine */
	Datum		column_jsonpath;
	Jsonb	   *doc;
} PathCase;

static void
compile(void *arg)
{
	PathCase   *c = arg;

	c->records = etl_path_compile(c->records_text);
	c->records_jsonpath = DirectFunctionCall1(jsonpath_in, CStringGetDatum(c->records_text));
	c->column = etl_path_compile(c->column_text);
	c->column_jsonpath = DirectFunctionCall1(jsonpath_in, CStringGetDatum(c->column_text));
}

static void
parse(void *arg)
{
	PathCase   *c = arg;

	c->doc = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(c->body)));
}

/* a value as JSON text, to compare two evaluators' findings */
static char *
value_text(const JsonbValue *v)
{
	Jsonb	   *jb = JsonbValueToJsonb((JsonbValue *) v);

	return JsonbToCString(NULL, &jb->root, VARSIZE(jb));
}

typedef struct Query
{
	const EtlPath *path;
	Datum		jsonpath;
	const JsonbValue *doc;
	JsonbValue *items;			/* json_path.c's */
	int			n;
	Jsonb	   *expected;		/* PostgreSQL's, as an array */
} Query;

static void
run_ours(void *arg)
{
	Query	   *q = arg;

	q->n = etl_path_query(q->path, q->doc, &q->items);
	for (int i = 0; i < q->n; i++)
		(void) etl_jsonb_value_text(&q->items[i]);
	(void) etl_path_first(q->path, q->doc);
}

static void
run_postgres(void *arg)
{
	Query	   *q = arg;

	q->expected = DatumGetJsonbP(DirectFunctionCall4(jsonb_path_query_array,
													 JsonbPGetDatum(JsonbValueToJsonb((JsonbValue *) q->doc)),
													 q->jsonpath,
													 DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")),
													 BoolGetDatum(true)));
}

/* Evaluate path on doc both ways; the two must agree.  Returns ours. */
static int
query(const EtlPath *path, Datum jsonpath, const JsonbValue *doc, JsonbValue **items)
{
	Query		q = {path, jsonpath, doc, NULL, 0, NULL};
	bool		ours = fuzz_call(run_ours, &q);
	bool		theirs = fuzz_call(run_postgres, &q);

	fuzz_debug("%s: %d values%s", etl_path_text(path), ours ? q.n : -1,
			   ours ? "" : " (an error)");
	if (ours != theirs)
		fuzz_fail("path %s: json_path.c %s, PostgreSQL's engine %s", etl_path_text(path),
				  ours ? "succeeded" : "failed", theirs ? "succeeded" : "failed");
	if (ours)
	{
		JsonbIterator *it = JsonbIteratorInit(&q.expected->root);
		JsonbValue	v;
		JsonbIteratorToken tok;
		int			i = 0;

		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			char	   *want;
			char	   *got;

			if (tok != WJB_ELEM)
				continue;
			if (i >= q.n)
				fuzz_fail("path %s: json_path.c found %d values, PostgreSQL more",
						  etl_path_text(path), q.n);
			want = value_text(&v);
			got = value_text(&q.items[i]);
			if (strcmp(want, got) != 0)
				fuzz_fail("path %s: value %d is %s, PostgreSQL's engine says %s",
						  etl_path_text(path), i + 1, got, want);
			i++;
		}
		if (i != q.n)
			fuzz_fail("path %s: json_path.c found %d values, PostgreSQL %d",
					  etl_path_text(path), q.n, i);
	}
	*items = q.items;
	return ours ? q.n : 0;
}

static void
helpers(void *arg)
{
	PathCase   *c = arg;
	EtlKeyPath	before;
	EtlKeyPath	after;
	bool		star;

	(void) etl_path_split(c->records, &before, &star, &after);
	(void) etl_path_split(c->column, &before, &star, &after);
	(void) etl_jsonb_top_keys(c->doc);
	if (JB_ROOT_IS_OBJECT(c->doc))
	{
		(void) etl_jsonb_str(c->doc, c->column_text);
		(void) etl_jsonb_int(c->doc, c->column_text, -1);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FuzzInput	in;
	PathCase	c = {0};
	JsonbValue	root;
	JsonbValue *records;
	int			nrec;

	fuzz_begin();
	fuzz_input_init(&in, data, size);
	c.records_text = fuzz_take_line(&in);
	c.column_text = fuzz_take_line(&in);
	c.body = pnstrdup(in.p, in.end - in.p);

	if (!fuzz_call(compile, &c) || !fuzz_call(parse, &c))
		fuzz_debug("refused: %s", fuzz_error_message());
	else
	{
		etl_jsonb_as_value(c.doc, &root);
		nrec = query(c.records, c.records_jsonpath, &root, &records);
		/* the column path on each record, as the loader maps columns */
		for (int r = 0; r < nrec && r < 256; r++)
		{
			JsonbValue *values;

			(void) query(c.column, c.column_jsonpath, &records[r], &values);
		}
		(void) fuzz_call(helpers, &c);
	}
	fuzz_end();
	return 0;
}
