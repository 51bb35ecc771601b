/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The run worker: its life from the launch hand-shake to the run's end,
 *	  and the loop that takes the run page by page.
 *
 * Lifecycle: attach the launch segment, connect, take a worker slot (at
 * most etl_exec.max_workers runs run at once), create or claim the run
 * (taking the run's lock, which this process holds while it runs it) --
 * or, with no slot free, leave it queued -- report the run_id to the
 * caller, then page through the API.  Then the worker starts the queued
 * runs of its database, oldest first, until none is left.  Each page
 * is fetched, read and loaded inside a subtransaction (page.c); its
 * checkpoint moves only when the page is in.  Rows and checkpoint commit
 * together at least every checkpoint interval and at every stop, so after
 * any crash the target holds exactly the records the committed checkpoint
 * covers.
 *
 * Stops (run_clock.c): SIGINT (pg_cancel_backend, etl_cancel_run) ends
 * the run "cancelled"; SIGTERM (pg_terminate_backend, server shutdown)
 * ends it "interrupted"; the deadline "timed_out"; all keep the last page
 * that was fully loaded.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <malloc.h>
#include <signal.h>

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "etl_exec.h"

#define RATE_WINDOW 10

typedef struct RunState
{
	int64		run_id;
	EtlRunRow	row;
	EtlJob		job;
	EtlRunSettings settings;
	EtlLoader  *loader;
	EtlPager   *pager;
	EtlCheckpoint cp;			/* covers every page loaded so far */
	bool		had_checkpoint; /* when the segment started */
	int64		pages_fetched;
	int64		expected_total;
	/* this segment's commits while pages flowed, and the time they took */
	int64		commits;
	int64		commit_us;
	TimestampTz segment_start;
	MemoryContext run_cxt;
	/* records loaded at the last RATE_WINDOW pages, for rows/s */
	TimestampTz rate_at[RATE_WINDOW];
	int64		rate_records[RATE_WINDOW];
	int			rate_pages;
	/* how the segment ends */
	EtlStopReason stop;
	char	   *error_message;	/* a failure's (or a stop's, at the end) */
	char	   *error_sqlstate;
	bool		lost_uncommitted;	/* a commit failed: its pages are lost */
} RunState;

/*
 * Transactions of the worker: SPI needs an active snapshot to run in, and
 * now() the time the transaction starts (a worker has no statements to
 * take it from).
 */
static void
begin_transaction(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
}

static void
commit_transaction(void)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/* ---------- how a run ends ---------- */

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

/*
 * How an error ends the run: a stop (timeout, cancel, terminate), or else a
 * failure whose message and SQLSTATE are kept for the run row.
 */
static void
end_for_error(RunState *st, ErrorData *edata)
{
	st->stop = etl_stop_for_error(edata->sqlerrcode);
	if (st->stop == ETL_STOP_NONE)
	{
		st->error_message = format_error(edata);
		st->error_sqlstate = pstrdup(unpack_sql_state(edata->sqlerrcode));
	}
	QueryCancelPending = false;
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
stop_message(RunState *st, int64 segment_ms)
{
	const char *what;
	const char *host;
	TimestampTz until;

	if (st->stop == ETL_STOP_TIMED_OUT && etl_rate_limit_stopped(&host, &until))
	{
		if (st->row.dry_run)	/* (a dry run loads nothing and is not resumed) */
			return psprintf("etl_exec dry run " INT64_FORMAT " stopped before its timeout of %d s: %s "
							"accepts requests again at %s, after the run's deadline. Start a new one then.",
							st->run_id, st->row.timeout_seconds, host, timestamptz_to_str(until));
		return psprintf("etl_exec run " INT64_FORMAT " stopped before its timeout of %d s: %s accepts "
						"requests again at %s, after the run's deadline; " INT64_FORMAT " records on %d "
						"pages are loaded and checkpointed (this segment ran " INT64_FORMAT " ms). "
						"Resume it then with: SELECT etl_resume_run(" INT64_FORMAT "); "
						"etl_resume_pending() waits until then.",
						st->run_id, st->row.timeout_seconds, host, timestamptz_to_str(until),
						st->cp.total_records, st->cp.page_index, segment_ms, st->run_id);
	}

	switch (st->stop)
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
	if (st->row.dry_run)		/* (a dry run loads nothing and is not resumed) */
		return psprintf("etl_exec dry run " INT64_FORMAT " %s. Start a new one to go on.",
						st->run_id, what);
	return psprintf("etl_exec run " INT64_FORMAT " %s; " INT64_FORMAT " records on %d pages are loaded "
					"and checkpointed (this segment ran " INT64_FORMAT " ms). "
					"Resume it with: SELECT etl_resume_run(" INT64_FORMAT ");",
					st->run_id, what, st->cp.total_records, st->cp.page_index,
					segment_ms, st->run_id);
}

/* ---------- the page loop ---------- */

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

/* The page is in: its checkpoint becomes the run's (in run memory). */
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
	st->cp.sequential_from_page = next->sequential_from_page;
	st->cp.partition_index = next->partition_index;
	st->cp.rejected = next->rejected;
	MemoryContextSwitchTo(old);
}

/* The run's settings, with the job's overrides. */
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
	if (st->job.concurrency > 0)
		st->settings.concurrency = st->job.concurrency;
	/* neither the job's writer nor the caller's SET goes past the superuser's ceiling */
	st->settings.concurrency = Min(st->settings.concurrency, st->settings.max_concurrency);
}

