/*-------------------------------------------------------------------------
 *
 * job.c
 *	  The job a run runs: its row of dw_etl_jobs read into an EtlJob, its
 *	  paging options and paths checked, and its first URL (and a POST's
 *	  body) rendered with the run's parameters ({secret:NAME} left for each
 *	  request to fill in).
 *
 * The row is read as the extension's owner, in the worker's current
 * transaction; the job's paths are compiled here, so a bad one fails the
 * run before its first request.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "etl_exec.h"

/*
 * The text of a parameter for a URL placeholder; an error when it has no
 * value.
 */
static char *
placeholder_value(Jsonb *parameters, const char *name)
{
	JsonbValue *v = getKeyJsonValueFromContainer(&parameters->root, name,
												 strlen(name), NULL);

	if (v == NULL || v->type == jbvNull)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("URL placeholder {%s} has no value", name),
				 errhint("Pass it with parameters := '{\"%s\": ...}', or set it in the job's parameters.",
						 name)));
	if (v->type == jbvString)
		return pnstrdup(v->val.string.val, v->val.string.len);
	if (v->type == jbvNumeric)
		return DatumGetCString(DirectFunctionCall1(numeric_out,
												   NumericGetDatum(v->val.numeric)));
	if (v->type == jbvBool)
		return v->val.boolean ? "true" : "false";
	return JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
}

/*
 * Fill the {name} placeholders of a URL from the run's parameters, each
 * value URL-encoded.  A placeholder without a value is an error, and so is
 * "." or ".." in the path (URL-encoding leaves dots as they are).
 * {secret:NAME} stays as it is, in the query string only: each request
 * fills it in as it goes out (secrets.c), so the secret is in no URL the
 * run keeps.
 */
static char *
render_url(const EtlJob *job, const char *template, Jsonb *parameters)
{
	StringInfoData buf;
	const char *p = template;

	initStringInfo(&buf);
	while (*p)
	{
		const char *close;
		char	   *name;
		char	   *text;

		if (*p != '{' || (close = strchr(p + 1, '}')) == NULL)
		{
			appendStringInfoChar(&buf, *p++);
			continue;
		}
		name = pnstrdup(p + 1, close - p - 1);
		if (strncmp(name, "secret:", 7) == 0)
		{
			if (strchr(buf.data, '?') == NULL || strchr(buf.data, '#') != NULL)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("{%s} in the URL of job %d must be in the query string", name, job->job_id),
						 errhint("Put it in a query parameter, e.g. https://api.example.com/items?api_key={%s}.", name)));
			appendBinaryStringInfo(&buf, p, close - p + 1);
			p = close + 1;
			continue;
		}
		text = placeholder_value(parameters, name);
		/*
		 * a "." or ".." segment, even one a server decodes (..%2F), would
		 * move the request up the path
		 */
		if (etl_url_holds_dot_segment(text) && strpbrk(buf.data, "?#") == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("URL placeholder {%s} must not be \"%s\" in the URL's path: it holds a dot segment", name, text),
					 errdetail("A dot segment would send the request, with the job's secrets, to another path."),
					 errhint("Pass the value the API expects for {%s}.", name)));
		appendStringInfoString(&buf, etl_url_encode(text));
		p = close + 1;
	}
	return buf.data;
}

/* a job's pagination column, as a style */
static EtlPaginationStyle
pagination_style(const char *name)
{
	if (strcmp(name, "none") == 0)
		return ETL_PAGINATION_NONE;
	if (strcmp(name, "offset") == 0)
		return ETL_PAGINATION_OFFSET;
	if (strcmp(name, "page") == 0)
		return ETL_PAGINATION_PAGE;
	if (strcmp(name, "next_link") == 0)
		return ETL_PAGINATION_NEXT_LINK;
	if (strcmp(name, "link_header") == 0)
		return ETL_PAGINATION_LINK_HEADER;
	if (strcmp(name, "cursor") == 0)
		return ETL_PAGINATION_CURSOR;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown pagination style \"%s\"", name)));
	return ETL_PAGINATION_NONE;	/* keep compiler quiet */
}

