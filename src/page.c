/*-------------------------------------------------------------------------
 *
 * page.c
 *	  One page of a run: fetch it, read it, advance the pagination past it,
 *	  load it.
 *
 * Fetch: GET the URL the checkpoint leads to (or take the page fetched
 * ahead, below).  Read: the page reader (page_scan.c) renders the records
 * straight into COPY text when it can; otherwise the body is parsed as
 * jsonb and the records found with the job's records_path.  Advance: what
 * the page says about the pages after it (pagination.c), in one place,
 * with repeated links and cursors refused.  Load: into the target
 * (loader.c), in the worker's current subtransaction.
 *
 * Offset and page paging know the URL of every page in advance: with a
 * concurrency above 1 the pager keeps that many pages in flight (the
 * window), and still reads, loads and checkpoints them strictly in page
 * order -- the checkpoint stays a prefix of the pages, so resumes, exactly
 * once and every other guarantee hold unchanged.  Pages in flight when a
 * run stops are dropped, and asked again by the resume.  Nothing is asked
 * past a total the API reported, and pages after the last one are dropped
 * unseen.  An offset page that comes back with fewer (or more) records
 * than asked without being the last shifts every offset after it: the
 * window is dropped and the rest of the run goes one request at a time
 * (checkpoint.sequential_from_page).
 *
 * One request at a time (link and cursor paging, whose next URL comes from
 * the page before; a concurrency of 1), the next page is fetched before
 * this one is loaded.  Either way, when the page reader reads the job's
 * pages, the next page is scanned in the background while this one goes
 * through COPY: the two cores each do half the work.  One request at a
 * time, the two pages live in two fetch slots that alternate, each with
 * its own body buffer, so the page being scanned is never the one being
 * fetched into.  If fetching ahead fails, this page still loads, and the
 * run fails after it (etl_pager_deferred_error).
 *
 * Every request is sent as the job says (a POST's body comes from
 * pagination.c with the page's paging values in it).  A response a
 * response rule ignores is an empty page: nothing is read or loaded, and
 * the run ends normally after it (EtlPageDone.ignored_status).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "common/hashfn.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "etl_exec.h"

#define MAX_SEEN_LINKS 100000

/* A fetch slot: a page's body, and the page reader's result for it. */
typedef struct PageFetch
{
	EtlHttpBuffer body;			/* malloc'd, reused page after page */
	EtlScanResult scan;
} PageFetch;

/* A page in flight, in the window. */
typedef struct WindowSlot
{
	EtlHttpRequest *req;
	EtlHttpBuffer body;			/* malloc'd, reused page after page */
	EtlScanResult scan;
	MemoryContext cxt;			/* its URL; reset when it takes another page */
	int32		partition_index;	/* the partition of the page it fetches */
	int32		page_index;		/* the page it fetches; -1: free */
	int64		skip;			/* the offset that page was asked from */
	char	   *url;
	char	   *payload;		/* a POST's body, or NULL */
	bool		scanning;		/* its page is being scanned in the background */
} WindowSlot;

struct EtlPager
{
	EtlJob	   *job;
	EtlLoader  *loader;
	bool		dry_run;
	bool		from_stored_link;	/* next request uses a checkpointed link/cursor */
	MemoryContext run_cxt;
	EtlHttpAuth auth;
	int			retries;		/* retries the run's requests needed */
	char	   *dry_run_report;
	ErrorData  *deferred_error; /* the fetch ahead's; shows after this page */
	/* hashes of the next links / cursors this segment followed: no cycles */
	uint64	   *seen_links;
	int			nseen_links;
	/* the page being read, and the next one, fetched ahead */
	PageFetch	fetches[2];
	int			current;		/* the slot the next page is in, or goes to */
	bool		prefetched;		/* it is there, and being scanned */
	char	   *prefetch_url;	/* (in run memory) */
	EtlHttpResponse prefetch_resp;
	/* the window: pages in flight (offset and page paging) */
	int			concurrency;
	WindowSlot *window;			/* NULL until first used */
	int64		known_total;	/* the total the API last reported; -1: none */
	EtlScanSpec *format_spec;	/* ndjson, csv: the loader's spec, with the format */
	const EtlScanSpec *format_spec_of;	/* the loader's spec it copies */
	/* partitions: the run's parameter sets, paged one after another */
	int64		run_id;
	Jsonb	   *run_parameters;
	int32		partitions_total;	/* -1: none */
	int32		partition_loaded;	/* whose URL the job has now; -1: none */
	MemoryContext partition_cxt;
	EtlInference *sample;		/* a sample run's key statistics, or NULL */
};

/* The page being processed, from fetch to load. */
typedef struct Page
{
	char	   *url;			/* the request's */
	char	   *payload;		/* a POST's body, or NULL */
	EtlHttpResponse resp;
	EtlScanResult *scanned;		/* the page reader's result, or NULL */
	JsonbValue *records;		/* else: the records, parsed */
	EtlPageFacts facts;
} Page;

/*
 * A pager for the run's pages.  retries: those the run's requests needed
 * so far; from_stored_link: the first request continues from a next link
 * or cursor of the checkpoint.
 */
