/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  SQL-callable internals that start, watch and signal run workers.
 *
 * A run must not belong to the transaction that asked for it: once
 * etl_execute_job() returns, the run exists even if the caller rolls back.
 * So the caller never writes the run row.  It hands its request to a new
 * dynamic background worker through a small dynamic shared memory segment;
 * the worker creates (or claims) the run row in a transaction of its own,
 * takes the run's lock, commits, and reports the run_id back through the
 * segment.  A worker that refuses (a job that is not committed, a second
 * active run, ...) reports the error instead, and the caller raises it, so
 * no half-made run is ever left behind.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/dsm.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/backend_status.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "catalog/pg_type.h"
#include "utils/jsonb.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "etl_exec.h"

static char *
jsonb_arg_to_cstring(Jsonb *jb)
{
	if (jb == NULL)
		return pstrdup("{}");
	return JsonbToCString(NULL, &jb->root, VARSIZE(jb));
}

/*
 * What a launch is derived from, read from the job and run rows: the table
 * a new run loads (the job's, as the caller's search_path finds it), and
 * for a resume the run's job and role, which the caller must speak for.
 */
static void
derive_launch(EtlLaunchShared *shared)
{
	Oid			caller = etl_api_caller();
	char	   *target_table = NULL;
	char	   *target;
	int64		run_id = shared->run_id;
	int32		job_id = shared->job_id;
	Oid			argtypes[1];
	Datum		values[1];

	SPI_connect();
	if (shared->mode == ETL_LAUNCH_RESUME || shared->mode == ETL_LAUNCH_DEQUEUE)
	{
		bool		isnull;

		argtypes[0] = INT8OID;
		values[0] = Int64GetDatum(run_id);
		if (SPI_execute_with_args(psprintf("SELECT job_id, started_by::oid FROM %s WHERE run_id = $1",
										   etl_qualified("dw_etl_runs")),
								  1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("etl_exec run " INT64_FORMAT " does not exist", run_id)));
		job_id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		shared->role_oid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
														  SPI_tuptable->tupdesc, 2, &isnull));
		if (!is_member_of_role(caller, shared->role_oid))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied to resume etl_exec run " INT64_FORMAT, run_id),
					 errhint("Only the role that started a run, its members and superusers may resume it.")));
	}
	else
		shared->role_oid = caller;
	shared->job_id = job_id;

	argtypes[0] = INT4OID;
	values[0] = Int32GetDatum(job_id);
	if (SPI_execute_with_args(psprintf("SELECT target_table FROM %s WHERE job_id = $1",
									   etl_qualified("dw_etl_jobs")),
							  1, argtypes, values, NULL, true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
		target_table = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (target_table == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("etl_exec job %d does not exist", job_id)));
	/* a sample run loads nothing: its job's table need not exist */
	target = shared->sample_pages > 0 ? NULL : etl_resolve_target(target_table);
	/* a resume loads the table its run froze; the worker reads it */
	if (target == NULL && shared->mode == ETL_LAUNCH_NEW && shared->sample_pages == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("target table \"%s\" of etl_exec job %d does not exist", target_table, job_id),
				 errhint("Create the table before starting the job, or fix dw_etl_jobs.target_table.")));
	if (target && strlen(target) >= sizeof(shared->target))
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("target table name \"%s\" is too long", target)));
	if (target)
		strlcpy(shared->target, target, sizeof(shared->target));
	SPI_finish();
}

/*
 * The launch request in a new shared memory segment: the launch's fields,
 * then the settings JSON, the parameters JSON and the partitions JSON
 * (empty: none).
 */