static char *
opt_str(Jsonb *opts, const char *key, const char *dflt)
{
	char	   *v = etl_jsonb_str(opts, key);

	return v ? v : (dflt ? pstrdup(dflt) : NULL);
}

/* The job's pagination_options, each defaulted as the table documents. */
static void
read_paging_options(EtlJob *job, Jsonb *opts)
{
	JsonbValue *sv;

	job->skip_param = opt_str(opts, "skip_param", "$skip");
	job->limit_param = opt_str(opts, "limit_param", "$top");
	job->page_param = opt_str(opts, "page_param", "page");
	job->first_page = etl_jsonb_int(opts, "first_page", 1);
	job->next_path = opt_str(opts, "next_path",
							 job->pagination == ETL_PAGINATION_NEXT_LINK ? "$.\"@odata.nextLink\"" : NULL);
	job->cursor_param = opt_str(opts, "cursor_param", "cursor");
	job->total_path = opt_str(opts, "total_path", NULL);
	sv = getKeyJsonValueFromContainer(&opts->root, "stop_on_short_page",
									  strlen("stop_on_short_page"), NULL);
	job->stop_on_short_page = sv && sv->type == jbvBool && sv->val.boolean;
	/* requests beyond GET (0.4.0) */
	job->next_header = opt_str(opts, "next_header", NULL);
	job->has_more_path = opt_str(opts, "has_more_path", NULL);
	job->cursor_in_body = strncmp(job->cursor_param, "body:", 5) == 0;
}

/* ---------- requests beyond GET (0.4.0): a POST's body, response rules ---------- */

/* The length of the {name} placeholder at p (a parameter's name), or 0. */
static int
body_placeholder_at(const char *p, const char *end)
{
	const char *q = p + 1;

	if (*p != '{' || q >= end || !(isalpha((unsigned char) *q) || *q == '_'))
		return 0;
	while (q < end && (isalnum((unsigned char) *q) || (*q && strchr("_:.-", *q))))
		q++;
	return q < end && *q == '}' ? q + 1 - p : 0;
}

/* The parameter a body placeholder names: an error when it has none. */
static JsonbValue *
body_parameter(Jsonb *parameters, const char *name)
{
	JsonbValue *v = getKeyJsonValueFromContainer(&parameters->root, name, strlen(name), NULL);

	if (v == NULL || v->type == jbvNull)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("body placeholder {%s} has no value", name),
				 errhint("Pass it with parameters := '{\"%s\": ...}', or set it in the job's parameters; "
						 "braces around a word that is no parameter need a space inside: { %s }.",
						 name, name)));
	return v;
}

/*
 * A string of the body template, rendered: "{name}" alone is the
 * parameter's value with its JSON type; placeholders in a longer string
 * are replaced by their values' text.
 */
static JsonbValue
render_body_string(const JsonbValue *v, Jsonb *parameters)
{
	const char *p = v->val.string.val;
	const char *end = p + v->val.string.len;
	int			n = body_placeholder_at(p, end);
	StringInfoData buf;
	JsonbValue	out;

	if (n > 0 && n == v->val.string.len)
		return *body_parameter(parameters, pnstrdup(p + 1, n - 2));
	initStringInfo(&buf);
	while (p < end)
	{
		char	   *name;

		if ((n = body_placeholder_at(p, end)) == 0)
		{
			appendStringInfoChar(&buf, *p++);
			continue;
		}
		name = pnstrdup(p + 1, n - 2);
		(void) body_parameter(parameters, name);
		appendStringInfoString(&buf, placeholder_value(parameters, name));
		p += n;
	}
	out.type = jbvString;
	out.val.string.val = buf.data;
	out.val.string.len = buf.len;
	return out;
}