/*
 * Commit the pages loaded since the last commit with their checkpoint.
 * NULL on success; else the error, its SQLSTATE in st->error_sqlstate (the
 * pages are lost, the checkpoint before them stands), and a new
 * transaction is open.
 */
static char *
commit_pages(RunState *st)
{
	char	   *volatile failure = NULL;
	TimestampTz start = GetCurrentTimestamp();

	HOLD_CANCEL_INTERRUPTS();
	PG_TRY();
	{
		/* rows a loader still holds go in with the checkpoint that covers them */
		etl_loader_flush(st->loader);
		etl_save_checkpoint(st->run_id, &st->cp, st->pages_fetched, st->expected_total,
							etl_pager_retries(st->pager));
		/* a refresh token the token endpoint rotated to, for the next run */
		etl_oauth_save_rotated();
		commit_transaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata = etl_catch_error(st->run_cxt);

		AbortCurrentTransaction();
		failure = format_error(edata);
		st->error_sqlstate = pstrdup(unpack_sql_state(edata->sqlerrcode));
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
 * Read the claimed run and its job, and set up its loader, HTTP client and
 * pager (in a transaction now open).  False when that failed: the run
 * ends as the error says.
 */
static bool
start_run(RunState *st)
{
	volatile bool setup_done = false;

	begin_transaction();
	MemoryContextSwitchTo(st->run_cxt);
	/*
	 * A cancel may come as soon as the claim committed: it must end this run
	 * "cancelled" (the page loop sees it), not break off reading it.
	 */
	HOLD_CANCEL_INTERRUPTS();
	etl_read_run(st->run_id, &st->row);
	RESUME_CANCEL_INTERRUPTS();
	st->had_checkpoint = st->row.has_checkpoint;
	st->cp = st->row.checkpoint;
	st->pages_fetched = st->row.pages_fetched;
	st->expected_total = st->row.expected_total;
	etl_set_deadline(TimestampTzPlusMilliseconds(st->segment_start,
												 (int64) st->row.timeout_seconds * 1000));
	/* no lock wait -- on the target, say -- may outlast the run's deadline */
	etl_cap_lock_waits();

	PG_TRY();
	{
		Jsonb	   *url_parameters = st->row.parameters;

		/* the URL of a run with partitions takes its partition's too */
		if (st->row.partitions_total > 0)
			url_parameters = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
																JsonbPGetDatum(st->row.parameters),
																JsonbPGetDatum(etl_read_partition(st->run_id,
																								  st->cp.partition_index))));
		else if (st->row.partitions_total == 0)
			url_parameters = NULL;
		etl_read_job(st->row.job_id, url_parameters, &st->job);
		/* the table the run started with, whatever the job says now */
		if (st->row.target)
			st->job.target_table = st->row.target;
		apply_job_overrides(st);
		/* a sample run loads nothing: no loader, no target */
		if (st->row.sample_pages == 0)
			st->loader = etl_loader_create(&st->job, st->row.role_oid, st->run_cxt, st->run_id,
										   st->row.dry_run, st->row.staging_table,
										   st->cp.page_index > 0);

		/*
		 * Rows that other servers commit after us (Citus: COMMIT PREPARED
		 * once our commit is done) must never outlive a commit of ours
		 * that a crash loses: such runs commit synchronously.
		 *
		 * And they go to each Citus node over one connection: Citus would
		 * otherwise open one per shard (32 of them for 32 shards on two
		 * nodes), and then send every savepoint -- one a page, around the
		 * prefetch -- to each of them, and prepare and commit on each.  The
		 * rows reach the same shards either way (Citus buffers those of
		 * the shards a connection is not copying to yet).  A setting of
		 * this session only, which the run's role could set itself.
		 */
		if (st->loader && etl_loader_commits_remotely(st->loader))
		{
			SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE);
			SetConfigOption("citus.max_adaptive_executor_pool_size", "1", PGC_USERSET, PGC_S_SESSION);
		}
		/* the limits of the hosts it asks (dw_etl_hosts), shared by all runs */
		etl_host_budget_load();
		etl_http_init(&st->settings);
		st->pager = etl_pager_create(&st->job, st->loader, st->row.dry_run,
									 st->cp.next_url != NULL || st->cp.cursor != NULL,
									 st->row.retries, st->settings.concurrency,
									 st->expected_total, st->run_id, st->row.parameters,
									 st->row.partitions_total, st->run_cxt);
		if (st->row.sample_pages > 0)
			etl_pager_sample(st->pager);
		setup_done = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata = etl_catch_error(st->run_cxt);

		AbortCurrentTransaction();
		end_for_error(st, edata);
		begin_transaction();
		MemoryContextSwitchTo(st->run_cxt);
	}
	PG_END_TRY();
	return setup_done;
}

