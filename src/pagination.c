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

static void
append_query_param(StringInfo url, const char *name, const char *value)
{
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

	if (job->pagination == ETL_PAGINATION_NEXT_LINK)
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

/* cursor: the cursor for the next request; NULL on the last page. */
static char *
next_cursor(const EtlCheckpoint *cp, const EtlPageFacts *facts)
{
	char	   *cursor = facts->next_text;

	if (facts->record_count == 0 || cursor == NULL || cursor[0] == '\0')
		return NULL;
	if (cp->cursor && strcmp(cursor, cp->cursor) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the API returned the same cursor again: %s", cursor),
				 errdetail("Following it would loop forever; page %d.", cp->page_index + 1),
				 errhint("Check the job's next_path (where the cursor is in the body).")));
	return cursor;
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
			outcome->cursor = next_cursor(cp, facts);
			outcome->last_page = outcome->cursor == NULL;
			break;
	}
}
