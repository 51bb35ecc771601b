/*-------------------------------------------------------------------------
 *
 * pagination.c
 *	  The pagination styles: which URL the next request asks for, given the
 *	  checkpoint, and what a response says about the pages after it.
 *
 * Styles: none (one request), offset ($skip/$top or any names), page
 * (page number), next_link (a link in the body, found with a jsonpath),
 * link_header (RFC 8288 Link: <...>; rel="next"), cursor (a token in the
 * body sent back as a query parameter).  Offset and page styles stop on an
 * empty page or when the reported total is reached (a short page only
 * with stop_on_short_page); link and cursor styles stop when no next link
 * or cursor is left, or on an empty page.  A next link or cursor that
 * repeats is an error, never an endless loop.  A next link that echoes a
 * query-string secret keeps {secret:NAME} in its place (redact.c).
 *
 * A POST's paging values may go in its body instead of the query string:
 * a skip_param, limit_param, page_param or cursor_param "body:a.b" sets
 * member b of member a of the body (objects made as needed).  A cursor
 * that goes in the body keeps its JSON type (search_after's array, say):
 * the checkpoint holds its JSON text.  The next link or cursor may come
 * from a response header (next_header) instead of the body, and a flag in
 * the body (has_more_path) may say whether there are pages after this one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/jsonpath.h"
#include "utils/memutils.h"

#include "etl_exec.h"

/* A paging value that goes in the body ("body:path") rather than the URL. */
static bool
in_body(const char *param)
{
	return strncmp(param, "body:", 5) == 0;
}

static void
append_query_param(StringInfo url, const char *name, const char *value)
{
	if (in_body(name))
		return;					/* etl_pagination_request_body's */
	appendStringInfoChar(url, strchr(url->data, '?') ? '&' : '?');
	appendStringInfo(url, "%s=%s", etl_url_encode(name), etl_url_encode(value));
}

/* The URL of the request that continues from *cp. */
char *
etl_pagination_request_url(const EtlJob *job, const EtlCheckpoint *cp)
{
	StringInfoData url;

	initStringInfo(&url);
	switch (job->pagination)
	{
		case ETL_PAGINATION_NONE:
			return pstrdup(job->url);
		case ETL_PAGINATION_OFFSET:
			appendStringInfoString(&url, job->url);
			append_query_param(&url, job->skip_param, psprintf(INT64_FORMAT, cp->skip));
			append_query_param(&url, job->limit_param, psprintf("%d", job->page_size));
			return url.data;
		case ETL_PAGINATION_PAGE:
			appendStringInfoString(&url, job->url);
			append_query_param(&url, job->page_param,
							   psprintf(INT64_FORMAT, job->first_page + cp->page_index));
			append_query_param(&url, job->limit_param, psprintf("%d", job->page_size));
			return url.data;
		case ETL_PAGINATION_NEXT_LINK:
		case ETL_PAGINATION_LINK_HEADER:
			if (cp->next_url)
				return pstrdup(cp->next_url);
			return pstrdup(job->url);
		case ETL_PAGINATION_CURSOR:
			appendStringInfoString(&url, job->url);
			if (cp->cursor)
				append_query_param(&url, job->cursor_param, cp->cursor);
			return url.data;
	}
	return NULL;				/* keep compiler quiet */
}

/* A text[] of the members of a dotted path, the first n of them. */
static Datum
path_array(char **keys, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		elems[i] = CStringGetTextDatum(keys[i]);
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * Set the member at a dotted path of the body (after "body:") to value,
 * making the objects on the way; a value on the way that is no object is
 * an error.
 */
static Jsonb *
body_set(Jsonb *body, const char *param, Jsonb *value)
{
	char	   *path = pstrdup(param + 5);
	char	   *keys[64];
	int			n = 0;
	char	   *save = NULL;
	JsonbContainer *at = &body->root;

	for (char *k = strtok_r(path, ".", &save); k && n < (int) lengthof(keys); k = strtok_r(NULL, ".", &save))
		keys[n++] = k;
	for (int i = 0; i < n - 1; i++)
	{
		JsonbValue *v = at ? getKeyJsonValueFromContainer(at, keys[i], strlen(keys[i]), NULL) : NULL;

		if (v && !(v->type == jbvBinary && JsonContainerIsObject(v->val.binary.data)))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("paging option \"%s\" goes through member \"%s\" of the body, which is not an object",
							param, keys[i]),
					 errhint("Name a path of objects in the job's body, or make \"%s\" an object there.",
							 keys[i])));
		if (v == NULL)
		{
			body = DatumGetJsonbP(DirectFunctionCall4(jsonb_set, JsonbPGetDatum(body),
													  path_array(keys, i + 1),
													  DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")),
													  BoolGetDatum(true)));
			at = NULL;			/* made empty: nothing below it */
		}
		else
			at = v->val.binary.data;
	}
	return DatumGetJsonbP(DirectFunctionCall4(jsonb_set, JsonbPGetDatum(body), path_array(keys, n),
											  JsonbPGetDatum(value), BoolGetDatum(true)));
}