/* The job's body template with the run's parameters filled in. */
static Jsonb *
render_body(Jsonb *template, Jsonb *parameters)
{
	JsonbIterator *it = JsonbIteratorInit(&template->root);
	JsonbParseState *state = NULL;
	JsonbValue	v;
	JsonbValue *res = NULL;
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if ((tok == WJB_VALUE || tok == WJB_ELEM) && v.type == jbvString)
			v = render_body_string(&v, parameters);
		res = pushJsonbValue(&state, tok, tok < WJB_BEGIN_ARRAY ? &v : NULL);
	}
	return JsonbValueToJsonb(res);
}

/* A rule's status: 404, [500, 599] or "4xx" (checked when the job was written). */
static void
read_rule_status(JsonbValue *v, EtlResponseRule *rule)
{
	if (v == NULL)
		return;					/* any status */
	if (v->type == jbvNumeric)
		rule->status_lo = rule->status_hi =
			DatumGetInt32(DirectFunctionCall1(numeric_int4, NumericGetDatum(v->val.numeric)));
	else if (v->type == jbvString && v->val.string.len == 3 &&
			 v->val.string.val[0] >= '1' && v->val.string.val[0] <= '5')
	{
		rule->status_lo = (v->val.string.val[0] - '0') * 100;
		rule->status_hi = rule->status_lo + 99;
	}
	else if (v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data) &&
			 JsonContainerSize(v->val.binary.data) == 2)
	{
		JsonbValue *lo = getIthJsonbValueFromContainer(v->val.binary.data, 0);
		JsonbValue *hi = getIthJsonbValueFromContainer(v->val.binary.data, 1);

		if (lo->type != jbvNumeric || hi->type != jbvNumeric)
			elog(ERROR, "etl_exec: bad status in response_rules");
		rule->status_lo = DatumGetInt32(DirectFunctionCall1(numeric_int4, NumericGetDatum(lo->val.numeric)));
		rule->status_hi = DatumGetInt32(DirectFunctionCall1(numeric_int4, NumericGetDatum(hi->val.numeric)));
	}
	else
		elog(ERROR, "etl_exec: bad status in response_rules");
}

/* The job's response_rules, in order (checked when the job was written). */
static void
read_response_rules(EtlJob *job, Jsonb *rules)
{
	int			n = JsonContainerSize(&rules->root);
	EtlResponseRule *out = palloc0(sizeof(EtlResponseRule) * Max(n, 1));

	if (!JsonContainerIsArray(&rules->root))
		elog(ERROR, "etl_exec: response_rules of job %d is not an array", job->job_id);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *r = getIthJsonbValueFromContainer(&rules->root, i);
		Jsonb	   *obj;
		char	   *action;

		if (r->type != jbvBinary || !JsonContainerIsObject(r->val.binary.data))
			elog(ERROR, "etl_exec: response rule %d of job %d is not an object", i + 1, job->job_id);
		obj = JsonbValueToJsonb(r);
		read_rule_status(getKeyJsonValueFromContainer(&obj->root, "status", 6, NULL), &out[i]);
		out[i].body_contains = etl_jsonb_str(obj, "body_contains");
		action = etl_jsonb_str(obj, "action");
		if (action && strcmp(action, "ignore") == 0)
			out[i].action = ETL_RULE_IGNORE;
		else if (action && strcmp(action, "retry") == 0)
			out[i].action = ETL_RULE_RETRY;
		else if (action && strcmp(action, "fail") == 0)
			out[i].action = ETL_RULE_FAIL;
		else
			elog(ERROR, "etl_exec: response rule %d of job %d has no known action", i + 1, job->job_id);
	}
	job->http.rules = out;
	job->http.nrules = n;
}

/*
 * The job's method, body (as text), content type and response rules (as
 * text), as its requests need them.
 */
static void
read_request_shape(EtlJob *job, Jsonb *parameters, const char *method,
				   const char *body, const char *content_type, const char *rules)
{
	MemoryContext cxt = CurrentMemoryContext;

	job->http.post = method && strcmp(method, "POST") == 0;
	job->http.content_type = content_type;
	if (body && job->http.post)
	{
		job->body_template = etl_jsonb_from_cstring(cxt, body);
		/* (no parameters: a run with no partitions to page asks nothing) */
		if (parameters)
			job->body = render_body(job->body_template, parameters);
	}
	if (rules)
		read_response_rules(job, etl_jsonb_from_cstring(cxt, rules));
}