/*
 * Process one page in a subtransaction of its own (rolled back, with its
 * rows, when it fails or the run must stop first).  False when the run
 * ends here (st->stop, or a failure in st->error_message).
 */
typedef struct OnePage
{
	RunState   *st;
	EtlPageDone *done;
} OnePage;

static bool
one_page_step(void *arg)
{
	OnePage    *page = (OnePage *) arg;

	page->st->stop = etl_pager_process(page->st->pager, &page->st->cp, page->done);
	return page->st->stop == ETL_STOP_NONE;
}

static bool
run_one_page(RunState *st, MemoryContext page_cxt, EtlPageDone *done)
{
	OnePage		page = {st, done};
	ErrorData  *failure;

	MemoryContextReset(page_cxt);
	MemoryContextSwitchTo(page_cxt);
	failure = etl_subxact_try(one_page_step, &page, st->run_cxt, NULL);
	MemoryContextSwitchTo(st->run_cxt);
	if (failure == NULL)
		return st->stop == ETL_STOP_NONE;
	etl_pager_drain(st->pager);
	end_for_error(st, failure);
	return false;
}

/*
 * Take the run page by page until it ends or must stop, committing rows
 * and checkpoint at least every checkpoint interval.
 */
static void
page_loop(RunState *st)
{
	MemoryContext page_cxt = AllocSetContextCreate(st->run_cxt, "etl_exec page",
												   ALLOCSET_DEFAULT_SIZES);
	TimestampTz last_commit = st->segment_start;

	if (st->row.partitions_total == 0)
	{
		/* the run froze no partition (the query found no row): nothing to ask */
		if (!st->row.dry_run)
			etl_loader_finish(st->loader);
		st->stop = ETL_STOP_DONE;
	}
	while (st->stop == ETL_STOP_NONE)
	{
		EtlPageDone done;
		ErrorData  *deferred;

		if ((st->stop = etl_pending_stop()) != ETL_STOP_NONE)
			break;
		if (!run_one_page(st, page_cxt, &done))
			break;

		st->pages_fetched++;
		adopt_checkpoint(st, &done.next);
		if (done.ignored_status != 0)
			etl_record_ignored_response(st->run_id, done.ignored_status);
		if (done.expected_total >= 0)
			st->expected_total = done.expected_total;
		st->rate_pages++;
		if ((deferred = etl_pager_deferred_error(st->pager)) != NULL)
		{
			/* fetching the next page failed: this one is in; now stop */
			end_for_error(st, deferred);
			break;
		}
		etl_report_activity(st->run_id, &st->cp, st->pages_fetched, recent_rate(st),
							st->expected_total, etl_pager_retries(st->pager));
		/* a dry run reads one page; a sample run its sample */
		if (done.last_page ||
			(st->row.dry_run && st->pages_fetched >= Max(st->row.sample_pages, 1)))
		{
			st->stop = ETL_STOP_DONE;
			break;
		}
		if (etl_ms_since(last_commit) >= (int64) st->settings.checkpoint_interval_seconds * 1000)
		{
			char	   *commit_error = commit_pages(st);

			if (commit_error)
			{
				st->error_message = commit_error;
				st->lost_uncommitted = true;
				break;
			}
			last_commit = GetCurrentTimestamp();
		}
	}
}

