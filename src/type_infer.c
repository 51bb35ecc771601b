/*-------------------------------------------------------------------------
 *
 * type_infer.c
 *	  The PostgreSQL type that holds every value a record key was seen
 *	  with: statistics of the values, never the values themselves.
 *
 * One place decides column types from JSON values, for two callers: a
 * sample run (etl_infer_table: the keys of a few pages) and a run with
 * on_new_keys = 'add_columns' (a key no column takes: its values on the
 * page that first carried it).  Per key it keeps the kinds of values seen
 * (a bit each), how many records carried it and how many were null, and,
 * for a sample, whether its scalar values were unique (hashes of them, up
 * to a bound).  Memory grows with the keys, not the records.
 *
 * The rules, from the kinds seen (nulls do not count):
 *	  booleans only                          boolean
 *	  integers that fit int8 only            bigint
 *	  integers (any size) and decimals       numeric
 *	  strings, every one ISO 8601 with zone  timestamptz
 *	  ... every one ISO 8601, none with zone timestamp (kept as sent: a
 *	                                         timestamptz would read it in
 *	                                         the server's time zone)
 *	  ... every one YYYY-MM-DD               date
 *	  ... every one a UUID                   uuid
 *	  other strings, mixed scalar kinds      text
 *	  an object anywhere                     jsonb
 *	  arrays only, their elements of one     that type[]
 *	  scalar kind
 *	  other arrays (objects, nested, mixed,  jsonb
 *	  empty only), arrays and scalars
 *	  nothing but nulls                      text
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "etl_exec.h"

/* the kinds of value a key was seen with */
#define K_BOOL		0x0001
#define K_INT		0x0002		/* an integer that fits int8 */
#define K_BIGINT	0x0004		/* an integer that does not */
#define K_DEC		0x0008		/* a number with a fraction or exponent */
#define K_TSTZ		0x0010		/* ISO 8601 date and time with a zone */
#define K_TS		0x0020		/* ... without one */
#define K_DATE		0x0040		/* YYYY-MM-DD */
#define K_UUID		0x0080
#define K_STR		0x0100		/* any other string */
#define K_OBJ		0x0200
#define K_ARR		0x0400

#define K_NUMBER	(K_INT | K_BIGINT | K_DEC)
#define K_STRING	(K_TSTZ | K_TS | K_DATE | K_UUID | K_STR)

/* distinct values remembered per key before its uniqueness is unknown */
#define UNIQUE_MAX	65536

/* PostgreSQL's limit on a table's columns */
#define MAX_KEYS	1600

typedef struct InferKey
{
	char	   *key;
	int			len;
	int64		records;		/* records that carry it */
	int64		nulls;
	int			kinds;
	int			elem_kinds;		/* of the elements of its arrays */
	bool		maybe_unique;	/* no scalar value seen twice (so far) */
	uint64	   *hashes;			/* open addressing, 0 = empty; NULL: off */
	int			nhashes;
	int			hash_cap;
} InferKey;

struct EtlInference
{
	MemoryContext cxt;
	bool		track_unique;
	int64		pages;
	int64		records;
	InferKey   *keys;
	int			nkeys;
	int			cap;
};

EtlInference *
etl_infer_create(MemoryContext parent, bool track_unique)
{
	MemoryContext cxt = AllocSetContextCreate(parent, "etl_exec type inference",
											  ALLOCSET_SMALL_SIZES);
	EtlInference *inf = MemoryContextAllocZero(cxt, sizeof(EtlInference));

	inf->cxt = cxt;
	inf->track_unique = track_unique;
	return inf;
}

/* ---------- the kind of a string ---------- */

static bool
digits(const char *s, int n)
{
	for (int i = 0; i < n; i++)
		if (!isdigit((unsigned char) s[i]))
			return false;
	return true;
}

static int
num2(const char *s)
{
	return (s[0] - '0') * 10 + (s[1] - '0');
}