EtlPager *
etl_pager_create(EtlJob *job, EtlLoader *loader, bool dry_run, bool from_stored_link,
				 int retries, int concurrency, int64 known_total,
				 int64 run_id, Jsonb *run_parameters, int32 partitions_total,
				 MemoryContext run_cxt)
{
	EtlPager   *pager = MemoryContextAllocZero(run_cxt, sizeof(EtlPager));

	pager->job = job;
	pager->loader = loader;
	pager->dry_run = dry_run;
	pager->from_stored_link = from_stored_link;
	pager->retries = retries;
	pager->run_cxt = run_cxt;
	pager->concurrency = Min(Max(concurrency, 1), ETL_MAX_CONCURRENCY);
	pager->known_total = partitions_total >= 0 ? -1 : known_total;
	pager->run_id = run_id;
	pager->run_parameters = run_parameters;
	pager->partitions_total = partitions_total;
	pager->partition_loaded = -1;
	pager->partition_cxt = AllocSetContextCreate(run_cxt, "etl_exec partition", ALLOCSET_SMALL_SIZES);
	etl_job_http_auth(job, &pager->auth);
	if (partitions_total < 0)
		etl_loader_use_parameters(loader, run_parameters);	/* (a partition's: use_partition) */
	return pager;
}

/*
 * Make the pager's run a sample run (etl_infer_table): a dry run with no
 * loader, whose pages feed key statistics (type_infer.c) -- its report --
 * and which goes on into the next partition after one's last page.
 */
void
etl_pager_sample(EtlPager *pager)
{
	Assert(pager->dry_run && pager->loader == NULL);
	pager->sample = etl_infer_create(pager->run_cxt, true);
}

int
etl_pager_retries(EtlPager *pager)
{
	return pager->retries;
}

const char *
etl_pager_dry_run_report(EtlPager *pager)
{
	return pager->dry_run_report;
}

/* The error fetching ahead raised, after the page it followed is in. */
ErrorData *
etl_pager_deferred_error(EtlPager *pager)
{
	return pager->deferred_error;
}

static void window_drop_all(EtlPager *pager);

/* Wait for a background scan still running (after an error or a stop). */
void
etl_pager_drain(EtlPager *pager)
{
	if (pager->window)
		window_drop_all(pager);
	if (!pager->prefetched)
		return;
	(void) etl_scan_finish();
	etl_scan_result_free(&pager->fetches[pager->current].scan);
	pager->prefetched = false;
}

/* The end of the run's pages: no scan running, the body buffers freed. */
void
etl_pager_end(EtlPager *pager)
{
	etl_pager_drain(pager);
	for (int i = 0; i < 2; i++)
		etl_http_buffer_free(&pager->fetches[i].body);
	if (pager->window)
		for (int i = 0; i < pager->concurrency; i++)
			etl_http_buffer_free(&pager->window[i].body);
}

/* ---------- fetch ---------- */

/* what the error context of a request from a stored link needs */
typedef struct StoredLink
{
	const EtlCheckpoint *cp;
	int32		job_id;
} StoredLink;

static void
stored_link_error_context(void *arg)
{
	StoredLink *link = (StoredLink *) arg;

	if (geterrcode() != ETL_ERRCODE_HTTP_REFUSED)
		return;					/* only the API's own refusal is about the link */

	errcontext("the request continued from the %s stored in the run's checkpoint, and the API "
			   "rejected it (next links and cursors may expire); to start over, run "
			   "SELECT etl_execute_job(%d)",
			   link->cp->cursor ? "cursor" : "next link", link->job_id);
}

/*
 * GET the page that follows cp into the current fetch slot; a stored next
 * link or cursor the API rejects says so.  On ETL_STOP_NONE, page->url
 * and page->resp are set.
 */
static EtlStopReason
get_page(EtlPager *pager, const EtlCheckpoint *cp, Page *page)
{
	ErrorContextCallback errcb;
	StoredLink	link = {cp, pager->job->job_id};
	EtlStopReason stop;

	page->url = etl_pagination_request_url(pager->job, cp);
	page->payload = etl_pagination_request_body(pager->job, cp);
	if (pager->from_stored_link)
	{
		errcb.callback = stored_link_error_context;
		errcb.arg = &link;
		errcb.previous = error_context_stack;
		error_context_stack = &errcb;
	}
	stop = etl_http_get(page->url, page->payload, &pager->job->http, &pager->auth,
						&pager->fetches[pager->current].body, &page->resp);
	if (pager->from_stored_link)
		error_context_stack = errcb.previous;
	pager->retries += page->resp.retries;
	return stop;
}

/*
 * Fetch the page that follows cp: the one fetched ahead and scanned in the
 * background, or a GET now, scanned at once when spec (the page reader's)
 * is given.  A page the reader could not read, or whose first page has
 * nothing at records_path (jsonb explains that), goes without its result.
 */
