/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The run worker: its lifecycle, signals and page loop.
 *
 * Lifecycle: attach the launch segment, connect, create or claim the run
 * (taking the run's lock, which this process then holds until it exits),
 * report the run_id to the caller, then page through the API.  Each page
 * is fetched, parsed and loaded inside a subtransaction; its checkpoint
 * moves only when the page is in.  Rows and checkpoint commit together at
 * least every checkpoint interval and at every stop, so after any crash
 * the target holds exactly the records the committed checkpoint covers.
 *
 * Signals: SIGINT (pg_cancel_backend, etl_cancel_run) ends the run
 * "cancelled"; SIGTERM (pg_terminate_backend, server shutdown) ends it
 * "interrupted"; both keep the last page that was fully loaded.  The
 * SIGTERM handler only sets flags and the latch, and raises a query cancel
 * so that a statement in progress stops at once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <malloc.h>
#include <signal.h>

#include "access/xact.h"
#include "common/hashfn.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "storage/pmsignal.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "etl_exec.h"

static volatile sig_atomic_t got_sigterm = false;
static TimestampTz run_deadline = 0;
static EtlStopReason sticky_stop = ETL_STOP_NONE;

static void
etl_worker_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	got_sigterm = true;
	/* abort a statement in progress, as a cancel would */
	InterruptPending = true;
	QueryCancelPending = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

/*
 * Must the run stop now?  Once a stop is seen it stays: the page loop and
 * the HTTP client both ask, and must agree.
 */
EtlStopReason
etl_pending_stop(void)
{
	if (sticky_stop != ETL_STOP_NONE)
		return sticky_stop;
	if (got_sigterm)
	{
		QueryCancelPending = false;
		return sticky_stop = ETL_STOP_INTERRUPTED;
	}
	if (QueryCancelPending)
	{
		QueryCancelPending = false;
		return sticky_stop = ETL_STOP_CANCELLED;
	}
	if (run_deadline != 0 && GetCurrentTimestamp() >= run_deadline)
		return sticky_stop = ETL_STOP_TIMED_OUT;
	if (!PostmasterIsAlive())
		proc_exit(1);			/* nothing to record: the server is gone */
	CHECK_FOR_INTERRUPTS();
	return ETL_STOP_NONE;
}

int64
etl_ms_until_deadline(void)
{
	long		secs;
	int			usecs;
	TimestampTz now = GetCurrentTimestamp();

	if (run_deadline == 0)
		return INT64CONST(86400000);
	if (now >= run_deadline)
		return 0;
	TimestampDifference(now, run_deadline, &secs, &usecs);
	return (int64) secs * 1000 + usecs / 1000;
}

/* Cap lock waits by the time the run has left (lock_timeout). */
void
etl_cap_lock_waits(void)
{
	SetConfigOption("lock_timeout", psprintf(INT64_FORMAT, Max(etl_ms_until_deadline(), (int64) 1)),
					PGC_SUSET, PGC_S_SESSION);
}

/* Sleep, but wake for any stop request. */
void
etl_wait_ms(int64 ms)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);

	while (etl_pending_stop() == ETL_STOP_NONE)
	{
		long		secs;
		int			usecs;
		TimestampTz now = GetCurrentTimestamp();

		if (now >= until)
			break;
		TimestampDifference(now, until, &secs, &usecs);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(secs * 1000L + usecs / 1000 + 1, 100L), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

static int64
ms_since(TimestampTz start)
{
	long		secs;
	int			usecs;

	TimestampDifference(start, GetCurrentTimestamp(), &secs, &usecs);
	return (int64) secs * 1000 + usecs / 1000;
}

/* Transactions of the worker: SPI needs an active snapshot to run in. */
static void
begin_transaction(void)
{
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
}

static void
commit_transaction(void)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/* ---------- launch hand-shake ---------- */

static void
notify_caller(EtlLaunchShared *shared)
{
	PGPROC	   *proc = BackendPidGetProc(shared->caller_pid);

	if (proc != NULL)
		SetLatch(&proc->procLatch);
}

static void
report_refusal(EtlLaunchShared *shared, ErrorData *edata)
{
	SpinLockAcquire(&shared->mutex);
	shared->sqlerrcode = edata->sqlerrcode;
	strlcpy(shared->message, edata->message ? edata->message : "etl_exec worker failed",
			ETL_LAUNCH_MESSAGE_LEN);
	strlcpy(shared->detail, edata->detail ? edata->detail : "", ETL_LAUNCH_MESSAGE_LEN);
	strlcpy(shared->hint, edata->hint ? edata->hint : "", ETL_LAUNCH_MESSAGE_LEN);
	shared->state = ETL_LAUNCH_REFUSED;
	SpinLockRelease(&shared->mutex);
	notify_caller(shared);
}

/* ---------- the page loop ---------- */

#define RATE_WINDOW 10

typedef struct RunState
{
	int64		run_id;
	EtlRunRow	row;
	EtlJob		job;
	EtlRunSettings settings;
	EtlLoader  *loader;
	EtlCheckpoint cp;			/* covers every page loaded so far */
	int64		pages_fetched;
	int64		expected_total;
	int			retries;
	/* this segment's commits while pages flowed, and the time they took */
	int64		commits;
	int64		commit_us;
	EtlCheckpoint next;			/* after the page being processed */
	bool		last_page;		/* that page was the last */
	char	   *dry_run_report;
	MemoryContext run_cxt;
	/* records loaded at the last RATE_WINDOW pages, for rows/s */
	TimestampTz rate_at[RATE_WINDOW];
	int64		rate_records[RATE_WINDOW];
	int			rate_pages;
	bool		from_stored_link;	/* next request uses a checkpointed link/cursor */
	/* hashes of the next links / cursors this segment followed: no cycles */
	uint64	   *seen_links;
	int			nseen_links;
	/* the next page, fetched and being scanned while this one loads */
	EtlScanResult scan_results[2];
	int			scan_slot;		/* the result the next page goes to */
	bool		prefetched;
	ErrorData  *deferred_error; /* the prefetch's; shows after this page */
	char	   *prefetch_url;
	EtlHttpResponse prefetch_resp;
} RunState;

#define MAX_SEEN_LINKS 100000

/* A next link or cursor seen before in this segment is a cycle: error. */
static void
check_link_cycle(RunState *st, const char *link, bool is_cursor)
{
	uint64		h;

	if (link == NULL)
		return;
	h = hash_bytes_extended((const unsigned char *) link, strlen(link), 0);
	for (int i = 0; i < st->nseen_links; i++)
		if (st->seen_links[i] == h)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the API returned a %s it already gave earlier in this run: %s",
							is_cursor ? "cursor" : "next link", is_cursor ? link : etl_url_redact(link)),
					 errdetail("Following it would loop; page %d.", st->cp.page_index + 1),
					 errhint("Check the job's next_path, or report the API's paging bug.")));
	if (st->seen_links == NULL)
		st->seen_links = MemoryContextAlloc(st->run_cxt, sizeof(uint64) * MAX_SEEN_LINKS);
	if (st->nseen_links < MAX_SEEN_LINKS)
		st->seen_links[st->nseen_links++] = h;
}