static Jsonb *
jsonb_of(const char *text)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
}

/*
 * The body of the request that continues from *cp: the job's body with
 * the paging values that go in it; NULL for a GET.
 */
char *
etl_pagination_request_body(const EtlJob *job, const EtlCheckpoint *cp)
{
	Jsonb	   *body;

	if (!job->http.post)
		return NULL;
	if (job->body == NULL && !in_body(job->skip_param) && !in_body(job->limit_param) &&
		!in_body(job->page_param) && !in_body(job->cursor_param))
		return NULL;			/* a POST without a body */
	body = job->body ? job->body : jsonb_of("{}");
	switch (job->pagination)
	{
		case ETL_PAGINATION_OFFSET:
			if (in_body(job->skip_param))
				body = body_set(body, job->skip_param, jsonb_of(psprintf(INT64_FORMAT, cp->skip)));
			if (in_body(job->limit_param))
				body = body_set(body, job->limit_param, jsonb_of(psprintf("%d", job->page_size)));
			break;
		case ETL_PAGINATION_PAGE:
			if (in_body(job->page_param))
				body = body_set(body, job->page_param,
								jsonb_of(psprintf(INT64_FORMAT, job->first_page + cp->page_index)));
			if (in_body(job->limit_param))
				body = body_set(body, job->limit_param, jsonb_of(psprintf("%d", job->page_size)));
			break;
		case ETL_PAGINATION_CURSOR:
			if (in_body(job->limit_param))
				body = body_set(body, job->limit_param, jsonb_of(psprintf("%d", job->page_size)));
			/* the first page: the body as the job has it */
			if (cp->cursor && in_body(job->cursor_param))
				body = body_set(body, job->cursor_param, jsonb_of(cp->cursor));
			break;
		default:
			break;				/* links are whole requests: the same body */
	}
	return JsonbToCString(NULL, &body->root, VARSIZE(body));
}

/*
 * Whether a link's parameters (lower-cased) give it the relation "next":
 * rel may list several relation types, rel="next last".
 */
static bool
rel_is_next(const char *params)
{
	const char *q = params;

	while ((q = strstr(q, "rel")) != NULL)
	{
		const char *v = q + 3;

		while (*v == ' ')
			v++;
		if (*v == '=')
		{
			char		value[256];
			int			n = 0;
			char	   *save = NULL;

			v++;
			while (*v == ' ')
				v++;
			if (*v == '"')
			{
				v++;
				while (*v && *v != '"' && n < 255)
					value[n++] = *v++;
			}
			else
				while (*v && *v != ';' && *v != ' ' && n < 255)
					value[n++] = *v++;
			value[n] = '\0';
			for (char *tok = strtok_r(value, " ", &save); tok; tok = strtok_r(NULL, " ", &save))
				if (strcmp(tok, "next") == 0)
					return true;
		}
		q += 3;
	}
	return false;
}

/*
 * RFC 8288: find the target of rel="next" in Link header values such as
 * `<https://x/p?page=2>; rel="next", <https://x/p?page=9>; rel=last`.
 */
static char *
link_header_next(List *link_headers)
{
	ListCell   *lc;

	foreach(lc, link_headers)
	{
		const char *p = (const char *) lfirst(lc);

		while ((p = strchr(p, '<')) != NULL)
		{
			const char *close = strchr(p, '>');
			const char *end;
			bool		quoted = false;
			char	   *params;
			char	   *target;

			if (close == NULL)
				break;
			target = pnstrdup(p + 1, close - p - 1);
			/* parameters run to the next link: a ',' outside quotes */
			for (end = close + 1; *end; end++)
			{
				if (*end == '"')
					quoted = !quoted;
				else if (*end == ',' && !quoted)
					break;
			}
			params = pnstrdup(close + 1, end - close - 1);
			for (char *q = params; *q; q++)
				*q = pg_tolower((unsigned char) *q);
			if (rel_is_next(params))
				return target;
			p = end;
		}
	}
	return NULL;
}