static EtlStopReason
fetch_page(EtlPager *pager, const EtlCheckpoint *cp, const EtlScanSpec *spec, Page *page)
{
	PageFetch  *fetch = &pager->fetches[pager->current];
	bool		scanned_ok = false;

	memset(page, 0, sizeof(*page));
	if (pager->prefetched)
	{
		page->url = pager->prefetch_url;
		page->resp = pager->prefetch_resp;
		scanned_ok = etl_scan_finish();
		page->scanned = &fetch->scan;
		pager->prefetched = false;
	}
	else
	{
		EtlStopReason stop = get_page(pager, cp, page);

		if (stop != ETL_STOP_NONE)
			return stop;
		if (spec && !page->resp.ignored)
		{
			page->scanned = &fetch->scan;
			scanned_ok = etl_scan_page(spec, page->resp.body, page->resp.body_len, page->scanned);
		}
	}
	if (page->scanned)
		etl_loader_note_scan(pager->loader, scanned_ok);
	if (page->scanned &&
		(!scanned_ok || (page->scanned->nrec == 0 && !page->scanned->container_seen &&
						 cp->page_index == 0)))
	{
		etl_scan_result_free(page->scanned);
		page->scanned = NULL;
	}
	return ETL_STOP_NONE;
}

/* ---------- read ---------- */

static void
parse_error_context(void *arg)
{
	errcontext("while parsing the response to %s", (const char *) arg);
}

/*
 * A first page with nothing at records_path (as opposed to an empty array
 * there) means the path is wrong for this API: say so, with the body's keys.
 */
static void
check_records_present(const EtlJob *job, Jsonb *body)
{
	const char *path = job->records_path;
	const char *star = strstr(path, "[*]");
	char	   *container = star ? pnstrdup(path, star - path) : pstrdup(path);
	JsonbValue	doc;

	etl_jsonb_as_value(body, &doc);
	if (etl_path_first(etl_path_compile(container), &doc) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the first page has nothing at records_path %s", path),
				 errdetail("The response's top-level keys are: %s.", etl_jsonb_top_keys(body)),
				 errhint("Set the job's records_path to where the records are, e.g. '$.value[*]' (OData), '$[*]' (a bare array) or '$.entry[*].resource' (FHIR).")));
}

/* A value's JSON text (a cursor that goes in a body keeps its type); NULL for null. */
static char *
json_text(JsonbValue *v)
{
	Jsonb	   *jb;

	if (v == NULL || v->type == jbvNull)
		return NULL;
	jb = JsonbValueToJsonb(v);
	return JsonbToCString(NULL, &jb->root, VARSIZE(jb));
}

/* has_more_path's value: 1 true, -1 false, 0 neither (not there, or not a boolean) */
static int
has_more_flag(JsonbValue *v)
{
	if (v && v->type == jbvBool)
		return v->val.boolean ? 1 : -1;
	return 0;
}

/* Parse the body as jsonb: its records, and the facts pagination needs. */
static void
parse_page(EtlPager *pager, const EtlCheckpoint *cp, Page *page)
{
	const EtlJob *job = pager->job;
	ErrorContextCallback errcb;
	Jsonb	   *body;
	JsonbValue	doc;

	errcb.callback = parse_error_context;
	errcb.arg = etl_url_redact(page->url);	/* for messages only */
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	/* jsonb_in and text do not check the encoding; COPY does */
	(void) pg_verify_mbstr(GetDatabaseEncoding(), page->resp.body, page->resp.body_len, false);
	if (job->format != ETL_FORMAT_JSON)
	{
		/* ndjson, csv: records alone, which name their lines when bad */
		error_context_stack = errcb.previous;
		page->facts.record_count = etl_page_records(job, page->resp.body, page->resp.body_len,
													cp->page_index, errcb.arg, false, &page->records);
		return;
	}
	body = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(page->resp.body)));
	error_context_stack = errcb.previous;

	etl_jsonb_as_value(body, &doc);
	page->facts.record_count = etl_path_query(job->records, &doc, &page->records);
	if (page->facts.record_count == 0 && cp->page_index == 0)
		check_records_present(job, body);
	if (job->total)
		page->facts.total_text = etl_jsonb_value_text(etl_path_first(job->total, &doc));
	if (job->next && job->cursor_in_body)
		page->facts.next_text = json_text(etl_path_first(job->next, &doc));
	else if (job->next)
		page->facts.next_text = etl_jsonb_value_text(etl_path_first(job->next, &doc));
	if (job->has_more)
		page->facts.has_more = has_more_flag(etl_path_first(job->has_more, &doc));
}

/*
 * The page reader's spec for the job's pages (the loader's, which knows the
 * columns), or NULL when the pages are parsed as jsonb.  An ndjson or csv
 * job's copy says so; the loader's spec changes only to NULL.
 */
static const EtlScanSpec *
reader_spec(EtlPager *pager)
{
	const EtlScanSpec *spec = pager->dry_run ? NULL : etl_loader_scan_spec(pager->loader);

	if (spec == NULL || pager->job->format == ETL_FORMAT_JSON)
		return spec;
	/* (a column added for a new key gives the loader a new spec) */
	if (pager->format_spec == NULL || pager->format_spec_of != spec)
	{
		if (pager->format_spec == NULL)
			pager->format_spec = MemoryContextAlloc(pager->run_cxt, sizeof(EtlScanSpec));
		pager->format_spec_of = spec;
		*pager->format_spec = *spec;
		pager->format_spec->format = pager->job->format;
		pager->format_spec->csv = &pager->job->csv;
	}
	return pager->format_spec;
}