/* rows per second over the recent pages */
static double
recent_rate(RunState *st)
{
	int			newest = (st->rate_pages - 1) % RATE_WINDOW;
	int			oldest = st->rate_pages > RATE_WINDOW ? st->rate_pages % RATE_WINDOW : 0;
	long		secs;
	int			usecs;
	double		elapsed;

	st->rate_at[newest] = GetCurrentTimestamp();
	st->rate_records[newest] = st->cp.total_records;
	if (newest == oldest)
		return 0;
	TimestampDifference(st->rate_at[oldest], st->rate_at[newest], &secs, &usecs);
	elapsed = secs + usecs / 1000000.0;
	return elapsed > 0 ? (st->rate_records[newest] - st->rate_records[oldest]) / elapsed : 0;
}

static void
stored_link_error_context(void *arg)
{
	RunState   *st = (RunState *) arg;

	if (geterrcode() != ETL_ERRCODE_HTTP_REFUSED)
		return;					/* only the API's own refusal is about the link */

	errcontext("the request continued from the %s stored in the run's checkpoint, and the API "
			   "rejected it (next links and cursors may expire); to start over, run "
			   "SELECT etl_execute_job(%d)",
			   st->cp.cursor ? "cursor" : "next link", st->job.job_id);
}

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
check_records_present(RunState *st, Jsonb *body)
{
	const char *path = st->job.records_path;
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

/*
 * Fetch, parse and load the page that follows st->cp.  On success *next is
 * the checkpoint after it.  Returns a stop reason when the run must stop
 * before the page was complete (the page is then not loaded).
 */
/* Keep what the next iteration needs of a prefetched response. */
static void
keep_prefetch(RunState *st, const char *url, const EtlHttpResponse *resp)
{
	MemoryContext old = MemoryContextSwitchTo(st->run_cxt);
	ListCell   *lc;

	/* the previous one's copies: the run's memory must not grow with pages */
	if (st->prefetch_url)
		pfree(st->prefetch_url);
	if (st->prefetch_resp.effective_url)
		pfree(st->prefetch_resp.effective_url);
	list_free_deep(st->prefetch_resp.link_headers);
	st->prefetch_url = pstrdup(url);
	st->prefetch_resp = *resp;
	st->prefetch_resp.effective_url = resp->effective_url ? pstrdup(resp->effective_url) : NULL;
	st->prefetch_resp.link_headers = NIL;
	foreach(lc, resp->link_headers)
		st->prefetch_resp.link_headers = lappend(st->prefetch_resp.link_headers,
												 pstrdup((char *) lfirst(lc)));
	MemoryContextSwitchTo(old);
}

/*
 * In a PG_CATCH block: the error being handled, copied into the run's
 * memory, and the error state cleared, ready for the caller to abort or
 * roll back what failed.
 */
static ErrorData *
take_error(RunState *st)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(st->run_cxt);
	edata = CopyErrorData();
	FlushErrorState();
	/* a secret echoed back by the API goes no further */
	etl_redact_error(edata);
	return edata;
}