/*
 * The last transaction: the pages loaded since the last commit, their
 * checkpoint, and the run's end.  A failure keeps the checkpoint of the
 * pages that did load, so the run stays resumable from there.
 */
static void
finish_run(RunState *st)
{
	int			retries = st->pager ? etl_pager_retries(st->pager) : st->row.retries;
	const char *dry_run_report = st->pager ? etl_pager_dry_run_report(st->pager) : NULL;
	const char *rate_host;
	TimestampTz resume_after = 0;

	/* stopped because the API accepts requests only after the deadline? */
	if (st->stop != ETL_STOP_TIMED_OUT || !etl_rate_limit_stopped(&rate_host, &resume_after))
		resume_after = 0;

	HOLD_CANCEL_INTERRUPTS();
	QueryCancelPending = false;
	SetConfigOption("lock_timeout", "10000", PGC_SUSET, PGC_S_SESSION);
	PG_TRY();
	{
		if (st->row.dry_run || st->lost_uncommitted)
			;
		else if (st->stop != ETL_STOP_NONE || st->cp.page_index > 0 || st->had_checkpoint)
		{
			etl_loader_flush(st->loader);
			etl_save_checkpoint(st->run_id, &st->cp, st->pages_fetched, st->expected_total, retries);
		}
		if (st->error_message == NULL)
			st->error_message = stop_message(st, etl_ms_since(st->segment_start));
		etl_record_resume_after(st->run_id, resume_after);
		etl_finish_run(st->run_id, stop_status(st->stop), st->pages_fetched,
					   etl_ms_since(st->segment_start), st->commits, st->commit_us,
					   st->error_message, st->error_sqlstate, dry_run_report);
		etl_loader_end(st->loader);
		etl_oauth_save_rotated();
		commit_transaction();
	}
	PG_CATCH();
	{
		/*
		 * The last commit itself failed (a deferred constraint, say): its
		 * pages are lost, the checkpoint before them stands.  Say why.
		 */
		ErrorData  *edata = etl_catch_error(st->run_cxt);

		AbortCurrentTransaction();
		begin_transaction();
		st->stop = ETL_STOP_NONE;
		st->error_message = format_error(edata);
		etl_finish_run(st->run_id, "failed", st->pages_fetched, etl_ms_since(st->segment_start),
					   st->commits, st->commit_us, st->error_message,
					   unpack_sql_state(edata->sqlerrcode), NULL);
		etl_oauth_save_rotated();
		commit_transaction();
	}
	PG_END_TRY();
	RESUME_CANCEL_INTERRUPTS();
}

/*
 * Run the claimed run to its end (or stop) and record how it ended.
 */