/* What the page says: from the page reader's result, or parsed as jsonb. */
static void
read_page(EtlPager *pager, const EtlCheckpoint *cp, Page *page)
{
	EtlScanResult *scanned = page->scanned;

	if (page->resp.ignored)
		return;					/* an empty page: nothing to read */
	if (scanned == NULL)
	{
		parse_page(pager, cp, page);
		return;
	}
	page->facts.record_count = scanned->nrec;
	page->facts.total_text = scanned->total_text ? pstrdup(scanned->total_text) : NULL;
	page->facts.next_text = scanned->next_text ? pstrdup(scanned->next_text) : NULL;
}

/*
 * A page the reader read carries a key no column takes, and the job does
 * something about such keys (on_new_keys): the jsonb path loads it, and
 * decides (loader.c).  Pages without new keys never come here.
 */
static void
read_again_as_jsonb(EtlPager *pager, const EtlCheckpoint *cp, Page *page)
{
	etl_scan_result_free(page->scanned);
	page->scanned = NULL;
	memset(&page->facts, 0, sizeof(page->facts));
	parse_page(pager, cp, page);
}

/* ---------- advance ---------- */

/* A next link or cursor seen before in this segment is a cycle: error. */
static void
check_link_cycle(EtlPager *pager, const EtlCheckpoint *cp, const char *link, bool is_cursor)
{
	uint64		h;

	if (link == NULL)
		return;
	h = hash_bytes_extended((const unsigned char *) link, strlen(link), 0);
	for (int i = 0; i < pager->nseen_links; i++)
		if (pager->seen_links[i] == h)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the API returned a %s it already gave earlier in this run: %s",
							is_cursor ? "cursor" : "next link", is_cursor ? link : etl_url_redact(link)),
					 errdetail("Following it would loop; page %d.", cp->page_index + 1),
					 errhint("Check the job's next_path, or report the API's paging bug.")));
	if (pager->seen_links == NULL)
		pager->seen_links = MemoryContextAlloc(pager->run_cxt, sizeof(uint64) * MAX_SEEN_LINKS);
	if (pager->nseen_links < MAX_SEEN_LINKS)
		pager->seen_links[pager->nseen_links++] = h;
}

/*
 * What the page says about the pages after it: the one place the run's
 * pagination advances.
 */
static void
advance(EtlPager *pager, const EtlCheckpoint *cp, const Page *page, EtlPageOutcome *outcome)
{
	etl_pagination_advance(pager->job, cp, page->url, &page->facts, &page->resp, outcome);
	check_link_cycle(pager, cp, outcome->next_url, false);
	check_link_cycle(pager, cp, outcome->cursor, true);
}

/* The checkpoint after a page (records count only when loaded). */
static void
checkpoint_after(const EtlCheckpoint *cp, const EtlPageFacts *facts,
				 const EtlPageOutcome *outcome, bool dry_run, EtlCheckpoint *next)
{
	*next = *cp;
	next->skip += facts->record_count;
	next->page_index += 1;
	next->total_records += dry_run ? 0 : facts->record_count;
	next->next_url = outcome->next_url;
	next->cursor = outcome->cursor;
}

/* ---------- fetching ahead ---------- */

/* Keep what the next turn needs of a response fetched ahead (run memory). */
static void
keep_prefetch(EtlPager *pager, const char *url, const EtlHttpResponse *resp)
{
	MemoryContext old = MemoryContextSwitchTo(pager->run_cxt);
	ListCell   *lc;

	/* the previous one's copies: the run's memory must not grow with pages */
	if (pager->prefetch_url)
		pfree(pager->prefetch_url);
	if (pager->prefetch_resp.effective_url)
		pfree(pager->prefetch_resp.effective_url);
	if (pager->prefetch_resp.header_value)
		pfree(pager->prefetch_resp.header_value);
	list_free_deep(pager->prefetch_resp.link_headers);
	pager->prefetch_url = pstrdup(url);
	pager->prefetch_resp = *resp;
	pager->prefetch_resp.effective_url = resp->effective_url ? pstrdup(resp->effective_url) : NULL;
	pager->prefetch_resp.header_value = resp->header_value ? pstrdup(resp->header_value) : NULL;
	pager->prefetch_resp.link_headers = NIL;
	foreach(lc, resp->link_headers)
		pager->prefetch_resp.link_headers = lappend(pager->prefetch_resp.link_headers,
													pstrdup((char *) lfirst(lc)));
	MemoryContextSwitchTo(old);
}

/*
 * GET url into the other fetch slot, in a subtransaction of its own: if
 * that fails, this page still loads and commits, and the run fails after
 * it (pager->deferred_error) instead of losing it.
 */
typedef struct PrefetchGet
{
	EtlPager   *pager;
	const char *url;
	const char *payload;
	EtlHttpResponse *resp;
	EtlStopReason stop;
} PrefetchGet;