/*
 * GET the page after this one, in a subtransaction of its own: if that
 * fails, this page still loads and commits, and the run fails after it
 * (st->deferred_error) instead of losing it.
 */
static EtlStopReason
prefetch_get(RunState *st, const char *url, EtlHttpResponse *resp)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile EtlStopReason stop = ETL_STOP_NONE;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		stop = etl_http_get(url, etl_request_headers, &st->job, resp);
		st->retries += resp->retries;
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		st->deferred_error = take_error(st);
		RollbackAndReleaseCurrentSubTransaction();
		stop = ETL_STOP_CANCELLED;	/* anything but NONE: no prefetch */
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return stop;
}

/* Wait for a background scan still running (after an error or a stop). */
static void
drain_prefetch(RunState *st)
{
	if (!st->prefetched)
		return;
	(void) etl_scan_finish();
	etl_scan_result_free(&st->scan_results[st->scan_slot]);
	st->prefetched = false;
}

/*
 * Fetch, parse and load the page that follows st->cp.  On success *next is
 * the checkpoint after it.  Returns a stop reason when the run must stop
 * before the page was complete (the page is then not loaded).
 *
 * When the page reader can read the job's pages, the next page is fetched
 * before this one is loaded, and scanned in the background while this one
 * goes through COPY: the two cores each do half the work.
 */
