/*-------------------------------------------------------------------------
 *
 * fuzz_spec.c
 *	  A page reader's spec (EtlScanSpec) from a fuzz input's option line,
 *	  for the harnesses that read pages: fuzz_page_scan, fuzz_page_records.
 *
 * The options, space-separated:
 *
 *	  fmt=json|ndjson|csv	the page's format (json)
 *	  records=a.b*c			records_path $.a.b[*].c ('*' is the [*]; value*)
 *	  total=a.b next=a.b	total_path, next_path (member steps)
 *	  cols=id,name,meta:jsonb,tags:array,-
 *							the target's columns (':jsonb' a jsonb column,
 *							':array' an array column, '-' a column no key
 *							names, as a parameter's)
 *	  map=Id,a.b,-,$		column_map: a member path per column ('-'
 *							unmapped, '$' the whole record)
 *	  new=id,name,x			on_new_keys: the table's column names
 *	  csv=,"" null=NULL		csv_options: delimiter, quote, escape; null
 *
 * Each path also comes as jsonpath text ($."a"."b"[*]."c"), for the jsonb
 * path the reader is compared with.  Options are taken only as the loader
 * and dw_etl_jobs' trigger would let them be (records_path with one [*],
 * csv_options one ASCII byte each, ...), so that what a harness finds is
 * something a job can meet.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"

#include "fuzz_spec.h"

/* "a.b.c" as member steps ("$" or "": none), and as jsonpath steps */
static void
key_path(const char *text, EtlKeyPath *path, StringInfo jsonpath)
{
	char	   *copy = pstrdup(text);
	char	   *save = NULL;

	path->n = 0;
	path->keys = palloc(sizeof(char *) * (strlen(text) + 1));
	path->lens = palloc(sizeof(int) * (strlen(text) + 1));
	if (strcmp(text, "$") == 0)
		return;
	for (char *k = strtok_r(copy, ".", &save); k; k = strtok_r(NULL, ".", &save))
	{
		path->keys[path->n] = k;
		path->lens[path->n++] = strlen(k);
		appendStringInfoString(jsonpath, ".\"");
		for (const char *c = k; *c; c++)
		{
			if (*c == '"' || *c == '\\')
				appendStringInfoChar(jsonpath, '\\');
			appendStringInfoChar(jsonpath, *c);
		}
		appendStringInfoChar(jsonpath, '"');
	}
}

static char *
path_text(const char *text, EtlKeyPath *path)
{
	StringInfoData jp;

	initStringInfo(&jp);
	appendStringInfoChar(&jp, '$');
	key_path(text, path, &jp);
	return jp.data;
}

/* a comma-separated list, empty items kept */
static int
split_list(const char *text, char **items, int max)
{
	char	   *copy = pstrdup(text);
	int			n = 0;
	char	   *p = copy;

	while (n < max)
	{
		char	   *comma = strchr(p, ',');

		items[n++] = p;
		if (comma == NULL)
			break;
		*comma = '\0';
		p = comma + 1;
	}
	return n;
}

void
fuzz_page_spec(const char *opts, FuzzPageSpec *ps)
{
	EtlScanSpec *spec = &ps->spec;
	char	   *opt;
	StringInfoData records;

	memset(ps, 0, sizeof(*ps));
	ps->csv = (EtlCsvOptions) {',', '"', '"', "", 0};

	opt = fuzz_option(opts, "fmt");
	spec->format = opt == NULL ? ETL_FORMAT_JSON :
		strcmp(opt, "ndjson") == 0 ? ETL_FORMAT_NDJSON :
		strcmp(opt, "csv") == 0 ? ETL_FORMAT_CSV : ETL_FORMAT_JSON;

	/* records_path has exactly one [*] (or the loader does not use the reader) */
	opt = fuzz_option(opts, "records");
	if (opt == NULL || strchr(opt, '*') == NULL)
		opt = pstrdup("value*");
	*strchr(opt, '*') = '\0';
	initStringInfo(&records);
	appendStringInfoChar(&records, '$');
	key_path(opt, &spec->records_before, &records);
	appendStringInfoString(&records, "[*]");
	key_path(opt + strlen(opt) + 1, &spec->records_after, &records);
	ps->records_path = records.data;

	spec->total.n = spec->next.n = -1;
	if ((opt = fuzz_option(opts, "total")) != NULL)
		ps->total_path = path_text(opt, &spec->total);
	if ((opt = fuzz_option(opts, "next")) != NULL)
		ps->next_path = path_text(opt, &spec->next);

	opt = fuzz_option(opts, "cols");
	spec->ncols = split_list(opt ? opt : "id,name", ps->names, FUZZ_MAX_COLS);
	for (int c = 0; c < spec->ncols; c++)
	{
		char	   *colon = strchr(ps->names[c], ':');

		if (colon)
		{
			*colon = '\0';
			ps->is_json[c] = strcmp(colon + 1, "jsonb") == 0;
			ps->is_array[c] = strcmp(colon + 1, "array") == 0;
		}
		if (strcmp(ps->names[c], "-") == 0)
			ps->names[c] = NULL;
	}
	spec->column_is_json = ps->is_json;
	spec->column_is_array = ps->is_array;
	spec->keys = etl_key_resolver_create(spec->ncols, ps->names);

	if ((opt = fuzz_option(opts, "map")) != NULL)
	{
		char	   *paths[FUZZ_MAX_COLS];
		int			n = split_list(opt, paths, FUZZ_MAX_COLS);

		spec->use_map = true;
		for (int c = 0; c < spec->ncols; c++)
		{
			if (c >= n || strcmp(paths[c], "-") == 0)
				ps->map[c].n = -1;
			else
				(void) path_text(paths[c], &ps->map[c]);
		}
		spec->map = ps->map;
	}
	if ((opt = fuzz_option(opts, "new")) != NULL)
	{
		char	   *table[FUZZ_MAX_COLS];
		int			n = split_list(opt, table, FUZZ_MAX_COLS);

		spec->table_keys = etl_key_resolver_create(n, table);
	}

	/* csv_options as dw_etl_jobs' trigger lets them be */
	if ((opt = fuzz_option(opts, "csv")) != NULL && strlen(opt) == 3 &&
		opt[0] != opt[1] && strpbrk(opt, "\r\n") == NULL &&
		(opt[0] & 0x80) == 0 && (opt[1] & 0x80) == 0 && (opt[2] & 0x80) == 0)
	{
		ps->csv.delimiter = opt[0];
		ps->csv.quote = opt[1];
		ps->csv.escape = opt[2];
	}
	if ((opt = fuzz_option(opts, "null")) != NULL &&
		strchr(opt, ps->csv.delimiter) == NULL && strchr(opt, ps->csv.quote) == NULL)
	{
		ps->csv.null = opt;
		ps->csv.null_len = strlen(opt);
	}
	spec->csv = &ps->csv;
}

void
fuzz_page_spec_free(FuzzPageSpec *ps)
{
	etl_key_resolver_free(ps->spec.keys);
	etl_key_resolver_free(ps->spec.table_keys);
}