static bool
prefetch_get_step(void *arg)
{
	PrefetchGet *get = (PrefetchGet *) arg;
	EtlPager   *pager = get->pager;

	get->stop = etl_http_get(get->url, get->payload, &pager->job->http, &pager->auth,
							 &pager->fetches[1 - pager->current].body, get->resp);
	if (get->stop == ETL_STOP_NONE)
		pager->retries += get->resp->retries;
	return true;
}

static EtlStopReason
prefetch_get(EtlPager *pager, const char *url, const char *payload, EtlHttpResponse *resp)
{
	PrefetchGet get = {pager, url, payload, resp, ETL_STOP_NONE};
	ErrorData  *failure = etl_subxact_try(prefetch_get_step, &get, pager->run_cxt, NULL);

	if (failure == NULL)
		return get.stop;
	pager->deferred_error = failure;
	return ETL_STOP_CANCELLED;	/* anything but NONE: no prefetch */
}

/*
 * Fetch the page after this one now, and scan it in the background while
 * this one loads.  A stop shows at the next turn; this page still loads.
 */
static void
fetch_ahead(EtlPager *pager, const EtlScanSpec *spec, const EtlCheckpoint *after)
{
	char	   *next_url = etl_pagination_request_url(pager->job, after);
	char	   *payload = etl_pagination_request_body(pager->job, after);
	EtlHttpResponse next_resp;
	int			other = 1 - pager->current;

	if (prefetch_get(pager, next_url, payload, &next_resp) != ETL_STOP_NONE)
		return;
	/* (a response to ignore is no page to scan: the next turn asks again) */
	if (next_resp.ignored)
		return;
	/* (no thread to be had: the next turn fetches it again) */
	if (etl_scan_start(spec, next_resp.body, next_resp.body_len, &pager->fetches[other].scan))
	{
		keep_prefetch(pager, next_url, &next_resp);
		pager->current = other;
		pager->prefetched = true;
	}
}

/* ---------- the window: pages in flight ---------- */

/* Whether the page after cp can be one of several in flight. */
static bool
window_applies(EtlPager *pager, const EtlCheckpoint *cp)
{
	return pager->concurrency > 1 && !pager->dry_run && cp->sequential_from_page == 0 &&
		(pager->job->pagination == ETL_PAGINATION_OFFSET ||
		 pager->job->pagination == ETL_PAGINATION_PAGE);
}

/* A page the window may hold: its partition, its index there, its offset. */
typedef struct PageKey
{
	int32		partition_index;
	int32		page_index;
	int64		skip;
} PageKey;

static bool
slot_holds(const EtlPager *pager, const WindowSlot *slot, const PageKey *key)
{
	return slot->page_index == key->page_index && slot->partition_index == key->partition_index &&
		(slot->skip == key->skip || pager->job->pagination == ETL_PAGINATION_PAGE);
}

/* The slot that holds page key, or NULL. */
static WindowSlot *
window_slot(EtlPager *pager, const PageKey *key)
{
	for (int i = 0; i < pager->concurrency; i++)
		if (slot_holds(pager, &pager->window[i], key))
			return &pager->window[i];
	return NULL;
}

static WindowSlot *
free_slot(EtlPager *pager)
{
	for (int i = 0; i < pager->concurrency; i++)
		if (pager->window[i].page_index < 0)
			return &pager->window[i];
	return NULL;
}

/* Free a slot: its request dropped, a background scan of it waited for. */
static void
window_drop(WindowSlot *slot)
{
	if (slot->scanning)
	{
		(void) etl_scan_finish();
		etl_scan_result_free(&slot->scan);
		slot->scanning = false;
	}
	etl_http_abandon(slot->req);
	slot->page_index = -1;
}

static void
window_drop_all(EtlPager *pager)
{
	for (int i = 0; i < pager->concurrency; i++)
		window_drop(&pager->window[i]);
}

/*
 * The pages to have in flight after cp, in the order they load, at most
 * the window's size: page cp->page_index + k of the partition asks from
 * the offset it has if every page before it is full, none past a total
 * the API reported (but the first: it says whether there are any).  When
 * the partition's pages are all asked, the first pages of the partitions
 * after it.  (Page numbers do not depend on the pages before: a short
 * page-numbered page changes nothing in flight.)
 */
static int
window_keys(EtlPager *pager, const EtlCheckpoint *cp, PageKey *keys)
{
	int			n = 0;
	bool		partition_asked = false;

	/*
	 * A partition whose first page will tell its total (total_path): only
	 * that page until it has -- the later partitions' first pages meanwhile,
	 * not pages past a short partition's end.
	 */
	bool		total_to_come = pager->partitions_total >= 0 && pager->job->total != NULL &&
		pager->known_total < 0;

	for (int k = 0; n < pager->concurrency; k++)
	{
		int64		skip = cp->skip + (int64) k * pager->job->page_size;

		if (k > 0 && (total_to_come || (pager->known_total >= 0 && skip >= pager->known_total)))
		{
			partition_asked = true;
			break;
		}
		keys[n].partition_index = cp->partition_index;
		keys[n].page_index = cp->page_index + k;
		keys[n].skip = skip;
		n++;
	}
	if (partition_asked && pager->partitions_total >= 0)
		for (int32 q = cp->partition_index + 1; n < pager->concurrency && q < pager->partitions_total; q++)
		{
			keys[n].partition_index = q;
			keys[n].page_index = 0;
			keys[n].skip = 0;
			n++;
		}
	return n;
}