/* a job's format column */
static EtlFormat
response_format(const char *name)
{
	if (strcmp(name, "json") == 0)
		return ETL_FORMAT_JSON;
	if (strcmp(name, "ndjson") == 0)
		return ETL_FORMAT_NDJSON;
	if (strcmp(name, "csv") == 0)
		return ETL_FORMAT_CSV;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown format \"%s\"", name)));
	return ETL_FORMAT_JSON;		/* keep compiler quiet */
}

/* one character of csv_options (checked when the job was written) */
static char
csv_char(Jsonb *opts, const char *key, char dflt)
{
	char	   *v = opts ? etl_jsonb_str(opts, key) : NULL;

	return v && strlen(v) == 1 ? v[0] : dflt;
}

/* The job's csv_options, each defaulted as COPY's CSV options are. */
static void
read_csv_options(EtlCsvOptions *csv, Jsonb *opts)
{
	char	   *null = opts ? etl_jsonb_str(opts, "null") : NULL;

	csv->delimiter = csv_char(opts, "delimiter", ',');
	csv->quote = csv_char(opts, "quote", '"');
	csv->escape = csv_char(opts, "escape", csv->quote);
	csv->null = null ? null : pstrdup("");
	csv->null_len = strlen(csv->null);
}

/* key_columns (as a JSON array's text) as a list of names, in cxt */
static List *
key_column_list(MemoryContext cxt, const char *json)
{
	Jsonb	   *keys = etl_jsonb_from_cstring(cxt, json);
	JsonbIterator *it = JsonbIteratorInit(&keys->root);
	JsonbValue	jv;
	JsonbIteratorToken tok;
	List	   *result = NIL;
	MemoryContext old = MemoryContextSwitchTo(cxt); /* not SPI's */

	while ((tok = JsonbIteratorNext(&it, &jv, true)) != WJB_DONE)
		if (tok == WJB_ELEM && jv.type == jbvString)
			result = lappend(result, pnstrdup(jv.val.string.val, jv.val.string.len));
	MemoryContextSwitchTo(old);
	return result;
}

/*
 * What the job does with records that do not fit its table (0.5.0): keys
 * no column takes (on_new_keys) and records a column's type input or a
 * constraint refuses (on_bad_record, max_rejected).
 */
static void
read_record_policies(EtlJob *job, const char *new_keys, const char *bad_record,
					 const char *max_rejected)
{
	if (strcmp(new_keys, "add_columns") == 0)
		job->on_new_keys = ETL_NEW_KEYS_ADD_COLUMNS;
	else if (strcmp(new_keys, "fail") == 0)
		job->on_new_keys = ETL_NEW_KEYS_FAIL;
	else
		job->on_new_keys = ETL_NEW_KEYS_IGNORE;
	job->reject_bad_records = strcmp(bad_record, "reject") == 0;
	job->max_rejected = pg_strtoint32(max_rejected);
}

/*
 * Read the job definition the worker runs (current memory context), with
 * its first URL rendered from the run's parameters (which already include
 * the job's defaults).
 */