static void
run_pages(int64 run_id)
{
	RunState	st;

	memset(&st, 0, sizeof(st));
	st.run_id = run_id;
	st.expected_total = -1;
	st.segment_start = GetCurrentTimestamp();
	st.run_cxt = AllocSetContextCreate(TopMemoryContext, "etl_exec run", ALLOCSET_DEFAULT_SIZES);
	etl_rate_limit_stop(NULL, 0);	/* (a run before in this process) */

	if (start_run(&st))
		page_loop(&st);

	if (st.pager)
		etl_pager_end(st.pager);	/* a page fetched but not to be loaded now */
	etl_http_cleanup();
	/* requests an error or a stop left counted in the hosts' budgets */
	etl_host_budget_release_all();
	MemoryContextSwitchTo(st.run_cxt);
	finish_run(&st);

	if (st.stop == ETL_STOP_DONE)
		ereport(LOG,
				(errmsg("etl_exec run " INT64_FORMAT " succeeded: " INT64_FORMAT " records, " INT64_FORMAT " pages",
						run_id, st.cp.total_records, st.pages_fetched)));
	else
		/* why, here too: the run row may be gone (deleted mid-run, say) */
		ereport(LOG,
				(errmsg("etl_exec run " INT64_FORMAT " ended %s", run_id, stop_status(st.stop)),
				 st.error_message ? errdetail("%s", st.error_message) : 0));
	/* the process may go on to another run */
	MemoryContextSwitchTo(TopMemoryContext);
	MemoryContextDelete(st.run_cxt);
}

/* ---------- the launch hand-shake ---------- */

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

static void
report_started(EtlLaunchShared *shared, int64 run_id)
{
	SpinLockAcquire(&shared->mutex);
	shared->run_id = run_id;
	shared->state = ETL_LAUNCH_STARTED;
	SpinLockRelease(&shared->mutex);
	notify_caller(shared);
}

/*
 * Connect as the bootstrap superuser (the run's own role may be NOLOGIN),
 * with settings no caller can plant anything in.  Bookkeeping runs as the
 * extension owner; the target is written as the run's role (loader.c).
 */
static void
connect_worker(Oid database_oid)
{
	BackgroundWorkerInitializeConnectionByOid(database_oid, InvalidOid, 0);
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * The worker's own statements run as a superuser: they must not resolve
	 * names through a search_path a caller could plant objects in.  (The
	 * target table was resolved by the caller, with the caller's path.)
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);
}

/*
 * Say which run this worker runs (pg_stat_activity's application_name),
 * before the claim commits: etl_cancel_run signals a run's worker only when
 * that name matches, and may look as soon as the run shows as running.
 */
static void
report_run(int64 run_id)
{
	char		appname[64];

	if (run_id == 0)
		return;
	snprintf(appname, sizeof(appname), "etl_exec run " INT64_FORMAT, run_id);
	SetConfigOption("application_name", appname, PGC_USERSET, PGC_S_SESSION);
	pgstat_report_appname(appname);
}

/*
 * The launch's run, in a transaction of its own that commits synchronously
 * (once per segment: after a crash, resume_count must still count every
 * resume that started).  With a worker slot: the run is created or claimed
 * (its lock is then this process's) and returned to be run here.  Without
 * one: it is created or left "queued" and 0 is returned.  *reported is the
 * run_id the caller gets.  A refusal goes back to the caller through the
 * segment, and ends the worker -- or, when it holds a slot, returns -1 so
 * that it starts the queue before it goes.
 */