/*
 * The request for page key into the slot (its memory): its URL and POST
 * body; another partition's are filled with its parameters.
 */
static void
window_request(EtlPager *pager, const PageKey *key, WindowSlot *slot)
{
	EtlCheckpoint at;
	EtlJob		other;
	const EtlJob *job = pager->job;
	MemoryContext old;

	memset(&at, 0, sizeof(at));
	at.partition_index = key->partition_index;
	at.page_index = key->page_index;
	at.skip = key->skip;
	MemoryContextReset(slot->cxt);
	old = MemoryContextSwitchTo(slot->cxt);
	if (key->partition_index != pager->partition_loaded && pager->partitions_total >= 0)
	{
		etl_job_for_partition(pager->job, pager->run_parameters,
							  etl_read_partition(pager->run_id, key->partition_index), &other);
		job = &other;
	}
	slot->url = etl_pagination_request_url(job, &at);
	slot->payload = etl_pagination_request_body(job, &at);
	MemoryContextSwitchTo(old);
}

/*
 * Have the pages after cp in flight (window_keys): a slot that holds a
 * page of this partition no longer wanted -- past its end, or (offset
 * paging) asked from another offset -- is dropped; the first page of a
 * later partition stays in flight, for when the run gets there; each
 * wanted page not in flight is asked, while there is a slot for it (the
 * page that follows cp always has one).
 */
static void
window_fill(EtlPager *pager, const EtlCheckpoint *cp)
{
	PageKey		keys[ETL_MAX_CONCURRENCY];
	int			n;

	if (pager->window == NULL)
	{
		pager->window = MemoryContextAllocZero(pager->run_cxt,
											   sizeof(WindowSlot) * pager->concurrency);
		for (int i = 0; i < pager->concurrency; i++)
		{
			pager->window[i].req = etl_http_request_create();
			pager->window[i].cxt = AllocSetContextCreate(pager->run_cxt, "etl_exec page in flight",
														 ALLOCSET_SMALL_SIZES);
			pager->window[i].page_index = -1;
		}
	}
	n = window_keys(pager, cp, keys);
	for (int i = 0; i < pager->concurrency; i++)
	{
		WindowSlot *slot = &pager->window[i];
		bool		wanted = slot->partition_index > cp->partition_index && slot->page_index == 0;

		for (int k = 0; k < n && !wanted; k++)
			wanted = slot_holds(pager, slot, &keys[k]);
		if (!wanted && slot->page_index >= 0)
			window_drop(slot);
	}
	for (int k = 0; k < n; k++)
	{
		WindowSlot *slot;

		if (window_slot(pager, &keys[k]) != NULL)
			continue;
		slot = free_slot(pager);
		if (slot == NULL && k == 0)
		{
			/* the page that follows cp goes first: drop the farthest ahead */
			for (int i = 0; i < pager->concurrency; i++)
				if (slot == NULL || pager->window[i].partition_index > slot->partition_index)
					slot = &pager->window[i];
			window_drop(slot);
		}
		if (slot == NULL)
			break;
		window_request(pager, &keys[k], slot);
		slot->partition_index = keys[k].partition_index;
		slot->page_index = keys[k].page_index;
		slot->skip = keys[k].skip;
		etl_http_start(slot->req, slot->url, slot->payload, &pager->job->http, &pager->auth,
					   &slot->body);
	}
}

/*
 * Fetch the page that follows cp from the window (its request may have
 * been answered already, and its body even scanned), scanned when spec
 * (the page reader's) is given.
 */
static EtlStopReason
window_fetch(EtlPager *pager, const EtlCheckpoint *cp, const EtlScanSpec *spec, Page *page,
			 WindowSlot **slot_out)
{
	WindowSlot *slot;
	EtlStopReason stop;
	bool		scanned_ok = false;
	PageKey		key = {cp->partition_index, cp->page_index, cp->skip};

	memset(page, 0, sizeof(*page));

	window_fill(pager, cp);
	slot = window_slot(pager, &key);
	Assert(slot != NULL);
	*slot_out = slot;
	page->url = slot->url;
	page->payload = slot->payload;
	if ((stop = etl_http_wait(slot->req, &page->resp)) != ETL_STOP_NONE)
		return stop;
	pager->retries += page->resp.retries;
	if (spec && !page->resp.ignored)
	{
		page->scanned = &slot->scan;
		if (slot->scanning)
		{
			scanned_ok = etl_scan_finish();
			slot->scanning = false;
		}
		else
			scanned_ok = etl_scan_page(spec, page->resp.body, page->resp.body_len, page->scanned);
		etl_loader_note_scan(pager->loader, scanned_ok);
		if (!scanned_ok || (page->scanned->nrec == 0 && !page->scanned->container_seen &&
							cp->page_index == 0))
		{
			etl_scan_result_free(page->scanned);
			page->scanned = NULL;
		}
	}
	return ETL_STOP_NONE;
}

