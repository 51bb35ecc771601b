/*-------------------------------------------------------------------------
 *
 * json_path.c
 *	  Finding values in JSON documents: jsonpaths over response bodies and
 *	  records, and the members of small jsonb objects (options, settings).
 *
 * Most paths jobs use are plain member chains with [*]: '$.value[*]',
 * '$[*]', '$.entry[*].resource', '$."@odata.nextLink"', '$.meta.cursor'.
 * Those are evaluated here directly on the parsed jsonb, in lax-mode
 * semantics, returning values that point into the document: no copy of a
 * page's records is ever made.  Any other path (filters, indexes,
 * strict mode, ...) goes to PostgreSQL's own jsonpath engine.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/jsonpath.h"
#include "utils/memutils.h"

#include "etl_exec.h"

typedef struct PathStep
{
	bool		all_elements;	/* [*] */
	char	   *key;			/* .key, when not all_elements */
	int			keylen;
} PathStep;

struct EtlPath
{
	char	   *text;
	Datum		compiled;		/* PostgreSQL's jsonpath, for the general case */
	int			nsteps;			/* -1: not a simple path */
	PathStep   *steps;
};

/* Parse '$', then any of: .key ."quoted key" [*] -- or give up (false). */
static bool
parse_simple(EtlPath *path, const char *p)
{
	int			cap = 8;

	path->steps = palloc(sizeof(PathStep) * cap);
	path->nsteps = 0;
	while (*p == ' ')
		p++;
	if (strncmp(p, "lax ", 4) == 0)
		p += 4;
	if (*p++ != '$')
		return false;
	while (*p)
	{
		PathStep	step = {0};

		if (strncmp(p, "[*]", 3) == 0)
		{
			step.all_elements = true;
			p += 3;
		}
		else if (p[0] == '.' && p[1] == '"')
		{
			StringInfoData key;

			initStringInfo(&key);
			for (p += 2; *p && *p != '"'; p++)
			{
				if (*p == '\\')
				{
					p++;
					if (*p != '"' && *p != '\\')
						return false;
				}
				appendStringInfoChar(&key, *p);
			}
			if (*p++ != '"')
				return false;
			step.key = key.data;
			step.keylen = key.len;
		}
		else if (p[0] == '.' && (isalpha((unsigned char) p[1]) || p[1] == '_'))
		{
			const char *start = ++p;

			while (isalnum((unsigned char) *p) || *p == '_')
				p++;
			step.key = pnstrdup(start, p - start);
			step.keylen = p - start;
			/* words jsonpath gives a meaning of its own */
			if (strcmp(step.key, "type") == 0 || strcmp(step.key, "size") == 0 ||
				strcmp(step.key, "double") == 0 || strcmp(step.key, "ceiling") == 0 ||
				strcmp(step.key, "floor") == 0 || strcmp(step.key, "abs") == 0 ||
				strcmp(step.key, "datetime") == 0 || strcmp(step.key, "keyvalue") == 0)
				return false;
		}
		else
			return false;
		if (path->nsteps == cap)
		{
			cap *= 2;
			path->steps = repalloc(path->steps, sizeof(PathStep) * cap);
		}
		path->steps[path->nsteps++] = step;
	}
	return true;
}

/*
 * The parameter a column_map value "{param:NAME}" names (NAME), or NULL
 * for a jsonpath.
 */
char *
etl_column_map_parameter(const char *value, int len)
{
	if (len > 8 && strncmp(value, "{param:", 7) == 0 && value[len - 1] == '}')
		return pnstrdup(value + 7, len - 8);
	return NULL;
}

/* Compile a jsonpath (raising PostgreSQL's error for a bad one). */
EtlPath *
etl_path_compile(const char *text)
{
	EtlPath    *path = palloc0(sizeof(EtlPath));

	path->text = pstrdup(text);
	path->compiled = DirectFunctionCall1(jsonpath_in, CStringGetDatum(text));
	if (!parse_simple(path, text))
		path->nsteps = -1;
	return path;
}