static EtlStopReason
process_page(RunState *st, EtlCheckpoint *next, bool *last_page, bool dry_run)
{
	const EtlScanSpec *spec = dry_run ? NULL : etl_loader_scan_spec(st->loader);
	char	   *url;
	EtlHttpResponse resp;
	EtlStopReason stop;
	Jsonb	   *body;
	JsonbValue	doc;
	JsonbValue *records;
	EtlPageOutcome outcome;
	EtlPageFacts facts;
	ErrorContextCallback errcb;
	EtlScanResult *scanned = NULL;
	bool		scanned_ok = false;

	if (st->prefetched)
	{
		/* fetched, and scanned in the background, while the last page loaded */
		url = st->prefetch_url;
		resp = st->prefetch_resp;
		scanned_ok = etl_scan_finish();
		scanned = &st->scan_results[st->scan_slot];
		st->prefetched = false;
	}
	else
	{
		url = etl_pagination_request_url(&st->job, &st->cp);
		if (st->from_stored_link)
		{
			errcb.callback = stored_link_error_context;
			errcb.arg = st;
			errcb.previous = error_context_stack;
			error_context_stack = &errcb;
		}
		stop = etl_http_get(url, etl_request_headers, &st->job, &resp);
		if (st->from_stored_link)
			error_context_stack = errcb.previous;
		st->retries += resp.retries;
		if (stop != ETL_STOP_NONE)
			return stop;
		if (spec)
		{
			scanned = &st->scan_results[st->scan_slot];
			scanned_ok = etl_scan_page(spec, resp.body, resp.body_len, scanned);
		}
	}
	memset(&facts, 0, sizeof(facts));
	if (scanned)
		etl_loader_note_scan(st->loader, scanned_ok);
	/* unreadable, or nothing at records_path on the first page: jsonb explains */
	if (scanned && (!scanned_ok || (scanned->nrec == 0 && !scanned->container_seen && st->cp.page_index == 0)))
	{
		etl_scan_result_free(scanned);
		scanned = NULL;
	}

	if (scanned)
	{
		EtlScanResult *this_page = scanned;

		facts.record_count = this_page->nrec;
		facts.total_text = this_page->total_text ? pstrdup(this_page->total_text) : NULL;
		facts.next_text = this_page->next_text ? pstrdup(this_page->next_text) : NULL;
		etl_pagination_advance(&st->job, &st->cp, url, &facts, &resp, &outcome);
		check_link_cycle(st, outcome.next_url, false);
		check_link_cycle(st, outcome.cursor, true);

		if (!outcome.last_page)
		{
			/* fetch the next page now; scan it while this one loads */
			EtlCheckpoint after = st->cp;
			char	   *next_url;
			EtlHttpResponse next_resp;

			after.skip += facts.record_count;
			after.page_index += 1;
			after.next_url = outcome.next_url;
			after.cursor = outcome.cursor;
			next_url = etl_pagination_request_url(&st->job, &after);
			stop = prefetch_get(st, next_url, &next_resp);
			if (stop == ETL_STOP_NONE)
			{
				int			other = 1 - st->scan_slot;

				/* (no thread to be had: the next turn fetches it again) */
				if (etl_scan_start(spec, next_resp.body, next_resp.body_len, &st->scan_results[other]))
				{
					keep_prefetch(st, next_url, &next_resp);
					st->scan_slot = other;
					st->prefetched = true;
				}
			}
			/* else the stop shows at the next turn: this page still loads */
		}

		etl_loader_copy_scanned(st->loader, this_page, st->cp.page_index);
		etl_scan_result_free(this_page);
	}
	else
	{
		char	   *redacted = etl_url_redact(url);	/* for messages only */

		errcb.callback = parse_error_context;
		errcb.arg = redacted;
		errcb.previous = error_context_stack;
		error_context_stack = &errcb;
		/* jsonb_in and text do not check the encoding; COPY does */
		(void) pg_verify_mbstr(GetDatabaseEncoding(), resp.body, resp.body_len, false);
		body = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(resp.body)));
		error_context_stack = errcb.previous;

		etl_jsonb_as_value(body, &doc);
		facts.record_count = etl_path_query(st->job.records, &doc, &records);
		if (facts.record_count == 0 && st->cp.page_index == 0)
			check_records_present(st, body);
		if (st->job.total)
			facts.total_text = etl_jsonb_value_text(etl_path_first(st->job.total, &doc));
		if (st->job.next)
			facts.next_text = etl_jsonb_value_text(etl_path_first(st->job.next, &doc));

		etl_loader_load_page(st->loader, records, facts.record_count, st->cp.page_index, dry_run);
		if (dry_run)
		{
			MemoryContext old = MemoryContextSwitchTo(st->run_cxt);
			StringInfoData report;

			initStringInfo(&report);
			appendStringInfo(&report, "{\"records\": %d, \"url\": ", facts.record_count);
			escape_json(&report, redacted);
			appendStringInfo(&report, ", %s}", etl_loader_describe_mapping(st->loader, records,
																			 facts.record_count));
			st->dry_run_report = report.data;
			MemoryContextSwitchTo(old);
		}
		etl_pagination_advance(&st->job, &st->cp, url, &facts, &resp, &outcome);
		check_link_cycle(st, outcome.next_url, false);
		check_link_cycle(st, outcome.cursor, true);
	}

	if (outcome.last_page && !dry_run)
		etl_loader_finish(st->loader);
	*next = st->cp;
	next->skip += facts.record_count;
	next->page_index += 1;
	next->total_records += dry_run ? 0 : facts.record_count;
	next->next_url = outcome.next_url;
	next->cursor = outcome.cursor;
	if (outcome.expected_total >= 0)
		st->expected_total = outcome.expected_total;
	*last_page = outcome.last_page;
	return ETL_STOP_NONE;
}