/* YYYY-MM-DD, a day the month has */
static bool
is_date(const char *s, int len)
{
	static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int			y,
				m,
				d;

	if (len < 10 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' ||
		!digits(s + 8, 2))
		return false;
	y = atoi(s);
	m = num2(s + 5);
	d = num2(s + 8);
	if (y < 1 || m < 1 || m > 12 || d < 1 || d > mdays[m - 1])
		return false;
	return m != 2 || d < 29 || (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0));
}

/*
 * The kind of a string: K_DATE for YYYY-MM-DD; K_TSTZ or K_TS for a date,
 * 'T' or ' ', hh:mm[:ss[.frac]] and a zone (Z, +hh, +hhmm, +hh:mm) or none;
 * K_UUID; else K_STR.
 */
static int
string_kind(const char *s, int len)
{
	const char *p;
	const char *end = s + len;

	if (len == 36)
	{
		bool		uuid = true;

		for (int i = 0; i < 36 && uuid; i++)
			uuid = (i == 8 || i == 13 || i == 18 || i == 23) ? s[i] == '-' :
				isxdigit((unsigned char) s[i]);
		if (uuid)
			return K_UUID;
	}
	/* longer than the date/time input functions read (a long fraction) */
	if (!is_date(s, len) || len > MAXDATELEN)
		return K_STR;
	if (len == 10)
		return K_DATE;
	p = s + 10;
	if ((*p != 'T' && *p != 't' && *p != ' ') || end - p < 6 || !digits(p + 1, 2) ||
		p[3] != ':' || !digits(p + 4, 2) || num2(p + 1) > 23 || num2(p + 4) > 59)
		return K_STR;
	p += 6;
	if (p < end && *p == ':')
	{
		/* (PostgreSQL takes a leap second :60 only without a fraction) */
		if (end - p < 3 || !digits(p + 1, 2) || num2(p + 1) > 60 ||
			(num2(p + 1) == 60 && end - p > 3 && p[3] == '.'))
			return K_STR;
		p += 3;
		if (p < end && *p == '.')	/* (not ',': PostgreSQL refuses it) */
		{
			p++;
			if (p >= end || !isdigit((unsigned char) *p))
				return K_STR;
			while (p < end && isdigit((unsigned char) *p))
				p++;
		}
	}
	if (p == end)
		return K_TS;
	if ((*p == 'Z' || *p == 'z') && p + 1 == end)
		return K_TSTZ;
	if (*p != '+' && *p != '-')
		return K_STR;
	p++;
	if (end - p < 2 || !digits(p, 2) || num2(p) > 15)
		return K_STR;
	p += 2;
	if (p < end && *p == ':')
		p++;
	if (p == end)
		return K_TSTZ;
	if (end - p != 2 || !digits(p, 2) || num2(p) > 59)
		return K_STR;
	return K_TSTZ;
}

/* ---------- the kind of a value ---------- */

static int
number_kind(Numeric num)
{
	char	   *text = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(num)));
	int			kind = K_INT;

	if (strpbrk(text, ".eE") != NULL || strcmp(text, "NaN") == 0 ||
		strstr(text, "Infinity") != NULL)
		kind = K_DEC;
	else
	{
		char	   *end;

		errno = 0;
		(void) strtoll(text, &end, 10);
		if (errno == ERANGE || *end != '\0')
			kind = K_BIGINT;
	}
	pfree(text);
	return kind;
}

/* The kind of a scalar JSON value; 0 for null. */
static int
scalar_kind(const JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			return 0;
		case jbvBool:
			return K_BOOL;
		case jbvNumeric:
			return number_kind(v->val.numeric);
		case jbvString:
			return string_kind(v->val.string.val, v->val.string.len);
		default:
			return K_STR;
	}
}

/* The kinds of an array's elements (nested containers: K_OBJ, K_ARR). */
static int
element_kinds(JsonbContainer *array)
{
	JsonbIterator *it = JsonbIteratorInit(array);
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			kinds = 0;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok != WJB_ELEM)
			continue;
		if (v.type == jbvBinary)
			kinds |= JsonContainerIsArray(v.val.binary.data) ? K_ARR : K_OBJ;
		else
			kinds |= scalar_kind(&v);
	}
	return kinds;
}

