/*-------------------------------------------------------------------------
 *
 * fuzz_pagination.c
 *	  libFuzzer harness: what a response says about the next page
 *	  (src/pagination.c) -- RFC 8288 Link headers, next links in the body
 *	  or a header, resolved against the page's URL (url.c) and redacted
 *	  (redact.c), cursors, reported totals -- and the next request built
 *	  from it, URL and POST body.
 *
 * Input: a line of options, then lines:
 *
 *	  options	style=link_header|next_link|cursor|offset|page|none
 *				header (the link or cursor comes from a response header),
 *				post (a POST; paging values may go in its body), short
 *				(stop_on_short_page),
 *				skip=, limit=, page=, cursor= (the paging parameters' names,
 *				"body:a.b" puts one in the body), records=N (the page's
 *				record count), secret=VALUE (a query-string secret "key")
 *	  line 1	the request's URL (and the job's)
 *	  line 2	the URL the response came from, after redirects ('' none)
 *	  line 3	the checkpoint's next link or cursor ('' none)
 *	  line 4	the next link or cursor the body or header gave ('' none)
 *	  line 5	the reported total ('' none)
 *	  line 6	the job's POST body, JSON ('' none)
 *	  the rest	the response's Link header values, one a line
 *
 * A bad link, a repeated link or cursor, a body path through a non-object
 * are ERRORs, normal outcomes.  What is checked: a next link is never the
 * request's own URL or the checkpoint's (no endless loop), the outcome's
 * last_page agrees with there being no next link or cursor, and a
 * reported total is -1 or not negative.
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

typedef struct PageCase
{
	EtlJob		job;
	EtlCheckpoint cp;
	const char *request_url;
	EtlPageFacts facts;
	EtlHttpResponse resp;
	EtlPageOutcome outcome;
	const char *body_text;
	const char *secret;
} PageCase;

static char *
or_null(char *s)
{
	return s[0] ? s : NULL;
}

static EtlPaginationStyle
style_of(const char *name)
{
	if (name == NULL || strcmp(name, "link_header") == 0)
		return ETL_PAGINATION_LINK_HEADER;
	if (strcmp(name, "next_link") == 0)
		return ETL_PAGINATION_NEXT_LINK;
	if (strcmp(name, "cursor") == 0)
		return ETL_PAGINATION_CURSOR;
	if (strcmp(name, "offset") == 0)
		return ETL_PAGINATION_OFFSET;
	if (strcmp(name, "page") == 0)
		return ETL_PAGINATION_PAGE;
	return ETL_PAGINATION_NONE;
}

static void
setup(void *arg)
{
	PageCase   *c = arg;

	if (c->secret)
		etl_redact_register_secret(c->secret, "key");
	if (c->body_text)
		c->job.body = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(c->body_text)));
}

static void
advance(void *arg)
{
	PageCase   *c = arg;

	etl_pagination_advance(&c->job, &c->cp, c->request_url, &c->facts, &c->resp, &c->outcome);
}

/* the request after this page, from the checkpoint the outcome makes */
static void
next_request(void *arg)
{
	PageCase   *c = arg;
	EtlCheckpoint next = c->cp;

	next.skip += c->facts.record_count;
	next.page_index++;
	next.next_url = c->outcome.next_url;
	next.cursor = c->outcome.cursor;
	(void) etl_pagination_request_url(&c->job, &next);
	(void) etl_pagination_request_body(&c->job, &next);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FuzzInput	in;
	PageCase	c;
	char	   *opts;
	char	   *opt;
	char	   *found;

	fuzz_begin();
	memset(&c, 0, sizeof(c));
	fuzz_input_init(&in, data, size);
	opts = fuzz_take_line(&in);

	c.job.pagination = style_of(fuzz_option(opts, "style"));
	c.job.page_size = 100;
	c.job.first_page = 1;
	c.job.skip_param = (opt = fuzz_option(opts, "skip")) ? opt : "$skip";
	c.job.limit_param = (opt = fuzz_option(opts, "limit")) ? opt : "$top";
	c.job.page_param = (opt = fuzz_option(opts, "page")) ? opt : "page";
	c.job.cursor_param = (opt = fuzz_option(opts, "cursor")) ? opt : "cursor";
	c.job.cursor_in_body = strncmp(c.job.cursor_param, "body:", 5) == 0;
	c.job.http.post = fuzz_flag(opts, "post");
	c.job.stop_on_short_page = fuzz_flag(opts, "short");
	if (fuzz_flag(opts, "header"))
		c.job.next_header = "X-Next-Page";
	c.secret = fuzz_option(opts, "secret");
	c.facts.record_count = (opt = fuzz_option(opts, "records")) ? atoi(opt) : 1;
	c.facts.record_count = Max(c.facts.record_count, 0);
	c.cp.partition_index = -1;

	c.request_url = fuzz_take_line(&in);
	c.job.url = (char *) c.request_url;
	c.resp.effective_url = or_null(fuzz_take_line(&in));
	opt = or_null(fuzz_take_line(&in));
	if (c.job.pagination == ETL_PAGINATION_CURSOR)
		c.cp.cursor = opt;
	else
		c.cp.next_url = opt;
	found = or_null(fuzz_take_line(&in));
	if (c.job.next_header)
		c.resp.header_value = found;
	else
		c.facts.next_text = found;
	c.facts.total_text = or_null(fuzz_take_line(&in));
	c.body_text = or_null(fuzz_take_line(&in));
	c.resp.status = 200;
	while (in.p < in.end)
		c.resp.link_headers = lappend(c.resp.link_headers, fuzz_take_line(&in));

	/* a new run: no secrets but this input's */
	etl_redact_forget();
	if (fuzz_call(setup, &c) && fuzz_call(advance, &c))
	{
		EtlPageOutcome *o = &c.outcome;

		fuzz_debug("last_page %d, total " INT64_FORMAT ", next_url %s, cursor %s",
				   o->last_page, o->expected_total, o->next_url ? o->next_url : "-",
				   o->cursor ? o->cursor : "-");
		if (o->expected_total < -1)
			fuzz_fail("reported total " INT64_FORMAT, o->expected_total);
		if (o->next_url && (strcmp(o->next_url, c.request_url) == 0 ||
							(c.cp.next_url && strcmp(o->next_url, c.cp.next_url) == 0)))
			fuzz_fail("next link %s repeats the request's or the checkpoint's", o->next_url);
		if (o->cursor && c.cp.cursor && strcmp(o->cursor, c.cp.cursor) == 0)
			fuzz_fail("cursor %s repeats the checkpoint's", o->cursor);
		if ((c.job.pagination == ETL_PAGINATION_LINK_HEADER ||
			 c.job.pagination == ETL_PAGINATION_NEXT_LINK) && o->last_page != (o->next_url == NULL))
			fuzz_fail("last_page %d with next link %s", o->last_page,
					  o->next_url ? o->next_url : "NULL");
		if (c.job.pagination == ETL_PAGINATION_CURSOR && o->last_page != (o->cursor == NULL))
			fuzz_fail("last_page %d with cursor %s", o->last_page, o->cursor ? o->cursor : "NULL");
		(void) fuzz_call(next_request, &c);
	}
	else
		fuzz_debug("refused: %s", fuzz_error_message());
	fuzz_end();
	return 0;
}