static void
adopt_checkpoint(RunState *st, const EtlCheckpoint *next)
{
	MemoryContext old = MemoryContextSwitchTo(st->run_cxt);

	char	   *next_url = next->next_url ? pstrdup(next->next_url) : NULL;
	char	   *cursor = next->cursor ? pstrdup(next->cursor) : NULL;

	/* the run's memory must not grow with its pages */
	if (st->cp.next_url)
		pfree(st->cp.next_url);
	if (st->cp.cursor)
		pfree(st->cp.cursor);
	st->cp.skip = next->skip;
	st->cp.page_index = next->page_index;
	st->cp.total_records = next->total_records;
	st->cp.next_url = next_url;
	st->cp.cursor = cursor;
	MemoryContextSwitchTo(old);
}

static char *
format_error(ErrorData *edata)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, edata->message ? edata->message : "unknown error");
	if (edata->detail)
		appendStringInfo(&buf, "\nDETAIL: %s", edata->detail);
	if (edata->hint)
		appendStringInfo(&buf, "\nHINT: %s", edata->hint);
	if (edata->context)
		appendStringInfo(&buf, "\nCONTEXT: %s", edata->context);
	return buf.data;
}

static EtlStopReason
stop_for_error(ErrorData *edata)
{
	if (got_sigterm)
		return ETL_STOP_INTERRUPTED;
	/* lock_timeout is set to the time left: its expiry is the deadline's */
	if (run_deadline != 0 && etl_ms_until_deadline() <= 100 &&
		(edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		 edata->sqlerrcode == ERRCODE_QUERY_CANCELED))
		return ETL_STOP_TIMED_OUT;
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
		return ETL_STOP_CANCELLED;
	return ETL_STOP_NONE;
}

/*
 * How an error ends the run: a stop (timeout, cancel, terminate), or else a
 * failure whose message and SQLSTATE are kept for the run row.
 */
static EtlStopReason
end_for_error(ErrorData *edata, char *volatile *message, char *volatile *sqlstate)
{
	EtlStopReason stop = stop_for_error(edata);

	if (stop == ETL_STOP_NONE)
	{
		*message = format_error(edata);
		*sqlstate = pstrdup(unpack_sql_state(edata->sqlerrcode));
	}
	QueryCancelPending = false;
	return stop;
}

static const char *
stop_status(EtlStopReason stop)
{
	switch (stop)
	{
		case ETL_STOP_DONE:
			return "succeeded";
		case ETL_STOP_TIMED_OUT:
			return "timed_out";
		case ETL_STOP_CANCELLED:
			return "cancelled";
		case ETL_STOP_INTERRUPTED:
			return "interrupted";
		default:
			return "failed";
	}
}