/* ---------- per key ---------- */

static InferKey *
find_key(EtlInference *inf, const char *key, int len)
{
	InferKey   *k;

	/* keys come in the same order record after record: a scan is enough */
	for (int i = 0; i < inf->nkeys; i++)
		if (inf->keys[i].len == len && memcmp(inf->keys[i].key, key, len) == 0)
			return &inf->keys[i];
	if (inf->nkeys == MAX_KEYS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the records have more than %d distinct keys, more than a table can have columns",
						MAX_KEYS),
				 errhint("Point the job's records_path at the records themselves.")));
	if (inf->nkeys == inf->cap)
	{
		inf->cap = Max(16, inf->cap * 2);
		inf->keys = inf->keys ? repalloc(inf->keys, sizeof(InferKey) * inf->cap)
			: MemoryContextAlloc(inf->cxt, sizeof(InferKey) * inf->cap);
	}
	k = &inf->keys[inf->nkeys++];
	memset(k, 0, sizeof(*k));
	k->key = MemoryContextAlloc(inf->cxt, len + 1);
	memcpy(k->key, key, len);
	k->key[len] = '\0';
	k->len = len;
	k->maybe_unique = inf->track_unique;
	return k;
}

/* Remember a scalar value's hash; false when it was seen before. */
static void
note_unique(EtlInference *inf, InferKey *k, const JsonbValue *v)
{
	uint64		h;
	char	   *text;

	if (!k->maybe_unique)
		return;
	if (v->type == jbvBinary || k->nhashes >= UNIQUE_MAX)
	{
		k->maybe_unique = false;
		return;
	}
	text = etl_jsonb_value_text(v);
	h = hash_bytes_extended((const unsigned char *) text, strlen(text), v->type) | 1;
	pfree(text);
	if (k->nhashes * 2 >= k->hash_cap)
	{
		uint64	   *old = k->hashes;
		int			old_cap = k->hash_cap;

		k->hash_cap = Max(64, k->hash_cap * 2);
		k->hashes = MemoryContextAllocZero(inf->cxt, sizeof(uint64) * k->hash_cap);
		for (int i = 0; i < old_cap; i++)
			if (old[i])
			{
				int			j = old[i] % k->hash_cap;

				while (k->hashes[j])
					j = (j + 1) % k->hash_cap;
				k->hashes[j] = old[i];
			}
		if (old)
			pfree(old);
	}
	for (int j = h % k->hash_cap;; j = (j + 1) % k->hash_cap)
	{
		if (k->hashes[j] == h)
		{
			k->maybe_unique = false;	/* (or a hash collision: no suggestion) */
			return;
		}
		if (k->hashes[j] == 0)
		{
			k->hashes[j] = h;
			k->nhashes++;
			return;
		}
	}
}

/* One record's value of key (a member of the record: never absent). */
void
etl_infer_value(EtlInference *inf, const char *key, int len, const JsonbValue *v)
{
	InferKey   *k = find_key(inf, key, len);

	k->records++;
	if (v->type == jbvNull)
	{
		k->nulls++;
		k->maybe_unique = false;	/* a key column is never null */
		return;
	}
	if (v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data))
	{
		k->kinds |= K_ARR;
		k->elem_kinds |= element_kinds(v->val.binary.data);
	}
	else if (v->type == jbvBinary)
		k->kinds |= K_OBJ;
	else
		k->kinds |= scalar_kind(v);
	note_unique(inf, k, v);
}

/* context for the records of a page */
static void
record_error_context(void *arg)
{
	errcontext("sampling record %d", *(int *) arg + 1);
}

/*
 * Every member of a page's records (JSON objects); a record that is no
 * object is an error, as a load would find it.
 */