static dsm_segment *
launch_segment(const EtlLaunchShared *launch, const char *settings_json,
			   const char *parameters_json, const char *partitions_json)
{
	Size		settings_len = strlen(settings_json);
	Size		parameters_len = strlen(parameters_json);
	Size		partitions_len = partitions_json ? strlen(partitions_json) : 0;
	dsm_segment *seg = dsm_create(offsetof(EtlLaunchShared, payload) +
								  settings_len + 1 + parameters_len + 1 + partitions_len + 1, 0);
	EtlLaunchShared *shared = dsm_segment_address(seg);

	memset(shared, 0, offsetof(EtlLaunchShared, payload));
	SpinLockInit(&shared->mutex);
	shared->caller_pid = MyProcPid;
	shared->mode = launch->mode;
	shared->database_oid = MyDatabaseId;
	shared->role_oid = launch->role_oid;
	shared->job_id = launch->job_id;
	shared->run_id = launch->run_id;
	shared->timeout_seconds = launch->timeout_seconds;
	shared->dry_run = launch->dry_run;
	shared->sample_pages = launch->sample_pages;
	memcpy(shared->target, launch->target, sizeof(shared->target));
	shared->state = ETL_LAUNCH_PENDING;
	shared->settings_len = settings_len;
	shared->parameters_len = parameters_len;
	memcpy(shared->payload, settings_json, settings_len + 1);
	memcpy(shared->payload + settings_len + 1, parameters_json, parameters_len + 1);
	shared->partitions_len = partitions_len;
	memcpy(shared->payload + settings_len + 1 + parameters_len + 1,
		   partitions_json ? partitions_json : "", partitions_len + 1);
	return seg;
}

/* how long a launch waits for a background worker slot to come free */
#define ETL_REGISTER_WAIT_MS 30000

/*
 * Register the worker that takes the launch in seg.  A worker that finds
 * etl_exec.max_workers runs running only queues its run and exits at once;
 * when the server has no background worker slot free at all, wait a while
 * for one (they come free as queued runs are recorded and parallel queries
 * end) before giving up.
 */
static BackgroundWorkerHandle *
register_worker(dsm_segment *seg, const EtlLaunchShared *shared)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	TimestampTz give_up = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ETL_REGISTER_WAIT_MS);
	long		delay_ms = 5;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "etl_exec");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "etl_worker_main");
	if (shared->mode != ETL_LAUNCH_NEW)
		snprintf(worker.bgw_name, BGW_MAXLEN, "etl_exec worker for run " INT64_FORMAT,
				 shared->run_id);
	else
		snprintf(worker.bgw_name, BGW_MAXLEN, "etl_exec worker for job %d",
				 shared->job_id);
	snprintf(worker.bgw_type, BGW_MAXLEN, "etl_exec worker");
	worker.bgw_main_arg = UInt32GetDatum(dsm_segment_handle(seg));
	worker.bgw_notify_pid = MyProcPid;

	while (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		if (GetCurrentTimestamp() >= give_up)
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("could not start an etl_exec worker: no background worker slot came free in %d s",
							ETL_REGISTER_WAIT_MS / 1000),
					 errdetail("All %d background worker slots (max_worker_processes) are in use.",
							   max_worker_processes),
					 errhint("Keep etl_exec.max_workers (%d) below max_worker_processes, which other background workers share, or raise max_worker_processes (it needs a server restart). No run was created.",
							 etl_setting_max_workers())));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 delay_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		delay_ms = Min(delay_ms * 2, 200);
	}
	return handle;
}

/*
 * Wait until the worker has started the run or refused it; a worker that
 * exits without a word is an error.
 */