static char *
stop_message(RunState *st, EtlStopReason stop, int64 segment_ms)
{
	const char *what;

	switch (stop)
	{
		case ETL_STOP_TIMED_OUT:
			what = psprintf("timed out after its timeout of %d s", st->row.timeout_seconds);
			break;
		case ETL_STOP_CANCELLED:
			what = "was cancelled";
			break;
		case ETL_STOP_INTERRUPTED:
			what = "was interrupted (its worker was terminated or the server shut down)";
			break;
		default:
			return NULL;
	}
	return psprintf("etl_exec run " INT64_FORMAT " %s; " INT64_FORMAT " records on %d pages are loaded "
					"and checkpointed (this segment ran " INT64_FORMAT " ms). "
					"Resume it with: SELECT etl_resume_run(" INT64_FORMAT ");",
					st->run_id, what, st->cp.total_records, st->cp.page_index,
					segment_ms, st->run_id);
}

static void
apply_job_overrides(RunState *st)
{
	st->settings = st->row.settings;
	if (st->job.checkpoint_interval_seconds >= 0)
		st->settings.checkpoint_interval_seconds = st->job.checkpoint_interval_seconds;
	if (st->job.max_retries >= 0)
		st->settings.max_retries = st->job.max_retries;
	if (st->job.request_timeout_ms > 0)
		st->settings.request_timeout_ms = st->job.request_timeout_ms;
}

/*
 * Commit the pages loaded since the last commit with their checkpoint.
 * NULL on success; else the error (the pages are lost, the checkpoint
 * before them stands) and a new transaction is open.
 */
static char *
commit_pages(RunState *st)
{
	char	   *volatile failure = NULL;
	TimestampTz start = GetCurrentTimestamp();

	HOLD_CANCEL_INTERRUPTS();
	PG_TRY();
	{
		etl_save_checkpoint(st->run_id, &st->cp, st->pages_fetched, st->expected_total, st->retries);
		commit_transaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata = take_error(st);

		AbortCurrentTransaction();
		failure = format_error(edata);
	}
	PG_END_TRY();
	begin_transaction();
	MemoryContextSwitchTo(st->run_cxt);
	RESUME_CANCEL_INTERRUPTS();
	if (failure == NULL)
	{
		st->commits++;
		st->commit_us += GetCurrentTimestamp() - start;
	}
	return failure;
}

/*
 * Run the claimed run to its end (or stop) and record how it ended.
 */