static int64
create_or_claim_run(EtlLaunchShared *shared, const EtlLaunchShared *request,
					const char *settings_json, const char *parameters_json,
					const char *partitions_json, bool have_slot, int64 *reported)
{
	volatile int64 run_id = 0;
	const char *target = request->target[0] ? request->target : NULL;

	SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE);
	PG_TRY();
	{
		begin_transaction();
		switch (request->mode)
		{
			case ETL_LAUNCH_NEW:
				*reported = etl_create_run(request->job_id, request->role_oid,
										   request->timeout_seconds, request->dry_run,
										   target, settings_json, parameters_json,
										   partitions_json, !have_slot);
				if (request->sample_pages > 0)
					etl_record_sample(*reported, request->sample_pages);
				run_id = have_slot ? *reported : 0;
				break;
			case ETL_LAUNCH_RESUME:
				*reported = request->run_id;
				if (have_slot)
					etl_claim_run(request->run_id, request->role_oid, request->timeout_seconds,
								  target, settings_json);
				else
					etl_queue_resume(request->run_id, request->role_oid, request->timeout_seconds,
									 target, settings_json);
				run_id = have_slot ? request->run_id : 0;
				break;
			case ETL_LAUNCH_DEQUEUE:
				*reported = request->run_id;
				run_id = have_slot ? etl_claim_queued_run(request->run_id) : 0;
				break;
		}
		report_run(run_id);
		commit_transaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(TopMemoryContext);
		edata = CopyErrorData();
		report_refusal(shared, edata);
		if (!have_slot)
			PG_RE_THROW();
		/* a slot holder must not leave with the queue unattended */
		FlushErrorState();
		AbortCurrentTransaction();
		ereport(LOG,
				(errmsg("etl_exec worker: launch refused: %s", edata->message)));
		run_id = -1;
	}
	PG_END_TRY();
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	return run_id;
}

/* Run one claimed run here, then let go of it. */
static void
run_claimed(int64 run_id)
{
	run_pages(run_id);
	etl_run_lock_release(run_id);
	/* the next run reads secrets anew */
	etl_secrets_forget();
	etl_redact_forget();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* The oldest queued run this worker may start now (claimed), or 0. */
static int64
claim_next_queued(void)
{
	int64		run_id;

	SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE);
	HOLD_CANCEL_INTERRUPTS();
	begin_transaction();
	run_id = etl_claim_queued_run(0);
	report_run(run_id);
	commit_transaction();
	RESUME_CANCEL_INTERRUPTS();
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	return run_id;
}

static bool
runs_queued(void)
{
	bool		queued;

	begin_transaction();
	queued = etl_runs_queued();
	commit_transaction();
	return queued;
}

/*
 * The worker holds a slot: start queued runs of its database, oldest first,
 * one after the other, until none is left; then give the slot back.  A run
 * queued just as the slot went is seen on the second look, and the slot
 * taken again for it (whoever queued it looks for a free slot after).
 */
static void
run_queue(void)
{
	for (;;)
	{
		int64		run_id;

		if (!etl_run_clock_reset())
			break;				/* SIGTERM: shutting down */
		if ((run_id = claim_next_queued()) != 0)
		{
			run_claimed(run_id);
			continue;
		}
		etl_worker_slot_release();
		if (!runs_queued() || !etl_worker_slot_try_acquire())
			break;
	}
	etl_worker_slot_release();
}

void
etl_worker_main(Datum main_arg)
{
	dsm_segment *seg;
	EtlLaunchShared *shared;
	EtlLaunchShared request;
	char	   *settings_json;
	char	   *parameters_json;
	char	   *partitions_json;
	int64		run_id;
	int64		reported = 0;
	bool		have_slot;

	pqsignal(SIGTERM, etl_handle_sigterm);
	BackgroundWorkerUnblockSignals();
	/* no line this process logs shows a secret a run uses */
	etl_redact_log();

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
	partitions_json = shared->partitions_len == 0 ? NULL :
		MemoryContextStrdup(TopMemoryContext,
							shared->payload + shared->settings_len + 1 + shared->parameters_len + 1);

	connect_worker(request.database_oid);
	/* at most etl_exec.max_workers runs run at once; the others queue */
	have_slot = etl_worker_slot_try_acquire();
	run_id = create_or_claim_run(shared, &request, settings_json, parameters_json,
								 partitions_json, have_slot, &reported);
	if (run_id >= 0)
		report_started(shared, reported);
	dsm_detach(seg);

	if (run_id > 0)
		run_claimed(run_id);
	/* queued: a slot may have come free since; then start the queue here */
	if (have_slot || (runs_queued() && etl_worker_slot_try_acquire()))
		run_queue();
	proc_exit(0);
}
