/*-------------------------------------------------------------------------
 *
 * run_lock.c
 *	  The locks of runs: the one a worker holds on its run for as long as
 *	  it runs it, and the server-wide worker slots (etl_exec.max_workers).
 *
 * Liveness of a run comes from this lock, never from a pid that may have
 * been reused: a queued/running run whose lock is free has lost its worker
 * (terminated, killed, or gone with a crash or shutdown) and is
 * "interrupted".  The lock is a session-level advisory lock in a key space
 * of our own (field4 = ETL_LOCK_RUN), so it cannot collide with the
 * pg_advisory_lock() keys of applications, which use field4 1 and 2.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lock.h"

#include "etl_exec.h"

#define ETL_LOCK_RUN	0x4554		/* "ET" */
#define ETL_LOCK_JOB	0x4555
#define ETL_LOCK_SLOT	0x4556

/* the worker slot this process holds (-1: none) */
static int	held_slot = -1;

static void
run_locktag(LOCKTAG *tag, int64 run_id)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId,
						 (uint32) ((uint64) run_id >> 32),
						 (uint32) run_id,
						 ETL_LOCK_RUN);
}

/*
 * Take the run's lock for the rest of this process's life.  Returns false
 * when another process holds it.
 */
bool
etl_run_lock_try_acquire(int64 run_id)
{
	LOCKTAG		tag;

	run_locktag(&tag, run_id);
	/*
	 * A liveness probe (etl_run_is_live, from anyone watching the run)
	 * holds the lock for an instant: try a few times before concluding that
	 * a worker has it.
	 */
	for (int attempt = 0; attempt < 20; attempt++)
	{
		if (LockAcquire(&tag, ExclusiveLock, true, true) != LOCKACQUIRE_NOT_AVAIL)
			return true;
		pg_usleep(5000L);
		CHECK_FOR_INTERRUPTS();
	}
	return false;
}

/* Give up the run's lock: this process goes on to another run. */
void
etl_run_lock_release(int64 run_id)
{
	LOCKTAG		tag;

	run_locktag(&tag, run_id);
	LockRelease(&tag, ExclusiveLock, true);
}

/*
 * Worker slots: at most etl_exec.max_workers runs run at once on the whole
 * server.  A slot is a session-level advisory lock in no database's key
 * space (database 0), so it is server-wide and goes with the process that
 * holds it, however that process ends.
 */
static void
slot_locktag(LOCKTAG *tag, int slot)
{
	SET_LOCKTAG_ADVISORY(*tag, InvalidOid, 0, (uint32) slot, ETL_LOCK_SLOT);
}

/* The number of slots the server can give: the setting, within its means. */
int
etl_worker_slots(void)
{
	return Max(1, Min(etl_setting_max_workers(), max_worker_processes));
}

/* Take a free slot (true), or learn there is none (false). */
bool
etl_worker_slot_try_acquire(void)
{
	LOCKTAG		tag;
	int			slots = etl_worker_slots();

	if (held_slot >= 0)
		return true;
	for (int slot = 0; slot < slots; slot++)
	{
		slot_locktag(&tag, slot);
		if (LockAcquire(&tag, ExclusiveLock, true, true) != LOCKACQUIRE_NOT_AVAIL)
		{
			held_slot = slot;
			return true;
		}
	}
	return false;
}

void
etl_worker_slot_release(void)
{
	LOCKTAG		tag;

	if (held_slot < 0)
		return;
	slot_locktag(&tag, held_slot);
	LockRelease(&tag, ExclusiveLock, true);
	held_slot = -1;
}

/* How many slots are free now (a snapshot: for deciding, not promising). */
int
etl_worker_slots_free(void)
{
	LOCKTAG		tag;
	int			free_slots = 0;

	for (int slot = 0; slot < etl_worker_slots(); slot++)
	{
		slot_locktag(&tag, slot);
		if (LockAcquire(&tag, ShareLock, true, true) != LOCKACQUIRE_NOT_AVAIL)
		{
			LockRelease(&tag, ShareLock, true);
			free_slots++;
		}
	}
	return free_slots;
}

PG_FUNCTION_INFO_V1(etl_worker_slots_free_sql);
Datum
etl_worker_slots_free_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(etl_worker_slots_free());
}

/* Is a worker alive on this run?  (Never call it from that worker.) */
bool
etl_run_is_live(int64 run_id)
{
	LOCKTAG		tag;

	run_locktag(&tag, run_id);
	if (LockAcquire(&tag, ShareLock, true, true) == LOCKACQUIRE_NOT_AVAIL)
		return true;
	LockRelease(&tag, ShareLock, true);
	return false;
}

/*
 * Serialise run creation for one job until the end of the transaction, so
 * the "one active run per job" rule holds between workers that start at
 * the same moment.  An advisory lock, not a row lock on the job: a caller
 * that edits the job in an open transaction must not block its own worker.
 */
void
etl_job_claim_lock(int32 job_id)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, (uint32) job_id, ETL_LOCK_JOB);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

PG_FUNCTION_INFO_V1(etl_run_is_live_sql);
Datum
etl_run_is_live_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(etl_run_is_live(PG_GETARG_INT64(0)));
}