void
etl_read_job(int32 job_id, Jsonb *parameters, EtlJob *job)
{
	MemoryContext cxt = CurrentMemoryContext;
	const char *args[1];
	char	   *sql;
	char	   *v;
	Jsonb	   *opts;
	char	   *method;
	char	   *body;
	char	   *content_type;
	char	   *rules;

	memset(job, 0, sizeof(*job));
	SPI_connect();
	args[0] = psprintf("%d", job_id);
	sql = psprintf("SELECT name, url, pagination, page_size, pagination_options, records_path, "
				   "  headers, target_table, column_map, load_mode, array_to_json(key_columns), "
				   "  coalesce(checkpoint_interval_seconds, -1), coalesce(max_retries, -1), "
				   "  coalesce(request_timeout_ms, -1), coalesce(concurrency, -1), format, csv_options, "
				   "  method, body, content_type, response_rules, "
				   "  on_new_keys, on_bad_record, coalesce(max_rejected, -1) "
				   "FROM %s WHERE job_id = $1::int", etl_qualified("dw_etl_jobs"));
	if (etl_spi_run(sql, 1, args, SPI_OK_SELECT) == 0)
		elog(ERROR, "etl_exec job %d does not exist", job_id);

	job->job_id = job_id;
	job->name = etl_spi_value(cxt, 1);
	job->url = etl_spi_value(cxt, 2);
	job->pagination = pagination_style(etl_spi_value(cxt, 3));
	job->page_size = pg_strtoint32(etl_spi_value(cxt, 4));
	opts = etl_jsonb_from_cstring(cxt, etl_spi_value(cxt, 5));
	job->records_path = etl_spi_value(cxt, 6);
	job->headers = etl_jsonb_from_cstring(cxt, etl_spi_value(cxt, 7));
	job->target_table = etl_spi_value(cxt, 8);
	if ((v = etl_spi_value(cxt, 9)) != NULL)
		job->column_map = etl_jsonb_from_cstring(cxt, v);
	job->load_mode = etl_spi_value(cxt, 10);
	if ((v = etl_spi_value(cxt, 11)) != NULL)
		job->key_columns = key_column_list(cxt, v);
	job->checkpoint_interval_seconds = pg_strtoint32(etl_spi_value(cxt, 12));
	job->max_retries = pg_strtoint32(etl_spi_value(cxt, 13));
	job->request_timeout_ms = pg_strtoint32(etl_spi_value(cxt, 14));
	job->concurrency = pg_strtoint32(etl_spi_value(cxt, 15));
	job->format = response_format(etl_spi_value(cxt, 16));
	v = etl_spi_value(cxt, 17);
	method = etl_spi_value(cxt, 18);
	body = etl_spi_value(cxt, 19);
	content_type = etl_spi_value(cxt, 20);
	rules = etl_spi_value(cxt, 21);
	read_record_policies(job, etl_spi_value(cxt, 22), etl_spi_value(cxt, 23),
						 etl_spi_value(cxt, 24));
	SPI_finish();

	read_csv_options(&job->csv, v ? etl_jsonb_from_cstring(cxt, v) : NULL);
	read_request_shape(job, parameters, method, body, content_type, rules);

	read_paging_options(job, opts);
	job->records = etl_path_compile(job->records_path);
	job->next = job->next_path ? etl_path_compile(job->next_path) : NULL;
	job->total = job->total_path ? etl_path_compile(job->total_path) : NULL;
	job->has_more = job->has_more_path ? etl_path_compile(job->has_more_path) : NULL;
	job->http.capture_header = job->next_header;

	job->url_template = job->url;
	/* (no parameters: a run with no partitions to page asks nothing) */
	if (parameters)
		job->url = render_url(job, job->url, parameters);
}

/* The parameters of a partition: the run's, with the partition's over them. */
Jsonb *
etl_partition_parameters(Jsonb *run_parameters, Jsonb *partition_parameters)
{
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
											  JsonbPGetDatum(run_parameters),
											  JsonbPGetDatum(partition_parameters)));
}

/*
 * The job as it asks for one partition of the run: a copy whose URL (and
 * POST body) are its templates filled from the run's parameters with the
 * partition's over them (in the current memory context).
 */
void
etl_job_for_partition(const EtlJob *job, Jsonb *run_parameters, Jsonb *partition_parameters,
					  EtlJob *out)
{
	*out = *job;
	etl_job_use_partition(out, etl_partition_parameters(run_parameters, partition_parameters));
}

/*
 * The job asks for a partition's pages from now on: its URL (and POST
 * body) filled from the partition's parameters (etl_partition_parameters).
 */
void
etl_job_use_partition(EtlJob *job, Jsonb *parameters)
{
	job->url = render_url(job, job->url_template, parameters);
	if (job->body_template)
		job->body = render_body(job->body_template, parameters);
}