static void
run_pages(int64 run_id)
{
	RunState	st;
	MemoryContext page_cxt;
	TimestampTz segment_start = GetCurrentTimestamp();
	TimestampTz last_commit = segment_start;
	volatile EtlStopReason stop = ETL_STOP_NONE;
	char	   *volatile error_message = NULL;
	char	   *volatile error_sqlstate = NULL;
	bool		had_checkpoint;
	volatile bool setup_done = false;
	bool		lost_uncommitted = false;

	memset(&st, 0, sizeof(st));
	st.run_id = run_id;
	st.expected_total = -1;
	st.run_cxt = AllocSetContextCreate(TopMemoryContext, "etl_exec run", ALLOCSET_DEFAULT_SIZES);
	page_cxt = AllocSetContextCreate(st.run_cxt, "etl_exec page", ALLOCSET_DEFAULT_SIZES);

	begin_transaction();
	MemoryContextSwitchTo(st.run_cxt);
	etl_read_run(run_id, &st.row);
	had_checkpoint = st.row.has_checkpoint;
	st.cp = st.row.checkpoint;
	st.pages_fetched = st.row.pages_fetched;
	st.retries = st.row.retries;
	st.from_stored_link = st.cp.next_url != NULL || st.cp.cursor != NULL;
	run_deadline = TimestampTzPlusMilliseconds(segment_start,
											   (int64) st.row.timeout_seconds * 1000);
	/* no lock wait -- on the target, say -- may outlast the run's deadline */
	etl_cap_lock_waits();

	PG_TRY();
	{
		etl_read_job(st.row.job_id, st.row.parameters, &st.job);
		/* the table the run started with, whatever the job says now */
		if (st.row.target)
			st.job.target_table = st.row.target;
		apply_job_overrides(&st);
		st.loader = etl_loader_create(&st.job, st.row.role_oid, st.run_cxt, run_id, st.row.dry_run,
									  st.row.staging_table, st.cp.page_index > 0);
		etl_http_init(&st.settings);
		setup_done = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata = take_error(&st);

		AbortCurrentTransaction();
		stop = end_for_error(edata, &error_message, &error_sqlstate);
		begin_transaction();
		MemoryContextSwitchTo(st.run_cxt);
	}
	PG_END_TRY();

	while (setup_done && stop == ETL_STOP_NONE)
	{
		volatile bool failed = false;
		ResourceOwner owner = CurrentResourceOwner;

		if ((stop = etl_pending_stop()) != ETL_STOP_NONE)
			break;

		MemoryContextReset(page_cxt);
		BeginInternalSubTransaction(NULL);
		MemoryContextSwitchTo(page_cxt);
		PG_TRY();
		{
			stop = process_page(&st, &st.next, &st.last_page, st.row.dry_run);
			if (stop == ETL_STOP_NONE)
				ReleaseCurrentSubTransaction();
			else
				RollbackAndReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(st.run_cxt);
			CurrentResourceOwner = owner;
		}
		PG_CATCH();
		{
			ErrorData  *edata = take_error(&st);

			RollbackAndReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(st.run_cxt);
			CurrentResourceOwner = owner;
			drain_prefetch(&st);
			stop = end_for_error(edata, &error_message, &error_sqlstate);
			failed = (stop == ETL_STOP_NONE);
		}
		PG_END_TRY();

		if (failed || stop != ETL_STOP_NONE)
			break;

		st.pages_fetched++;
		st.from_stored_link = false;
		adopt_checkpoint(&st, &st.next);
		st.rate_pages++;
		if (st.deferred_error)
		{
			/* fetching the next page failed: this one is in; now stop */
			stop = end_for_error(st.deferred_error, &error_message, &error_sqlstate);
			break;
		}
		etl_report_activity(run_id, &st.cp, st.pages_fetched, recent_rate(&st),
							st.expected_total, st.retries);
		if (st.last_page || st.row.dry_run)
		{
			stop = ETL_STOP_DONE;
			break;
		}
		if (ms_since(last_commit) >= (int64) st.settings.checkpoint_interval_seconds * 1000)
		{
			char	   *commit_error = commit_pages(&st);

			if (commit_error)
			{
				error_message = commit_error;
				error_sqlstate = pstrdup(unpack_sql_state(ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION));
				lost_uncommitted = true;
				break;
			}
			last_commit = GetCurrentTimestamp();
		}
	}

	drain_prefetch(&st);			/* a page fetched but not to be loaded now */
	etl_http_cleanup();
	MemoryContextSwitchTo(st.run_cxt);

	/*
	 * The last transaction: the pages loaded since the last commit, their
	 * checkpoint, and the run's end.  A failure keeps the checkpoint of the
	 * pages that did load, so the run stays resumable from there.
	 */
	HOLD_CANCEL_INTERRUPTS();
	QueryCancelPending = false;
	SetConfigOption("lock_timeout", "10000", PGC_SUSET, PGC_S_SESSION);
	PG_TRY();
	{
		if (st.row.dry_run || lost_uncommitted)
			;
		else if (stop != ETL_STOP_NONE || st.cp.page_index > 0 || had_checkpoint)
			etl_save_checkpoint(run_id, &st.cp, st.pages_fetched, st.expected_total, st.retries);
		if (error_message == NULL)
			error_message = stop_message(&st, stop, ms_since(segment_start));
		etl_finish_run(run_id, stop_status(stop), st.pages_fetched, ms_since(segment_start),
					   st.commits, st.commit_us, error_message, error_sqlstate,
					   st.dry_run_report);
		commit_transaction();
	}
	PG_CATCH();
	{
		/*
		 * The last commit itself failed (a deferred constraint, say): its
		 * pages are lost, the checkpoint before them stands.  Say why.
		 */
		ErrorData  *edata = take_error(&st);

		AbortCurrentTransaction();
		begin_transaction();
		stop = ETL_STOP_NONE;
		error_message = format_error(edata);
		etl_finish_run(run_id, "failed", st.pages_fetched, ms_since(segment_start),
					   st.commits, st.commit_us, error_message, unpack_sql_state(edata->sqlerrcode), NULL);
		commit_transaction();
	}
	PG_END_TRY();
	RESUME_CANCEL_INTERRUPTS();

	if (stop == ETL_STOP_DONE)
		ereport(LOG,
				(errmsg("etl_exec run " INT64_FORMAT " succeeded: " INT64_FORMAT " records, " INT64_FORMAT " pages",
						run_id, st.cp.total_records, st.pages_fetched)));
	else
		/* why, here too: the run row may be gone (deleted mid-run, say) */
		ereport(LOG,
				(errmsg("etl_exec run " INT64_FORMAT " ended %s", run_id, stop_status(stop)),
				 error_message ? errdetail("%s", error_message) : 0));
}