/* The total a page reports (at total_path), or -1. */
static int64
reported_total(const char *text)
{
	char	   *end;
	double		d;

	if (text == NULL)
		return -1;
	d = strtod(text, &end);
	if (end != text && d >= 0)
		return d < 9.0e18 ? (int64) d : PG_INT64_MAX;
	return -1;
}

/*
 * next_link / link_header: the next link (from the body or the Link
 * header), resolved against where the response came from; NULL on the
 * last page.  The same link again is an error, never a loop.
 */
static char *
next_link(const EtlJob *job, const EtlCheckpoint *cp, const char *request_url,
		  const EtlPageFacts *facts, const EtlHttpResponse *resp)
{
	char	   *link;

	if (job->next_header)
		link = resp->header_value;
	else if (job->pagination == ETL_PAGINATION_NEXT_LINK)
		link = facts->next_text;
	else
		link = link_header_next(resp->link_headers);
	if (facts->record_count == 0 || link == NULL || link[0] == '\0')
		return NULL;
	/* relative to where the response came from (after redirects) */
	link = etl_url_resolve(resp->effective_url ? resp->effective_url : request_url, link);
	/* a query-string secret it echoes is kept as {secret:NAME} (redact.c) */
	link = etl_redact_url(link);
	if (strcmp(link, request_url) == 0 ||
		(cp->next_url && strcmp(link, cp->next_url) == 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the API returned the same next link again: %s", etl_url_redact(link)),
				 errdetail("Following it would loop forever; page %d.", cp->page_index + 1),
				 errhint("Check the job's next_path, or report the API's paging bug.")));
	return link;
}

/*
 * cursor: the cursor for the next request (from the body, or the header
 * next_header names); NULL on the last page.  One that goes in the body
 * is JSON text: a header's is a JSON string.
 */
static char *
next_cursor(const EtlJob *job, const EtlCheckpoint *cp, const EtlPageFacts *facts,
			const EtlHttpResponse *resp)
{
	char	   *cursor = job->next_header ? resp->header_value : facts->next_text;

	if (facts->record_count == 0 || cursor == NULL || cursor[0] == '\0')
		return NULL;
	if (job->next_header && job->cursor_in_body)
	{
		StringInfoData quoted;

		initStringInfo(&quoted);
		escape_json(&quoted, cursor);
		cursor = quoted.data;
	}
	if (cp->cursor && strcmp(cursor, cp->cursor) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the API returned the same cursor again: %s", cursor),
				 errdetail("Following it would loop forever; page %d.", cp->page_index + 1),
				 errhint("Check the job's next_path (where the cursor is in the body).")));
	return pstrdup(cursor);		/* the response's memory may go first */
}

/*
 * What this response says about the next page.  The caller has loaded
 * facts->record_count records from it.
 */
void
etl_pagination_advance(const EtlJob *job, const EtlCheckpoint *cp,
					   const char *request_url, const EtlPageFacts *facts,
					   const EtlHttpResponse *resp, EtlPageOutcome *outcome)
{
	int64		loaded_after = cp->skip + facts->record_count;

	outcome->expected_total = reported_total(facts->total_text);
	outcome->next_url = NULL;
	outcome->cursor = NULL;
	outcome->last_page = false;

	switch (job->pagination)
	{
		case ETL_PAGINATION_NONE:
			outcome->last_page = true;
			break;
		case ETL_PAGINATION_OFFSET:
		case ETL_PAGINATION_PAGE:
			if (facts->record_count == 0)
				outcome->last_page = true;
			else if (outcome->expected_total >= 0 && loaded_after >= outcome->expected_total)
				outcome->last_page = true;
			else if (job->stop_on_short_page && facts->record_count < job->page_size)
				outcome->last_page = true;
			break;
		case ETL_PAGINATION_NEXT_LINK:
		case ETL_PAGINATION_LINK_HEADER:
			outcome->next_url = next_link(job, cp, request_url, facts, resp);
			outcome->last_page = outcome->next_url == NULL;
			break;
		case ETL_PAGINATION_CURSOR:
			outcome->cursor = next_cursor(job, cp, facts, resp);
			outcome->last_page = outcome->cursor == NULL;
			break;
	}

	/*
	 * has_more_path: false ends the run after this page; true goes on
	 * past a short page or a reported total -- never past an empty page,
	 * or without a next link or cursor.
	 */
	if (facts->has_more < 0)
	{
		outcome->last_page = true;
		outcome->next_url = NULL;
		outcome->cursor = NULL;
	}
	else if (facts->has_more > 0 && facts->record_count > 0 &&
			 (job->pagination == ETL_PAGINATION_OFFSET || job->pagination == ETL_PAGINATION_PAGE))
		outcome->last_page = false;
}