/*
 * After page cp->page_index was read: drop the pages in flight that will
 * not be loaded (past the last page; after a short offset page, whose
 * successors asked from the wrong offsets -- the rest of the run then goes
 * one request at a time), and start scanning the next page in the
 * background if it is here already.
 */
static void
window_after_read(EtlPager *pager, const EtlCheckpoint *cp, const EtlScanSpec *spec,
				  const Page *page, const EtlPageOutcome *outcome, EtlCheckpoint *next)
{
	WindowSlot *following;
	PageKey		after = {cp->partition_index, cp->page_index + 1, next->skip};

	if (outcome->expected_total >= 0)
		pager->known_total = outcome->expected_total;
	if (outcome->last_page)
	{
		/* the partition's pages after it are past its end: dropped unseen */
		for (int i = 0; i < pager->concurrency; i++)
			if (pager->window[i].partition_index == cp->partition_index &&
				pager->window[i].page_index > cp->page_index)
				window_drop(&pager->window[i]);
		if (pager->partitions_total < 0 || cp->partition_index + 1 >= pager->partitions_total)
			return;
		after.partition_index = cp->partition_index + 1;
		after.page_index = 0;
		after.skip = 0;
	}
	if (pager->job->pagination == ETL_PAGINATION_OFFSET &&
		page->facts.record_count != pager->job->page_size)
	{
		ereport(LOG,
				(errmsg("etl_exec: page %d of job %d had %d records where %d were asked, and was not the last; the run goes on one request at a time",
						cp->page_index + 1, pager->job->job_id, page->facts.record_count,
						pager->job->page_size),
				 errdetail("The pages in flight after it asked from offsets that no longer follow on.")));
		window_drop_all(pager);
		next->sequential_from_page = next->page_index;
		return;
	}
	following = window_slot(pager, &after);
	if (spec && page->scanned && following != NULL &&
		!following->scanning && etl_http_ready(following->req) &&
		etl_scan_start(spec, following->body.data ? following->body.data : "",
					   following->body.len, &following->scan))
		following->scanning = true;
}

/* ---------- partitions ---------- */

static void
partition_error_context(void *arg)
{
	EtlPager   *pager = (EtlPager *) arg;

	errcontext("partition %d of %d of the run", pager->partition_loaded + 1, pager->partitions_total);
}

/*
 * Page partition `index` from now on: the job's URL filled with its
 * parameters (frozen with the run), the last partition's paging state
 * forgotten.  (Its first pages may be in flight already: window_keys.)
 */
static void
use_partition(EtlPager *pager, int32 index)
{
	MemoryContext old;
	Jsonb	   *parameters;

	MemoryContextReset(pager->partition_cxt);
	old = MemoryContextSwitchTo(pager->partition_cxt);
	pager->partition_loaded = index;	/* (errors name it) */
	parameters = etl_partition_parameters(pager->run_parameters,
										  etl_read_partition(pager->run_id, index));
	etl_job_use_partition(pager->job, parameters);
	/* the columns column_map gives a parameter take the partition's too */
	etl_loader_use_parameters(pager->loader, parameters);
	MemoryContextSwitchTo(old);
	pager->known_total = -1;
	pager->nseen_links = 0;
}

/*
 * The last page of a partition that is not the run's last: the checkpoint
 * moves to the first page of the next partition, and the run goes on.
 */
static void
next_partition(const EtlCheckpoint *cp, EtlCheckpoint *next, EtlPageOutcome *outcome)
{
	next->partition_index = cp->partition_index + 1;
	next->skip = 0;
	next->page_index = 0;
	next->next_url = NULL;
	next->cursor = NULL;
	next->sequential_from_page = 0;
	outcome->last_page = false;
}

/* ---------- load ---------- */

/* Load a parsed page; a dry run converts its values and reports. */
static void
load_parsed(EtlPager *pager, const EtlCheckpoint *cp, Page *page)
{
	if (pager->sample)
	{
		MemoryContext old;

		etl_infer_records(pager->sample, page->records, page->facts.record_count,
						  cp->page_index);
		old = MemoryContextSwitchTo(pager->run_cxt);
		if (pager->dry_run_report)
			pfree(pager->dry_run_report);
		pager->dry_run_report = etl_infer_report(pager->sample);
		MemoryContextSwitchTo(old);
		return;
	}
	etl_loader_load_page(pager->loader, page->records, page->facts.record_count,
						 cp->page_index, pager->dry_run);
	if (pager->dry_run)
	{
		MemoryContext old = MemoryContextSwitchTo(pager->run_cxt);
		StringInfoData report;
		char	   *rejects = etl_loader_describe_rejects(pager->loader);

		initStringInfo(&report);
		appendStringInfo(&report, "{\"records\": %d, \"url\": ", page->facts.record_count);
		escape_json(&report, etl_url_redact(page->url));
		appendStringInfo(&report, ", %s",
						 etl_loader_describe_mapping(pager->loader, page->records,
													 page->facts.record_count));
		/* with on_bad_record = 'reject': the records it would reject */
		if (rejects)
			appendStringInfo(&report, ", %s", rejects);
		appendStringInfoChar(&report, '}');
		pager->dry_run_report = report.data;
		MemoryContextSwitchTo(old);
	}
}

