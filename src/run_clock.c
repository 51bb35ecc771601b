/*-------------------------------------------------------------------------
 *
 * run_clock.c
 *	  The run's clock and interrupts: its deadline, the stop requests that
 *	  end it early, and the waits that must wake for them.
 *
 * Everything that may take long -- a transfer, a retry's wait, a load
 * blocked on a lock -- asks here whether the run must stop.  A stop, once
 * seen, stays (the HTTP client and the page loop must agree on it):
 * SIGINT (pg_cancel_backend, etl_cancel_run) cancels the run, SIGTERM
 * (pg_terminate_backend, server shutdown) interrupts it, and the deadline
 * times it out.  The SIGTERM handler only sets a flag and the latch, and
 * raises a query cancel so that a statement in progress stops at once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "etl_exec.h"

static volatile sig_atomic_t got_sigterm = false;
static TimestampTz run_deadline = 0;
static EtlStopReason sticky_stop = ETL_STOP_NONE;

/* SIGTERM: the run is interrupted (see the file's header) */
void
etl_handle_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	got_sigterm = true;
	/* abort a statement in progress, as a cancel would */
	InterruptPending = true;
	QueryCancelPending = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

/* The run (segment) must end by this time. */
/*
 * A new run in this process: no deadline, no stop seen.  False when the
 * process itself must end (SIGTERM: a shutdown or pg_terminate_backend).
 */
bool
etl_run_clock_reset(void)
{
	run_deadline = 0;
	sticky_stop = ETL_STOP_NONE;
	QueryCancelPending = false;
	return !got_sigterm;
}

void
etl_set_deadline(TimestampTz deadline)
{
	run_deadline = deadline;
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

/*
 * Which stop an error raised by the run's work stands for (a cancel, the
 * deadline, a terminate), or ETL_STOP_NONE when it is a failure of its own.
 */
EtlStopReason
etl_stop_for_error(int sqlerrcode)
{
	if (got_sigterm)
		return ETL_STOP_INTERRUPTED;
	/* lock_timeout is set to the time left: its expiry is the deadline's */
	if (run_deadline != 0 && etl_ms_until_deadline() <= 100 &&
		(sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		 sqlerrcode == ERRCODE_QUERY_CANCELED))
		return ETL_STOP_TIMED_OUT;
	if (sqlerrcode == ERRCODE_QUERY_CANCELED)
		return ETL_STOP_CANCELLED;
	return ETL_STOP_NONE;
}

/* Milliseconds from start until now. */
int64
etl_ms_since(TimestampTz start)
{
	long		secs;
	int			usecs;

	TimestampDifference(start, GetCurrentTimestamp(), &secs, &usecs);
	return (int64) secs * 1000 + usecs / 1000;
}

/* Milliseconds the run has left (a day when it has no deadline). */
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