const char *
etl_path_text(const EtlPath *path)
{
	return path->text;
}

void
etl_jsonb_as_value(Jsonb *doc, JsonbValue *v)
{
	v->type = jbvBinary;
	v->val.binary.data = &doc->root;
	v->val.binary.len = VARSIZE(doc) - VARHDRSZ;
}

typedef struct ValueList
{
	JsonbValue *items;
	int			n;
	int			cap;
} ValueList;

static void
push_value(ValueList *list, const JsonbValue *v)
{
	if (list->n == list->cap)
	{
		list->cap = list->cap ? list->cap * 2 : 64;
		list->items = list->items ? repalloc(list->items, sizeof(JsonbValue) * list->cap)
			: palloc(sizeof(JsonbValue) * list->cap);
	}
	list->items[list->n++] = *v;
}

/* a raw scalar document stands for its scalar */
static JsonbValue
unwrap_scalar(const JsonbValue *v)
{
	JsonbValue	result = *v;

	if (v->type == jbvBinary && JsonContainerIsScalar(v->val.binary.data))
		result = *getIthJsonbValueFromContainer(v->val.binary.data, 0);
	return result;
}

static void
push_elements(ValueList *out, JsonbContainer *array)
{
	JsonbIterator *it = JsonbIteratorInit(array);
	JsonbValue	elem;
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
		if (tok == WJB_ELEM)
			push_value(out, &elem);
}

static void
push_member(ValueList *out, const JsonbValue *v, const PathStep *step)
{
	JsonbValue	found;

	if (v->type != jbvBinary)
		return;
	if (JsonContainerIsObject(v->val.binary.data))
	{
		if (getKeyJsonValueFromContainer(v->val.binary.data, step->key, step->keylen, &found))
			push_value(out, &found);
	}
	else if (JsonContainerIsArray(v->val.binary.data))
	{
		/* lax mode: a member accessor on an array applies to its elements */
		ValueList	elems = {0};

		push_elements(&elems, v->val.binary.data);
		for (int i = 0; i < elems.n; i++)
			if (elems.items[i].type == jbvBinary && JsonContainerIsObject(elems.items[i].val.binary.data) &&
				getKeyJsonValueFromContainer(elems.items[i].val.binary.data, step->key, step->keylen, &found))
				push_value(out, &found);
	}
}

/*
 * Every value the path finds in doc (a jbvBinary value), into *items (in
 * the current memory context); returns how many.  Values found by the
 * simple evaluator point into doc.
 */
int
etl_path_query(const EtlPath *path, const JsonbValue *doc, JsonbValue **items)
{
	ValueList	cur = {0};

	if (path->nsteps < 0)
	{
		Jsonb	   *jb = JsonbValueToJsonb((JsonbValue *) doc);
		Jsonb	   *all = DatumGetJsonbP(DirectFunctionCall4(jsonb_path_query_array,
															 JsonbPGetDatum(jb), path->compiled,
															 DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")),
															 BoolGetDatum(true)));

		push_elements(&cur, &all->root);
		*items = cur.items;
		return cur.n;
	}

	{
		JsonbValue	root = unwrap_scalar(doc);

		push_value(&cur, &root);
	}
	for (int s = 0; s < path->nsteps; s++)
	{
		const PathStep *step = &path->steps[s];
		ValueList	next = {0};

		for (int i = 0; i < cur.n; i++)
		{
			JsonbValue *v = &cur.items[i];

			if (step->all_elements)
			{
				if (v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data))
					push_elements(&next, v->val.binary.data);
				else
					push_value(&next, v);	/* lax mode: a non-array is its own [*] */
			}
			else
				push_member(&next, v, step);
		}
		if (cur.items)
			pfree(cur.items);
		cur = next;
	}
	*items = cur.items;
	return cur.n;
}