void
etl_worker_main(Datum main_arg)
{
	dsm_segment *seg;
	EtlLaunchShared *shared;
	EtlLaunchShared request;
	char	   *settings_json;
	char	   *parameters_json;
	int64		run_id = 0;
	char		appname[64];

	pqsignal(SIGTERM, etl_worker_sigterm);
	BackgroundWorkerUnblockSignals();

	/*
	 * Each page allocates and frees the same few large blocks (the body, its
	 * jsonb, the column arrays).  Keep them in the heap instead of mapping
	 * and unmapping them per page: that costs page faults, not memory.
	 */
	mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
	mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);

	CurrentResourceOwner = ResourceOwnerCreate(NULL, "etl_exec worker");
	seg = dsm_attach(DatumGetUInt32(main_arg));
	if (seg == NULL)
	{
		/* the caller gave up (cancelled) before we started: nothing to do */
		ereport(LOG, (errmsg("etl_exec worker: launch request is gone; exiting")));
		proc_exit(0);
	}
	dsm_pin_mapping(seg);
	shared = dsm_segment_address(seg);
	memcpy(&request, shared, offsetof(EtlLaunchShared, payload));
	settings_json = MemoryContextStrdup(TopMemoryContext, shared->payload);
	parameters_json = MemoryContextStrdup(TopMemoryContext,
										  shared->payload + shared->settings_len + 1);

	/*
	 * Connect as the bootstrap superuser: the run's own role may be NOLOGIN.
	 * Bookkeeping runs as the extension owner; the target is written as the
	 * run's role (loader.c).
	 */
	BackgroundWorkerInitializeConnectionByOid(request.database_oid, InvalidOid, 0);
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	/*
	 * The worker's own statements run as a superuser: they must not resolve
	 * names through a search_path a caller could plant objects in.  (The
	 * target table was resolved by the caller, with the caller's path.)
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * The claim commits synchronously (once per segment): after a crash,
	 * resume_count must still count every resume that started.
	 */
	SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE);
	PG_TRY();
	{
		begin_transaction();
		if (request.mode == ETL_LAUNCH_NEW)
			run_id = etl_create_run(&request, settings_json, parameters_json);
		else
		{
			run_id = request.run_id;
			etl_claim_run(&request, settings_json);
		}
		commit_transaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(TopMemoryContext);
		edata = CopyErrorData();
		report_refusal(shared, edata);
		PG_RE_THROW();
	}
	PG_END_TRY();

	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	SpinLockAcquire(&shared->mutex);
	shared->run_id = run_id;
	shared->state = ETL_LAUNCH_STARTED;
	SpinLockRelease(&shared->mutex);
	notify_caller(shared);
	dsm_detach(seg);

	snprintf(appname, sizeof(appname), "etl_exec run " INT64_FORMAT, run_id);
	SetConfigOption("application_name", appname, PGC_USERSET, PGC_S_SESSION);
	pgstat_report_appname(appname);

	run_pages(run_id);
	proc_exit(0);
}