static EtlLaunchState
wait_for_worker(EtlLaunchShared *shared, BackgroundWorkerHandle *handle)
{
	EtlLaunchState state;

	for (;;)
	{
		pid_t		pid;
		BgwHandleStatus status;

		SpinLockAcquire(&shared->mutex);
		state = shared->state;
		SpinLockRelease(&shared->mutex);
		if (state != ETL_LAUNCH_PENDING)
			return state;

		status = GetBackgroundWorkerPid(handle, &pid);
		if (status == BGWH_STOPPED || status == BGWH_POSTMASTER_DIED)
		{
			SpinLockAcquire(&shared->mutex);
			state = shared->state;
			SpinLockRelease(&shared->mutex);
			if (state != ETL_LAUNCH_PENDING)
				return state;
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("the etl_exec worker exited before it started the run"),
					 errhint("The server log says why.")));
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Hand a launch to a new worker and wait until it has committed the run
 * row (created, claimed or queued); returns the run_id.
 */
static int64
launch_run(EtlLaunchShared *launch, const char *parameters_json, const char *partitions_json)
{
	char	   *settings_json;
	dsm_segment *seg;
	EtlLaunchShared *shared;
	BackgroundWorkerHandle *handle;
	int64		run_id;

	derive_launch(launch);
	/* the settings in force in this session; never taken from the caller */
	settings_json = jsonb_arg_to_cstring(DatumGetJsonbP(DirectFunctionCall1(etl_settings_snapshot,
																			 (Datum) 0)));
	seg = launch_segment(launch, settings_json, parameters_json, partitions_json);
	shared = dsm_segment_address(seg);
	handle = register_worker(seg, shared);

	if (wait_for_worker(shared, handle) == ETL_LAUNCH_REFUSED)
		ereport(ERROR,
				(errcode(shared->sqlerrcode),
				 errmsg("%s", shared->message),
				 shared->detail[0] ? errdetail("%s", shared->detail) : 0,
				 shared->hint[0] ? errhint("%s", shared->hint) : 0));

	run_id = shared->run_id;
	dsm_detach(seg);
	return run_id;
}

/*
 * _etl_start_worker(mode, job_id, run_id, timeout_seconds, dry_run,
 *					 parameters, partitions) RETURNS bigint
 *
 * Starts the worker and waits until it has committed the run row: 'new'
 * (a new run of job_id), 'resume' (run_id), or 'dequeue' (start the queued
 * run run_id if a worker slot is free; it stays queued if not).  Only the
 * extension's own entry points call it (it is executable by no one else),
 * for the caller etl_api_caller() names; everything the worker does beyond
 * the call's options (timeout, dry run, parameters) is derived from the job
 * and run rows, here and in the worker.
 */
PG_FUNCTION_INFO_V1(etl_start_worker);
Datum
etl_start_worker(PG_FUNCTION_ARGS)
{
	char	   *mode;
	char	   *partitions_json = NULL;
	EtlLaunchShared launch;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(3) || PG_ARGISNULL(4))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("_etl_start_worker: mode, job_id, timeout_seconds and dry_run must not be NULL")));
	mode = text_to_cstring(PG_GETARG_TEXT_PP(0));
	/* a standby starts no worker: one registered now would wait for the end of recovery */
	etl_refuse_on_standby("starting an etl_exec worker");
	memset(&launch, 0, sizeof(launch));
	if (strcmp(mode, "new") == 0)
		launch.mode = ETL_LAUNCH_NEW;
	else if (strcmp(mode, "resume") == 0 && !PG_ARGISNULL(2))
		launch.mode = ETL_LAUNCH_RESUME;
	else if (strcmp(mode, "dequeue") == 0 && !PG_ARGISNULL(2))
		launch.mode = ETL_LAUNCH_DEQUEUE;
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("_etl_start_worker: mode must be 'new', or 'resume' or 'dequeue' with a run_id")));
	launch.job_id = PG_GETARG_INT32(1);
	launch.run_id = PG_ARGISNULL(2) ? 0 : PG_GETARG_INT64(2);
	launch.timeout_seconds = PG_GETARG_INT32(3);
	launch.dry_run = PG_GETARG_BOOL(4);
	/* a new run's partitions, frozen by the caller (_etl_freeze_partitions) */
	if (launch.mode == ETL_LAUNCH_NEW && PG_NARGS() > 6 && !PG_ARGISNULL(6))
		partitions_json = jsonb_arg_to_cstring(PG_GETARG_JSONB_P(6));
	PG_RETURN_INT64(launch_run(&launch,
							   jsonb_arg_to_cstring(PG_ARGISNULL(5) ? NULL : PG_GETARG_JSONB_P(5)),
							   partitions_json));
}

/*
 * _etl_start_sample(job_id, timeout_seconds, parameters, partitions,
 *					 sample_pages) RETURNS bigint
 *
 * Starts a sample run for etl_infer_table: a new dry run of job_id that
 * reads up to sample_pages pages (of its first partitions, if it has
 * any) through the same request machinery as any run, loads nothing, needs
 * no target table, and reports its keys' statistics (type_infer.c) in
 * run_context.dry_run.  Waits, as _etl_start_worker does, only until the
 * worker has committed the run row.
 */