/*
 * Whether the page reader can give what advancing past this job's pages
 * takes: it has no has_more_path, and gives a cursor as text, not JSON.
 * Such jobs' pages are parsed as jsonb.
 */
static bool
reader_suits(const EtlJob *job)
{
	return job->has_more == NULL &&
		!(job->pagination == ETL_PAGINATION_CURSOR && job->cursor_in_body && !job->next_header);
}

/* A response a response rule ignored: say so (the run, or its partition, ends there). */
static void
note_ignored(EtlPager *pager, const EtlCheckpoint *cp, const Page *page, EtlPageDone *done)
{
	ereport(LOG,
			(errmsg("etl_exec: HTTP %ld from %s for page %d of job %d ignored by response rule %d; the run (or its partition) ends after the pages before it",
					page->resp.status, etl_url_redact(page->url), cp->page_index + 1,
					pager->job->job_id, page->resp.rule)));
	done->ignored_status = page->resp.status;
}

/* etl_pager_process, below */
static EtlStopReason
process_page(EtlPager *pager, const EtlCheckpoint *cp, EtlPageDone *done)
{
	const EtlScanSpec *spec = reader_suits(pager->job) ? reader_spec(pager) : NULL;
	Page		page;
	EtlPageOutcome outcome;
	EtlStopReason stop;

	WindowSlot *slot = NULL;
	bool		windowed;

	if (pager->partitions_total >= 0 && cp->partition_index != pager->partition_loaded)
		use_partition(pager, cp->partition_index);
	windowed = window_applies(pager, cp);
	if (windowed)
		stop = window_fetch(pager, cp, spec, &page, &slot);
	else
	{
		if (pager->window)
			window_drop_all(pager); /* fell back to one request at a time */
		stop = fetch_page(pager, cp, spec, &page);
	}
	if (stop != ETL_STOP_NONE)
		return stop;
	done->ignored_status = 0;
	if (page.resp.ignored)
		note_ignored(pager, cp, &page, done);
	read_page(pager, cp, &page);
	if (page.scanned && page.scanned->new_keys && etl_loader_watches_new_keys(pager->loader))
		read_again_as_jsonb(pager, cp, &page);
	/* (the body stays until the page is loaded: rejects need its records) */
	etl_loader_begin_page(pager->loader, cp, page.resp.body, page.resp.body_len, page.url);

	/*
	 * A parsed page loads at once.  A page the reader read loads after the
	 * next one is on its way, so that the next one's scan overlaps this load.
	 */
	if (page.scanned == NULL)
		load_parsed(pager, cp, &page);
	advance(pager, cp, &page, &outcome);
	checkpoint_after(cp, &page.facts, &outcome, pager->dry_run, &done->next);
	if (windowed)
		window_after_read(pager, cp, spec, &page, &outcome, &done->next);
	if (page.scanned)
	{
		if (!outcome.last_page && !windowed)
			fetch_ahead(pager, spec, &done->next);
		etl_loader_copy_scanned(pager->loader, page.scanned, cp->page_index);
		etl_scan_result_free(page.scanned);
	}
	/* records rejected (on_bad_record = 'reject') are not loaded: counted apart */
	if (!pager->dry_run)
	{
		int			rejected = etl_loader_page_rejected(pager->loader);

		done->next.total_records -= rejected;
		done->next.rejected += rejected;
	}
	if (slot)
		slot->page_index = -1;	/* free for the page after the window */

	if (outcome.last_page && pager->partitions_total >= 0 && (!pager->dry_run || pager->sample) &&
		cp->partition_index + 1 < pager->partitions_total)
		next_partition(cp, &done->next, &outcome);
	if (outcome.last_page && !pager->dry_run)
		etl_loader_finish(pager->loader);
	done->last_page = outcome.last_page;
	/* a partition's total is not the run's */
	done->expected_total = pager->partitions_total >= 0 ? -1 : outcome.expected_total;
	pager->from_stored_link = false;
	return ETL_STOP_NONE;
}

/*
 * Fetch, read and load the page that follows cp; on ETL_STOP_NONE *done
 * says where the run stands after it.  Returns a stop reason when the run
 * must stop before the page was complete (the page is then not loaded).
 * Runs in the worker's page subtransaction and memory.  The errors of a
 * run with partitions say which partition.
 */
EtlStopReason
etl_pager_process(EtlPager *pager, const EtlCheckpoint *cp, EtlPageDone *done)
{
	ErrorContextCallback errcb;
	EtlStopReason stop;

	if (pager->partitions_total < 0)
		return process_page(pager, cp, done);
	errcb.callback = partition_error_context;
	errcb.arg = pager;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	stop = process_page(pager, cp, done);
	error_context_stack = errcb.previous;
	return stop;
}