/* The first value the path finds, or NULL. */
JsonbValue *
etl_path_first(const EtlPath *path, const JsonbValue *doc)
{
	JsonbValue *items;

	if (etl_path_query(path, doc, &items) == 0)
		return NULL;
	return &items[0];
}

/* "a, b, c": the top-level keys of a document, for error messages */
char *
etl_jsonb_top_keys(Jsonb *doc)
{
	StringInfoData buf;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			n = 0;

	if (!JB_ROOT_IS_OBJECT(doc))
		return pstrdup(JB_ROOT_IS_SCALAR(doc) ? "(the body is a scalar, not an object)"
					   : "(the body is an array, not an object)");
	initStringInfo(&buf);
	it = JsonbIteratorInit(&doc->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok != WJB_KEY)
			continue;
		if (n++ > 0)
			appendStringInfoString(&buf, ", ");
		if (n > 20)
		{
			appendStringInfoString(&buf, "...");
			break;
		}
		appendBinaryStringInfo(&buf, v.val.string.val, v.val.string.len);
	}
	return n ? buf.data : pstrdup("(no keys)");
}

/* The text of a scalar (strings unquoted), or NULL for null and containers. */
char *
etl_jsonb_value_text(const JsonbValue *v)
{
	if (v == NULL || v->type == jbvNull)
		return NULL;
	if (v->type == jbvString)
		return pnstrdup(v->val.string.val, v->val.string.len);
	if (v->type == jbvNumeric)
		return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	if (v->type == jbvBool)
		return pstrdup(v->val.boolean ? "true" : "false");
	return NULL;
}

static void
keys_of(const EtlPath *path, int from, int to, EtlKeyPath *out)
{
	out->n = to - from;
	out->keys = palloc(sizeof(char *) * Max(out->n, 1));
	out->lens = palloc(sizeof(int) * Max(out->n, 1));
	for (int i = from; i < to; i++)
	{
		out->keys[i - from] = path->steps[i].key;
		out->lens[i - from] = path->steps[i].keylen;
	}
}

/*
 * For a path of member steps with at most one [*]: the member steps before
 * and after it.  False for any other path.
 */
bool
etl_path_split(const EtlPath *path, EtlKeyPath *before, bool *star, EtlKeyPath *after)
{
	int			star_at = -1;

	if (path->nsteps < 0)
		return false;
	for (int i = 0; i < path->nsteps; i++)
		if (path->steps[i].all_elements)
		{
			if (star_at >= 0)
				return false;
			star_at = i;
		}
	*star = star_at >= 0;
	keys_of(path, 0, star_at >= 0 ? star_at : path->nsteps, before);
	if (star_at >= 0)
		keys_of(path, star_at + 1, path->nsteps, after);
	else
		after->n = 0;
	return true;
}

/* A jsonb document from its text, in cxt. */
Jsonb *
etl_jsonb_from_cstring(MemoryContext cxt, const char *s)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	Jsonb	   *jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(s)));

	MemoryContextSwitchTo(old);
	return jb;
}

/* The number at key of an object, as an int; dflt when there is none. */
int
etl_jsonb_int(Jsonb *jb, const char *key, int dflt)
{
	JsonbValue *v = getKeyJsonValueFromContainer(&jb->root, key, strlen(key), NULL);

	if (v == NULL || v->type != jbvNumeric)
		return dflt;
	return DatumGetInt32(DirectFunctionCall1(numeric_int4, NumericGetDatum(v->val.numeric)));
}

/* The string at key of an object; NULL when there is none. */
char *
etl_jsonb_str(Jsonb *jb, const char *key)
{
	JsonbValue *v = getKeyJsonValueFromContainer(&jb->root, key, strlen(key), NULL);

	if (v == NULL || v->type != jbvString)
		return NULL;
	return pnstrdup(v->val.string.val, v->val.string.len);
}