void
etl_infer_records(EtlInference *inf, JsonbValue *records, int nrec, int32 page_index)
{
	MemoryContext old = MemoryContextSwitchTo(inf->cxt);

	inf->pages++;
	for (int r = 0; r < nrec; r++)
	{
		JsonbValue *rec = &records[r];
		JsonbIterator *it;
		JsonbValue	kv;
		JsonbIteratorToken tok;
		const char *key = NULL;
		int			len = 0;
		ErrorContextCallback errcb;

		if (rec->type != jbvBinary || !JsonContainerIsObject(rec->val.binary.data))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("record %d of page %d is not a JSON object", r + 1, page_index + 1),
					 errhint("Check the job's records_path: it must lead to the records themselves.")));
		errcb.callback = record_error_context;
		errcb.arg = &r;
		errcb.previous = error_context_stack;
		error_context_stack = &errcb;
		it = JsonbIteratorInit(rec->val.binary.data);
		while ((tok = JsonbIteratorNext(&it, &kv, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
			{
				key = kv.val.string.val;
				len = kv.val.string.len;
			}
			else if (tok == WJB_VALUE && key)
				etl_infer_value(inf, key, len, &kv);
		}
		error_context_stack = errcb.previous;
		inf->records++;
	}
	MemoryContextSwitchTo(old);
}

/* ---------- the verdict ---------- */

/* The type of scalar kinds (one or more bits), or NULL when they mix. */
static const char *
scalar_type(int kinds, bool in_array)
{
	if (kinds == K_BOOL)
		return "boolean";
	if (kinds == K_INT)
		return "bigint";
	if ((kinds & ~K_NUMBER) == 0)
		return "numeric";
	if (kinds == K_TSTZ)
		return "timestamptz";
	if (kinds == K_TS)
		return "timestamp";
	if (kinds == K_DATE)
		return "date";
	if (kinds == K_UUID)
		return "uuid";
	if ((kinds & ~K_STRING) == 0)
		return "text";
	/* mixed scalar kinds: text for a value, jsonb for an array's elements */
	return in_array ? NULL : "text";
}

static const char *
key_type(const InferKey *k)
{
	const char *elem;

	if (k->kinds == 0)
		return "text";			/* only nulls: nothing says more */
	if (k->kinds & K_OBJ)
		return "jsonb";
	if (k->kinds & K_ARR)
	{
		if (k->kinds != K_ARR || k->elem_kinds == 0 || (k->elem_kinds & (K_OBJ | K_ARR)))
			return "jsonb";
		elem = scalar_type(k->elem_kinds, true);
		return elem ? psprintf("%s[]", elem) : "jsonb";
	}
	return scalar_type(k->kinds, false);
}

int
etl_infer_nkeys(const EtlInference *inf)
{
	return inf->nkeys;
}

const char *
etl_infer_key(const EtlInference *inf, int i)
{
	return inf->keys[i].key;
}

/* The type for key i: a type name PostgreSQL's parser takes. */
const char *
etl_infer_type(const EtlInference *inf, int i)
{
	return key_type(&inf->keys[i]);
}

/*
 * What the sample says, as JSON: {"pages": n, "records": n, "keys":
 * [{"key", "type", "records", "nulls", "unique"}, ...]}, the keys in the
 * order first seen (within a record, the order jsonb keeps: shorter
 * keys first).  No value appears in it.
 */
char *
etl_infer_report(const EtlInference *inf)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"pages\": " INT64_FORMAT ", \"records\": " INT64_FORMAT ", \"keys\": [",
					 inf->pages, inf->records);
	for (int i = 0; i < inf->nkeys; i++)
	{
		const InferKey *k = &inf->keys[i];

		appendStringInfoString(&buf, i ? ", {\"key\": " : "{\"key\": ");
		escape_json(&buf, k->key);
		appendStringInfo(&buf, ", \"type\": \"%s\", \"records\": " INT64_FORMAT
						 ", \"nulls\": " INT64_FORMAT ", \"unique\": %s}",
						 key_type(k), k->records, k->nulls,
						 k->maybe_unique && inf->track_unique ? "true" : "false");
	}
	appendStringInfoString(&buf, "]}");
	return buf.data;
}
