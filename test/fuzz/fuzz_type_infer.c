/*-------------------------------------------------------------------------
 *
 * fuzz_type_infer.c
 *	  libFuzzer harness: type inference (src/type_infer.c) on a page of
 *	  records, checked against the types' own input functions.
 *
 * Input: one line of options ("unique": track uniqueness, as a sample run
 * does), then a JSON array of records (any other JSON value is one
 * record).  A record that is no object is an ERROR, a normal outcome.
 *
 * type_infer.c promises "the PostgreSQL type that holds every value a
 * record key was seen with"; so each value of each key must go through the
 * inferred type's input function (date_in, timestamptz_in, uuid_in, int8in
 * ...) as the loader would hand it over -- a string's text, a number's
 * numeric text -- and each element of an array through its element
 * type's.  The report must be valid JSON.
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

#define MAX_RECORDS 512

typedef struct InferCase
{
	const char *body;
	bool		unique;
	JsonbValue	records[MAX_RECORDS];
	int			nrec;
	EtlInference *inf;
	char	   *report;
} InferCase;

static void
parse(void *arg)
{
	InferCase  *c = arg;
	Jsonb	   *jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(c->body)));

	if (JB_ROOT_IS_ARRAY(jb) && !JB_ROOT_IS_SCALAR(jb))
	{
		JsonbIterator *it = JsonbIteratorInit(&jb->root);
		JsonbValue	v;
		JsonbIteratorToken tok;

		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
			if (tok == WJB_ELEM && c->nrec < MAX_RECORDS)
				c->records[c->nrec++] = v;
	}
	else
		etl_jsonb_as_value(jb, &c->records[c->nrec++]);
}

static void
infer(void *arg)
{
	InferCase  *c = arg;

	c->inf = etl_infer_create(CurrentMemoryContext, c->unique);
	etl_infer_records(c->inf, c->records, c->nrec, 0);
	c->report = etl_infer_report(c->inf);
	(void) DirectFunctionCall1(jsonb_in, CStringGetDatum(c->report));
}

/* a type's input function, or NULL for text and jsonb (they take anything) */
static PGFunction
input_function(const char *type)
{
	static const struct
	{
		const char *name;
		PGFunction	fn;
	}			inputs[] = {
		{"boolean", boolin},
		{"bigint", int8in},
		{"numeric", numeric_in},
		{"date", date_in},
		{"timestamp", timestamp_in},
		{"timestamptz", timestamptz_in},
		{"uuid", uuid_in},
	};

	for (int i = 0; i < lengthof(inputs); i++)
		if (strcmp(type, inputs[i].name) == 0)
			return inputs[i].fn;
	if (strcmp(type, "text") != 0 && strcmp(type, "jsonb") != 0)
		fuzz_fail("inferred type \"%s\" is none type_infer.c should name", type);
	return NULL;
}

typedef struct Input
{
	PGFunction	fn;
	const char *text;
} Input;

static void
call_input(void *arg)
{
	Input	   *in = arg;

	(void) DirectFunctionCall3(in->fn, CStringGetDatum(in->text), ObjectIdGetDatum(InvalidOid),
							   Int32GetDatum(-1));
}

/* a scalar value as the loader hands it to the type: its text */
static void
check_scalar(const char *key, const char *type, PGFunction fn, const JsonbValue *v)
{
	Input		in = {fn, NULL};

	if (v->type == jbvNull)
		return;
	if (v->type == jbvBinary)
		fuzz_fail("key \"%s\": type %s for a container", key, type);
	in.text = etl_jsonb_value_text(v);
	if (!fuzz_call(call_input, &in))
		fuzz_fail("key \"%s\": inferred type %s refuses the value \"%s\": %s", key, type,
				  in.text, fuzz_error_message());
}

static void
check_value(const char *key, const char *type, const JsonbValue *v)
{
	size_t		len = strlen(type);

	if (v->type == jbvNull || strcmp(type, "text") == 0 || strcmp(type, "jsonb") == 0)
		return;
	if (len > 2 && strcmp(type + len - 2, "[]") == 0)
	{
		char	   *elem_type = pnstrdup(type, len - 2);
		PGFunction	fn = input_function(elem_type);
		JsonbIterator *it;
		JsonbValue	e;
		JsonbIteratorToken tok;

		if (v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data))
			fuzz_fail("key \"%s\": type %s for a value that is no array", key, type);
		if (fn == NULL)
			return;
		it = JsonbIteratorInit(v->val.binary.data);
		while ((tok = JsonbIteratorNext(&it, &e, true)) != WJB_DONE)
			if (tok == WJB_ELEM)
				check_scalar(key, type, fn, &e);
		return;
	}
	check_scalar(key, type, input_function(type), v);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FuzzInput	in;
	InferCase  *c;

	fuzz_begin();
	fuzz_input_init(&in, data, size);
	c = palloc0(sizeof(InferCase));
	c->unique = fuzz_flag(fuzz_take_line(&in), "unique");
	c->body = pnstrdup(in.p, in.end - in.p);

	if (fuzz_call(parse, c) && fuzz_call(infer, c))
	{
		fuzz_debug("%s", c->report);
		for (int k = 0; k < etl_infer_nkeys(c->inf); k++)
		{
			const char *key = etl_infer_key(c->inf, k);
			const char *type = etl_infer_type(c->inf, k);

			for (int r = 0; r < c->nrec; r++)
			{
				JsonbValue *v = getKeyJsonValueFromContainer(c->records[r].val.binary.data,
															 key, strlen(key), NULL);

				if (v)
					check_value(key, type, v);
			}
		}
	}
	fuzz_end();
	return 0;
}