PG_FUNCTION_INFO_V1(etl_start_sample);
Datum
etl_start_sample(PG_FUNCTION_ARGS)
{
	EtlLaunchShared launch;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(4) || PG_GETARG_INT32(4) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("_etl_start_sample: job_id, timeout_seconds and a positive sample_pages are needed")));
	memset(&launch, 0, sizeof(launch));
	launch.mode = ETL_LAUNCH_NEW;
	launch.job_id = PG_GETARG_INT32(0);
	launch.timeout_seconds = PG_GETARG_INT32(1);
	launch.dry_run = true;
	launch.sample_pages = PG_GETARG_INT32(4);
	PG_RETURN_INT64(launch_run(&launch,
							   jsonb_arg_to_cstring(PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2)),
							   PG_ARGISNULL(3) ? NULL : jsonb_arg_to_cstring(PG_GETARG_JSONB_P(3))));
}

/* The run's status as committed now (NULL: no such run). */
static char *
fresh_status(int64 run_id)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1];
	char	   *status = NULL;
	MemoryContext cxt = CurrentMemoryContext;

	values[0] = Int64GetDatum(run_id);
	SPI_connect();
	PushActiveSnapshot(GetLatestSnapshot());
	if (SPI_execute_with_args(psprintf("SELECT status FROM %s WHERE run_id = $1",
									   etl_qualified("dw_etl_runs")),
							  1, argtypes, values, NULL, true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
		status = MemoryContextStrdup(cxt, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	PopActiveSnapshot();
	SPI_finish();
	return status;
}

static bool
start_orphaned_step(void *arg)
{
	(void) launch_run((EtlLaunchShared *) arg, "{}", NULL);
	return true;
}

/*
 * A queued run that waits while worker slots are free has no one to start
 * it (its database's workers are gone: a restart, say): start it, when the
 * caller may.  Best effort: a failure to start it leaves it queued.
 */
static void
start_orphaned(int64 run_id)
{
	EtlLaunchShared launch;

	if (etl_worker_slots_free() == 0)
		return;
	memset(&launch, 0, sizeof(launch));
	launch.mode = ETL_LAUNCH_DEQUEUE;
	launch.run_id = run_id;
	/* a run that cannot start now stays queued: its error is dropped */
	(void) etl_subxact_try(start_orphaned_step, &launch, CurrentMemoryContext, NULL);
}

/*
 * _etl_wait_run_end(run_id, timeout_ms) RETURNS bool
 *
 * Waits until the run has ended (true) -- no worker holds its lock, and it
 * is not waiting in the queue -- or timeout_ms passes (false).  It sleeps
 * on its latch between looks at the lock manager (and, for a queued run,
 * at the run's row); a cancel of the caller ends the wait, not the run.
 * A queued run nobody will start (slots free, no worker) is started.
 */
PG_FUNCTION_INFO_V1(etl_wait_run_end);
Datum
etl_wait_run_end(PG_FUNCTION_ARGS)
{
	int64		run_id = PG_GETARG_INT64(0);
	bool		forever = PG_ARGISNULL(1);
	int64		timeout_ms = forever ? 0 : PG_GETARG_INT32(1);
	TimestampTz start = GetCurrentTimestamp();
	TimestampTz queued_since = 0;
	long		delay_ms = 5;

	for (;;)
	{
		long		left_ms = delay_ms;

		if (RecoveryInProgress())
		{
			/* a standby: the run's worker is on the primary, its end comes by replication */
			char	   *status = fresh_status(run_id);

			if (status == NULL || (strcmp(status, "queued") != 0 && strcmp(status, "running") != 0))
				PG_RETURN_BOOL(true);
		}
		else if (!etl_run_is_live(run_id))
		{
			char	   *status = fresh_status(run_id);

			if (status == NULL || strcmp(status, "queued") != 0)
				PG_RETURN_BOOL(true);
			/* queued: wait on; nudge the queue if it stays stuck */
			if (queued_since == 0)
				queued_since = GetCurrentTimestamp();
			else if (etl_ms_since(queued_since) >= 1000)
			{
				start_orphaned(run_id);
				queued_since = GetCurrentTimestamp();
			}
		}
		else
			queued_since = 0;
		if (!forever)
		{
			int64		waited_ms = etl_ms_since(start);

			if (waited_ms >= timeout_ms)
				PG_RETURN_BOOL(false);
			left_ms = Min(delay_ms, timeout_ms - waited_ms);
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 left_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		delay_ms = Min(delay_ms * 2, 100);
	}
}

/*
 * _etl_fresh_run(run_id) RETURNS jsonb
 *
 * The run row as committed now, whatever the caller's snapshot: a waiting
 * caller in a REPEATABLE READ transaction must still see how its run ended.
 */
PG_FUNCTION_INFO_V1(etl_fresh_run);
Datum
etl_fresh_run(PG_FUNCTION_ARGS)
{
	int64		run_id = PG_GETARG_INT64(0);
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1];
	Datum		result = (Datum) 0;
	bool		isnull = true;
	StringInfoData sql;

	values[0] = Int64GetDatum(run_id);
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT to_jsonb(r) FROM %s r WHERE run_id = $1",
					 etl_qualified("dw_etl_runs"));

	SPI_connect();
	PushActiveSnapshot(GetLatestSnapshot());
	if (SPI_execute_with_args(sql.data, 1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read run " INT64_FORMAT, run_id);
	if (SPI_processed == 1)
	{
		result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			result = SPI_datumTransfer(result, false, -1);
	}
	PopActiveSnapshot();
	SPI_finish();

	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}

/*
 * _etl_signal_run(run_id) RETURNS bool
 *
 * Sends the run's worker a cancel (SIGINT, as pg_cancel_backend does); the
 * worker aborts its transfer or load and ends the run "cancelled".  Only
 * the run's role, its members and superusers may; and the signal goes only
 * to a live background worker whose application_name names this run.
 */
PG_FUNCTION_INFO_V1(etl_signal_run);
Datum
etl_signal_run(PG_FUNCTION_ARGS)
{
	int64		run_id = PG_GETARG_INT64(0);
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1];
	char	   *sql;
	int			pid = 0;
	Oid			owner = InvalidOid;
	char		appname[NAMEDATALEN];
	int			nbackends;

	if (!etl_run_is_live(run_id))
		PG_RETURN_BOOL(false);

	values[0] = Int64GetDatum(run_id);
	sql = psprintf("SELECT worker_pid, started_by::oid FROM %s WHERE run_id = $1",
				   etl_qualified("dw_etl_runs"));
	SPI_connect();
	PushActiveSnapshot(GetLatestSnapshot());
	if (SPI_execute_with_args(sql, 1, argtypes, values, NULL, true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		pid = isnull ? 0 : DatumGetInt32(d);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		owner = isnull ? InvalidOid : DatumGetObjectId(d);
	}
	PopActiveSnapshot();
	SPI_finish();

	if (pid == 0)
		PG_RETURN_BOOL(false);
	if (!is_member_of_role(etl_api_caller(), owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to cancel etl_exec run " INT64_FORMAT, run_id),
				 errhint("Only the role that started a run, its members and superusers may cancel it.")));

	snprintf(appname, sizeof(appname), "etl_exec run " INT64_FORMAT, run_id);
	nbackends = pgstat_fetch_stat_numbackends();
	for (int i = 1; i <= nbackends; i++)
	{
		LocalPgBackendStatus *local = etl_local_backend_status(i);
		PgBackendStatus *be = local ? &local->backendStatus : NULL;

		if (be && be->st_procpid == pid && be->st_backendType == B_BG_WORKER &&
			strcmp(be->st_appname, appname) == 0)
			PG_RETURN_BOOL(kill(pid, SIGINT) == 0);
	}
	PG_RETURN_BOOL(false);
}
