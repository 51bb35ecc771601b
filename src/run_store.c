/*-------------------------------------------------------------------------
 *
 * run_store.c
 *	  The run store: every read and write a worker makes to dw_etl_runs --
 *	  create or claim a run, read it, save its checkpoint, record its
 *	  staging table, finish it -- and the progress it reports meanwhile.
 *
 * A run may start only when its job is enabled, its target exists and no
 * other run of the job is active (unless the job allows that); those
 * checks read dw_etl_jobs too, here, where the run is created or claimed.
 * All statements run through SPI inside the worker's current transaction,
 * so a checkpoint commits together with the rows it covers.  They run as
 * the extension's owner (the worker's session user); only the target
 * table is written as the run's role (loader.c).  Results are copied into
 * the caller's memory context before SPI_finish().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/snapmgr.h"

#include "etl_exec.h"

static char *
int64_str(int64 v)
{
	return psprintf(INT64_FORMAT, v);
}

static void
raise_refusal(int sqlerrcode, const char *msg, const char *hint)
{
	ereport(ERROR, (errcode(sqlerrcode), errmsg("%s", msg),
					hint ? errhint("%s", hint) : 0));
}

/*
 * Checks a run has to pass inside the worker, which sees only committed
 * rows: the job exists and is enabled, its target table exists, and no
 * other live run of the job is active unless the job allows that.
 */
static void
check_job_startable(int32 job_id, int64 own_run_id, bool dry_run, const char *frozen_target)
{
	char	   *job_str = psprintf("%d", job_id);
	const char *args[2];
	char	   *sql;
	char	   *enabled;
	char	   *target;
	char	   *concurrent;
	char	   *target_oid;

	args[0] = job_str;
	sql = psprintf("SELECT enabled, target_table, allow_concurrent_runs "
				   "FROM %s WHERE job_id = $1::int", etl_qualified("dw_etl_jobs"));
	if (etl_spi_run(sql, 1, args, SPI_OK_SELECT) == 0)
		raise_refusal(ERRCODE_UNDEFINED_OBJECT,
					  psprintf("etl_exec job %d does not exist (or is not committed yet)", job_id),
					  "A run's worker sees only committed rows: commit the job before starting it.");
	enabled = etl_spi_value(CurrentMemoryContext, 1);
	target = etl_spi_value(CurrentMemoryContext, 2);
	concurrent = etl_spi_value(CurrentMemoryContext, 3);
	if (strcmp(enabled, "t") != 0)
		raise_refusal(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
					  psprintf("etl_exec job %d is disabled", job_id),
					  psprintf("Enable it with UPDATE dw_etl_jobs SET enabled = true WHERE job_id = %d.", job_id));

	if (frozen_target)
		target = pstrdup(frozen_target);
	else if (dry_run && own_run_id == 0)
		return;					/* a sample run (etl_infer_table): no target */
	args[0] = target;
	if (etl_spi_run("SELECT pg_catalog.to_regclass($1)::oid", 1, args, SPI_OK_SELECT) != 1 ||
		(target_oid = etl_spi_value(CurrentMemoryContext, 1)) == NULL)
		raise_refusal(ERRCODE_UNDEFINED_TABLE,
					  psprintf("target table \"%s\" of etl_exec job %d does not exist (or is not committed yet)",
							   target, job_id),
					  "Create the table (and commit) before starting the job, or fix dw_etl_jobs.target_table.");

	if (dry_run || strcmp(concurrent, "t") == 0)
		return;

	/* record dead workers' runs as interrupted before counting live ones */
	args[0] = job_str;
	sql = psprintf("SELECT %s._etl_reap($1::int)", quote_identifier(etl_extension_schema()));
	etl_spi_run(sql, 1, args, SPI_OK_SELECT);

	args[1] = int64_str(own_run_id);
	sql = psprintf("SELECT run_id FROM %s WHERE job_id = $1::int AND run_id <> $2::bigint "
				   "AND status IN ('queued', 'running') AND NOT dry_run ORDER BY run_id LIMIT 1",
				   etl_qualified("dw_etl_runs"));
	if (etl_spi_run(sql, 2, args, SPI_OK_SELECT) > 0)
	{
		char	   *active = etl_spi_value(CurrentMemoryContext, 1);

		raise_refusal(ERRCODE_OBJECT_IN_USE,
					  psprintf("etl_exec job %d already has an active run %s", job_id, active),
					  psprintf("Wait for it with SELECT etl_wait_run(%s), cancel it with SELECT etl_cancel_run(%s), "
							   "or set allow_concurrent_runs on the job.", active, active));
	}
}

/*
 * Create a new run of a job, as role_oid, loading target: runs in the
 * worker's first transaction, which also takes the run's lock before the
 * row is visible -- or, when queued (no worker slot is free), leaves it
 * "queued" for a worker to start when one is.
 */
int64
etl_create_run(int32 job_id, Oid role_oid, int32 timeout_seconds, bool dry_run,
			   const char *target, const char *settings_json,
			   const char *parameters_json, const char *partitions_json, bool queued)
{
	int64		run_id;
	const char *args[9];
	char	   *sql;

	SPI_connect();
	etl_job_claim_lock(job_id);
	check_job_startable(job_id, 0, dry_run, target);

	sql = psprintf("SELECT nextval('%s')",
				   quote_qualified_identifier(etl_extension_schema(), "dw_etl_runs_run_id_seq"));
	etl_spi_run(sql, 0, NULL, SPI_OK_SELECT);
	run_id = pg_strtoint64(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));

	if (!queued && !etl_run_lock_try_acquire(run_id))
		elog(ERROR, "etl_exec: new run " INT64_FORMAT " is locked by another process", run_id);

	args[0] = int64_str(run_id);
	args[1] = psprintf("%d", job_id);
	args[2] = parameters_json;
	args[3] = dry_run ? "true" : "false";
	args[4] = psprintf("%d", timeout_seconds);
	args[5] = queued ? NULL : psprintf("%d", MyProcPid);
	args[6] = psprintf("%u", role_oid);
	args[7] = settings_json;
	args[8] = target;
	sql = psprintf("INSERT INTO %s (run_id, job_id, status, parameters, dry_run, timeout_seconds, "
				   "  started_at, segment_started_at, worker_pid, started_by, settings, run_context) "
				   "SELECT $1::bigint, $2::int, CASE WHEN $6 IS NULL THEN 'queued' ELSE 'running' END, "
				   "  $3::jsonb, $4::bool, $5::int, "
				   "  now(), CASE WHEN $6 IS NOT NULL THEN now() END, $6::int, $7::oid, $8::jsonb, "
				   "  jsonb_build_object('paging', p, 'target', $9::text, "
				   "    'fingerprint', jsonb_build_object('parameters', md5($3::jsonb::text), 'paging', md5(p::text)), "
				   "    'resume_count', 0, 'retries', 0, 'segments', '[]'::jsonb) "
				   "FROM (SELECT %s._etl_paging_of($2::int) AS p) s",
				   etl_qualified("dw_etl_runs"), quote_identifier(etl_extension_schema()));
	etl_spi_run(sql, 9, args, SPI_OK_INSERT);
	if (partitions_json)
	{
		/* the partitions the caller froze, in order, with the run */
		args[1] = partitions_json;
		etl_spi_run(psprintf("INSERT INTO %s (run_id, partition_index, parameters) "
							 "SELECT $1::bigint, e.ord - 1, e.value "
							 "FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS e(value, ord)",
							 etl_qualified("dw_etl_run_partitions")),
					2, args, SPI_OK_INSERT);
		etl_spi_run(psprintf("UPDATE %s SET run_context = run_context || "
							 "jsonb_build_object('partitions_total', jsonb_array_length($2::jsonb)) "
							 "WHERE run_id = $1::bigint", etl_qualified("dw_etl_runs")),
					2, args, SPI_OK_UPDATE);
	}
	SPI_finish();
	return run_id;
}

/*
 * The run row a resume claims, locked: it must exist, be role_oid's to
 * resume, and be in a state a resume may continue.  Returns its job and
 * frozen target (NULL for a run from before targets were frozen).
 */
static void
lock_resumable_run(int64 run_id, Oid role_oid, int32 *job_id, char **target)
{
	const char *args[1];
	char	   *sql;
	char	   *status;
	char	   *has_checkpoint;
	char	   *dry_run;
	Oid			owner;

	args[0] = int64_str(run_id);

	/* a previous worker that died without a word: record it, with its NOTIFY */
	sql = psprintf("SELECT %s._etl_reap(NULL, $1::bigint)", quote_identifier(etl_extension_schema()));
	etl_spi_run(sql, 1, args, SPI_OK_SELECT);

	sql = psprintf("SELECT status, run_context ? 'checkpoint', dry_run, job_id, started_by::oid, "
				   "  run_context ->> 'target' "
				   "FROM %s WHERE run_id = $1::bigint FOR UPDATE", etl_qualified("dw_etl_runs"));
	if (etl_spi_run(sql, 1, args, SPI_OK_SELECT) == 0)
		raise_refusal(ERRCODE_UNDEFINED_OBJECT,
					  psprintf("etl_exec run " INT64_FORMAT " does not exist", run_id), NULL);
	status = etl_spi_value(CurrentMemoryContext, 1);
	has_checkpoint = etl_spi_value(CurrentMemoryContext, 2);
	dry_run = etl_spi_value(CurrentMemoryContext, 3);
	*job_id = pg_strtoint32(etl_spi_value(CurrentMemoryContext, 4));
	owner = (Oid) strtoul(etl_spi_value(CurrentMemoryContext, 5), NULL, 10);
	*target = etl_spi_value(CurrentMemoryContext, 6);

	/* the launcher vouched for role_oid; it must speak for the run's role */
	if (!is_member_of_role(role_oid, owner))
		raise_refusal(ERRCODE_INSUFFICIENT_PRIVILEGE,
					  psprintf("permission denied to resume etl_exec run " INT64_FORMAT, run_id),
					  "Only the role that started a run, its members and superusers may resume it.");
	if (strcmp(dry_run, "t") == 0)
		raise_refusal(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
					  psprintf("etl_exec run " INT64_FORMAT " is a dry run and cannot be resumed", run_id),
					  "Start a real run with etl_execute_job().");
	/* (after the reap above, "running" means a live worker has it) */
	if (strcmp(status, "running") == 0 || strcmp(status, "queued") == 0)
		raise_refusal(ERRCODE_OBJECT_IN_USE,
					  psprintf("etl_exec run " INT64_FORMAT " is %s already", run_id,
							   strcmp(status, "running") == 0 ? "being run" : "queued"),
					  psprintf("Wait for it with SELECT etl_wait_run(" INT64_FORMAT ").", run_id));
	if (strcmp(status, "succeeded") == 0 ||
		(strcmp(status, "failed") == 0 && strcmp(has_checkpoint, "t") != 0))
		raise_refusal(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
					  psprintf("etl_exec run " INT64_FORMAT " is %s and cannot be resumed", run_id, status),
					  "Start a new run with etl_execute_job() or etl_retry_run().");
}

/*
 * The run a resume by role_oid continues, locked and checked (its row, its
 * job, its target): returns the target it loads.  caller_target is the
 * table the caller resolved (or NULL), for a run from before targets were
 * frozen.
 */
static char *
lock_startable_resume(int64 run_id, Oid role_oid, const char *caller_target)
{
	char	   *target;
	int32		job_id;

	lock_resumable_run(run_id, role_oid, &job_id, &target);
	if (target == NULL && caller_target)
		target = pstrdup(caller_target);
	etl_job_claim_lock(job_id);
	check_job_startable(job_id, run_id, false, target);
	return target;
}

/*
 * Claim an existing run for a resume by role_oid: the run's lock first (two
 * workers never run one run), then its row, whose status must still allow
 * it.  caller_target is the table the caller resolved (or NULL), for a run
 * from before targets were frozen.
 */
void
etl_claim_run(int64 run_id, Oid role_oid, int32 timeout_seconds,
			  const char *caller_target, const char *settings_json)
{
	const char *args[5];
	char	   *sql;
	char	   *target;

	if (!etl_run_lock_try_acquire(run_id))
		raise_refusal(ERRCODE_OBJECT_IN_USE,
					  psprintf("etl_exec run " INT64_FORMAT " is already being run by another worker", run_id),
					  psprintf("Wait for it with SELECT etl_wait_run(" INT64_FORMAT ").", run_id));

	SPI_connect();
	target = lock_startable_resume(run_id, role_oid, caller_target);

	args[0] = int64_str(run_id);
	args[1] = psprintf("%d", MyProcPid);
	args[2] = psprintf("%d", timeout_seconds);
	args[3] = settings_json;
	sql = psprintf("UPDATE %s SET status = 'running', worker_pid = $2::int, timeout_seconds = $3::int, "
				   "  settings = $4::jsonb, "
				   "  segment_started_at = now(), finished_at = NULL, error_message = NULL, sqlstate = NULL, "
				   "  resume_count = resume_count + 1, "
				   "  run_context = jsonb_set(run_context, '{resume_count}', to_jsonb(resume_count + 1)) "
				   "    || CASE WHEN $5 IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('target', $5) END "
				   "WHERE run_id = $1::bigint", etl_qualified("dw_etl_runs"));
	args[4] = target;
	etl_spi_run(sql, 5, args, SPI_OK_UPDATE);
	SPI_finish();
}

/*
 * Queue a resume by role_oid: no worker slot is free, so the run waits,
 * "queued", with the call's timeout and settings, for a worker to start it.
 */
void
etl_queue_resume(int64 run_id, Oid role_oid, int32 timeout_seconds,
				 const char *caller_target, const char *settings_json)
{
	const char *args[5];
	char	   *target;

	SPI_connect();
	target = lock_startable_resume(run_id, role_oid, caller_target);

	args[0] = int64_str(run_id);
	args[1] = psprintf("%d", timeout_seconds);
	args[2] = settings_json;
	args[3] = target;
	etl_spi_run(psprintf("UPDATE %s SET status = 'queued', worker_pid = NULL, timeout_seconds = $2::int, "
						 "  settings = $3::jsonb, finished_at = NULL, error_message = NULL, sqlstate = NULL, "
						 "  run_context = run_context "
						 "    || CASE WHEN $4 IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('target', $4) END "
						 "WHERE run_id = $1::bigint", etl_qualified("dw_etl_runs")),
				4, args, SPI_OK_UPDATE);
	SPI_finish();
}

/* queued runs that may start now (the job's own rule on concurrent runs) */
#define STARTABLE_QUEUED_RUNS \
	"FROM %s r JOIN %s j ON j.job_id = r.job_id " \
	"WHERE r.status = 'queued' " \
	"  AND (j.allow_concurrent_runs OR r.dry_run OR NOT EXISTS (" \
	"       SELECT 1 FROM %s x WHERE x.job_id = r.job_id AND x.status = 'running' " \
	"       AND x.run_id <> r.run_id AND NOT x.dry_run)) "

/*
 * Start a queued run in this worker (which holds a worker slot): the
 * oldest queued run of this database (or only_run_id, when not 0) that may
 * start now -- a job that does not allow concurrent runs starts its next
 * run only when the one before it has ended.  Takes the run's lock and
 * marks it running; returns its run_id, or 0 when there is none.  A run
 * whose job was disabled while it waited fails instead; one another worker
 * is taking just now is passed over.
 */
int64
etl_claim_queued_run(int64 only_run_id)
{
	const char *args[2];
	int64		run_id = 0;
	char	   *sql;

	SPI_connect();
	/* dead workers' runs do not hold up their jobs' queues */
	etl_spi_run(psprintf("SELECT %s._etl_reap()", quote_identifier(etl_extension_schema())),
				0, NULL, SPI_OK_SELECT);
	args[0] = int64_str(only_run_id);
	args[1] = "0";
	sql = psprintf("SELECT r.run_id, j.enabled " STARTABLE_QUEUED_RUNS
				   "  AND ($1::bigint = 0 OR r.run_id = $1::bigint) AND r.run_id > $2::bigint "
				   "ORDER BY r.run_id LIMIT 1 FOR UPDATE OF r SKIP LOCKED",
				   etl_qualified("dw_etl_runs"), etl_qualified("dw_etl_jobs"), etl_qualified("dw_etl_runs"));
	while (etl_spi_run(sql, 2, args, SPI_OK_SELECT) > 0)
	{
		const char *uargs[2];
		bool		enabled = strcmp(etl_spi_value(CurrentMemoryContext, 2), "t") == 0;

		run_id = pg_strtoint64(etl_spi_value(CurrentMemoryContext, 1));
		uargs[0] = int64_str(run_id);
		uargs[1] = psprintf("%d", MyProcPid);
		args[1] = uargs[0];		/* the next look starts after this run */
		if (enabled && etl_run_lock_try_acquire(run_id))
		{
			/* a run that ran before is resumed: count it */
			etl_spi_run(psprintf("UPDATE %s SET status = 'running', worker_pid = $2::int, "
								 "  segment_started_at = now(), finished_at = NULL, error_message = NULL, "
								 "  sqlstate = NULL, "
								 "  resume_count = resume_count + r.resumed, "
								 "  run_context = jsonb_set(run_context, '{resume_count}', "
								 "                          to_jsonb(resume_count + r.resumed)) "
								 "FROM (SELECT CASE WHEN jsonb_array_length(coalesce(run_context -> 'segments', '[]')) > 0 "
								 "             THEN 1 ELSE 0 END AS resumed FROM %s WHERE run_id = $1::bigint) r "
								 "WHERE run_id = $1::bigint",
								 etl_qualified("dw_etl_runs"), etl_qualified("dw_etl_runs")),
						2, uargs, SPI_OK_UPDATE);
			break;
		}
		if (!enabled)
			etl_spi_run(psprintf("WITH u AS (UPDATE %s SET status = 'failed', finished_at = now(), "
								 "  error_message = format('etl_exec run %%s was not started: its job %%s was disabled while it was queued', "
								 "                         run_id, job_id) "
								 " WHERE run_id = $1::bigint RETURNING run_id, job_id, status, records_loaded) "
								 "SELECT pg_notify('etl_exec_run', row_to_json(u)::text) FROM u",
								 etl_qualified("dw_etl_runs")),
						1, uargs, SPI_OK_SELECT);
		run_id = 0;
		if (only_run_id != 0)
			break;
	}
	SPI_finish();
	return run_id;
}

/* Are runs of this database waiting in the queue that may start now? */
bool
etl_runs_queued(void)
{
	bool		queued;

	SPI_connect();
	etl_spi_run(psprintf("SELECT 1 " STARTABLE_QUEUED_RUNS "LIMIT 1",
						 etl_qualified("dw_etl_runs"), etl_qualified("dw_etl_jobs"),
						 etl_qualified("dw_etl_runs")),
				0, NULL, SPI_OK_SELECT);
	queued = SPI_processed > 0;
	SPI_finish();
	return queued;
}

/* A run's stored settings (the caller's, at the call), defaults filled in. */
static void
read_run_settings(Jsonb *settings, EtlRunSettings *out)
{
	out->checkpoint_interval_seconds = etl_jsonb_int(settings, "checkpoint_interval_seconds", 60);
	out->request_timeout_ms = etl_jsonb_int(settings, "request_timeout_ms", 60000);
	out->connect_timeout_ms = etl_jsonb_int(settings, "connect_timeout_ms", 10000);
	out->max_retries = etl_jsonb_int(settings, "max_retries", 3);
	/* runs started before 0.4.0 sent one request at a time */
	out->concurrency = etl_jsonb_int(settings, "default_concurrency", 1);
	out->retry_base_delay_ms = etl_jsonb_int(settings, "retry_base_delay_ms", 500);
	out->max_response_bytes = etl_jsonb_int(settings, "max_response_bytes", 256 * 1024 * 1024);
	/* runs started before 0.6.0: the defaults */
	out->max_bytes_in_flight = etl_jsonb_int(settings, "max_bytes_in_flight", 512 * 1024 * 1024);
	out->max_concurrency = etl_jsonb_int(settings, "max_concurrency", 16);
	out->low_speed_time_seconds = etl_jsonb_int(settings, "low_speed_time_seconds", 30);
	out->allowed_hosts = etl_jsonb_str(settings, "allowed_hosts");
	out->user_agent = etl_jsonb_str(settings, "user_agent");
	out->ca_file = etl_jsonb_str(settings, "ca_file");
}

/* Read the run's bookkeeping and checkpoint into *row (current context). */
void
etl_read_run(int64 run_id, EtlRunRow *row)
{
	MemoryContext cxt = CurrentMemoryContext;
	const char *args[1];
	char	   *sql;
	char	   *v;
	Jsonb	   *settings;

	memset(row, 0, sizeof(*row));
	SPI_connect();
	args[0] = int64_str(run_id);
	sql = psprintf("SELECT job_id, started_by::oid, status, dry_run, timeout_seconds, "
				   "  records_loaded, pages_fetched, resume_count, run_context ? 'checkpoint', "
				   "  run_context #>> '{checkpoint,skip}', run_context #>> '{checkpoint,page_index}', "
				   "  run_context #>> '{checkpoint,total_records}', run_context #>> '{checkpoint,next_url}', "
				   "  run_context #>> '{checkpoint,cursor}', parameters, settings, "
				   "  coalesce((run_context ->> 'retries')::int, 0), run_context ->> 'target', "
				   "  run_context #>> '{staging,table}', "
				   "  run_context #>> '{checkpoint,sequential_from_page}', "
				   "  coalesce(run_context ->> 'expected_total', '-1'), "
				   "  coalesce(run_context ->> 'partitions_total', '-1'), "
				   "  run_context #>> '{checkpoint,partition_index}', "
				   "  coalesce(run_context ->> 'rejected', '0'), "
				   "  coalesce(run_context ->> 'sample_pages', '0') "
				   "FROM %s WHERE run_id = $1::bigint", etl_qualified("dw_etl_runs"));
	if (etl_spi_run(sql, 1, args, SPI_OK_SELECT) == 0)
		elog(ERROR, "etl_exec run " INT64_FORMAT " does not exist", run_id);

	row->run_id = run_id;
	row->job_id = pg_strtoint32(etl_spi_value(cxt, 1));
	row->role_oid = (Oid) strtoul(etl_spi_value(cxt, 2), NULL, 10);
	row->status = etl_spi_value(cxt, 3);
	row->dry_run = strcmp(etl_spi_value(cxt, 4), "t") == 0;
	row->timeout_seconds = pg_strtoint32(etl_spi_value(cxt, 5));
	row->records_loaded = pg_strtoint64(etl_spi_value(cxt, 6));
	row->pages_fetched = pg_strtoint64(etl_spi_value(cxt, 7));
	row->resume_count = pg_strtoint32(etl_spi_value(cxt, 8));
	row->has_checkpoint = strcmp(etl_spi_value(cxt, 9), "t") == 0;
	if (row->has_checkpoint)
	{
		if ((v = etl_spi_value(cxt, 10)) != NULL)
			row->checkpoint.skip = pg_strtoint64(v);
		if ((v = etl_spi_value(cxt, 11)) != NULL)
			row->checkpoint.page_index = pg_strtoint32(v);
		if ((v = etl_spi_value(cxt, 12)) != NULL)
			row->checkpoint.total_records = pg_strtoint64(v);
		row->checkpoint.next_url = etl_spi_value(cxt, 13);
		row->checkpoint.cursor = etl_spi_value(cxt, 14);
	}
	row->parameters = etl_jsonb_from_cstring(cxt, etl_spi_value(cxt, 15));
	settings = etl_jsonb_from_cstring(cxt, etl_spi_value(cxt, 16));
	row->retries = pg_strtoint32(etl_spi_value(cxt, 17));
	row->target = etl_spi_value(cxt, 18);
	row->staging_table = etl_spi_value(cxt, 19);
	if (row->has_checkpoint && (v = etl_spi_value(cxt, 20)) != NULL)
		row->checkpoint.sequential_from_page = pg_strtoint32(v);
	row->expected_total = pg_strtoint64(etl_spi_value(cxt, 21));
	row->partitions_total = pg_strtoint32(etl_spi_value(cxt, 22));
	row->checkpoint.partition_index = row->partitions_total < 0 ? -1 : 0;
	if (row->has_checkpoint && row->partitions_total >= 0 && (v = etl_spi_value(cxt, 23)) != NULL)
		row->checkpoint.partition_index = pg_strtoint32(v);
	/* (records rejected are committed with the checkpoint, so go with it) */
	row->checkpoint.rejected = pg_strtoint64(etl_spi_value(cxt, 24));
	row->sample_pages = pg_strtoint32(etl_spi_value(cxt, 25));
	SPI_finish();

	read_run_settings(settings, &row->settings);
}

static void
push_key(JsonbParseState **state, const char *key)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = (char *) key;
	v.val.string.len = strlen(key);
	pushJsonbValue(state, WJB_KEY, &v);
}

static void
push_int(JsonbParseState **state, const char *key, int64 value)
{
	JsonbValue	v;

	push_key(state, key);
	v.type = jbvNumeric;
	v.val.numeric = int64_to_numeric(value);
	pushJsonbValue(state, WJB_VALUE, &v);
}

static void
push_text(JsonbParseState **state, const char *key, const char *value)
{
	JsonbValue	v;

	if (value == NULL)
		return;					/* absent, as jsonb_strip_nulls would leave it */
	push_key(state, key);
	v.type = jbvString;
	v.val.string.val = (char *) value;
	v.val.string.len = strlen(value);
	pushJsonbValue(state, WJB_VALUE, &v);
}

/*
 * What a checkpoint write merges into run_context:
 * {"checkpoint": {...}, "retries": n[, "expected_total": n][, "rejected": n]}.
 */
static Jsonb *
checkpoint_patch(const EtlCheckpoint *cp, int retries, int64 expected_total)
{
	JsonbParseState *state = NULL;
	char		saved_at[MAXDATELEN + 1];

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	push_key(&state, "checkpoint");
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	push_int(&state, "skip", cp->skip);
	push_int(&state, "page_index", cp->page_index);
	push_int(&state, "total_records", cp->total_records);
	push_text(&state, "saved_at",
			  JsonEncodeDateTime(saved_at, TimestampTzGetDatum(GetCurrentTimestamp()),
								 TIMESTAMPTZOID, NULL));
	push_text(&state, "next_url", cp->next_url);
	push_text(&state, "cursor", cp->cursor);
	if (cp->sequential_from_page > 0)
		push_int(&state, "sequential_from_page", cp->sequential_from_page);
	if (cp->partition_index >= 0)
		push_int(&state, "partition_index", cp->partition_index);
	pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	push_int(&state, "retries", retries);
	if (expected_total >= 0)
		push_int(&state, "expected_total", expected_total);
	/* records the run rejected (dw_etl_rejects), over all its segments */
	if (cp->rejected > 0)
		push_int(&state, "rejected", cp->rejected);
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
}

/*
 * Record the checkpoint of everything loaded so far (same transaction).
 *
 * With per-page checkpoints this runs for every page: one saved plan, and
 * the patch merged into run_context built here as jsonb, so the statement
 * has nothing to parse or plan per page.  It goes through SPI like any
 * other UPDATE: triggers, constraints, rules, auditing and statistics
 * hooks on dw_etl_runs all see it.
 */
void
etl_save_checkpoint(int64 run_id, const EtlCheckpoint *cp, int64 pages_fetched,
					int64 expected_total, int retries)
{
	static SPIPlanPtr plan = NULL;
	static MemoryContext write_cxt = NULL;
	MemoryContext caller_cxt;
	Datum		values[4];

	/* the caller's context may live as long as the run: not there */
	if (write_cxt == NULL)
		write_cxt = AllocSetContextCreate(TopMemoryContext, "etl_exec checkpoint write",
										  ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(write_cxt);
	caller_cxt = MemoryContextSwitchTo(write_cxt);

	SPI_connect();
	if (plan == NULL)
	{
		Oid			types[4] = {INT8OID, INT8OID, INT8OID, JSONBOID};

		plan = SPI_prepare(psprintf("UPDATE %s SET records_loaded = $2, pages_fetched = $3, "
									"  run_context = run_context || $4 "
									"WHERE run_id = $1",
									etl_qualified("dw_etl_runs")), 4, types);
		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "etl_exec: could not prepare the checkpoint update");
	}
	values[0] = Int64GetDatum(run_id);
	values[1] = Int64GetDatum(cp->total_records);
	values[2] = Int64GetDatum(pages_fetched);
	values[3] = JsonbPGetDatum(checkpoint_patch(cp, retries, expected_total));
	if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "etl_exec: could not save the checkpoint of run " INT64_FORMAT, run_id);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("etl_exec run " INT64_FORMAT " is no longer in dw_etl_runs", run_id),
				 errdetail("Its row was deleted while the run was loading; its checkpoint cannot be saved.")));
	SPI_finish();
	MemoryContextSwitchTo(caller_cxt);
}

/*
 * Record the staging table a replace run made, in the transaction that
 * made it: a resume takes this table and no other.
 */
void
etl_record_staging(int64 run_id, const char *staging)
{
	const char *args[2];

	SPI_connect();
	args[0] = int64_str(run_id);
	args[1] = staging;
	etl_spi_run(psprintf("UPDATE %s SET run_context = run_context || "
					 "jsonb_build_object('staging', jsonb_build_object('table', $2::text)) "
					 "WHERE run_id = $1::bigint", etl_qualified("dw_etl_runs")),
			2, args, SPI_OK_UPDATE);
	SPI_finish();
}

/*
 * A sample run (etl_infer_table) of a new dry run: how many pages it
 * samples, in the run's context (it has no target; its report is the
 * keys' statistics, type_infer.c).
 */
void
etl_record_sample(int64 run_id, int32 sample_pages)
{
	const char *args[2];

	SPI_connect();
	args[0] = int64_str(run_id);
	args[1] = psprintf("%d", sample_pages);
	etl_spi_run(psprintf("UPDATE %s SET run_context = run_context || "
						 "jsonb_build_object('sample_pages', $2::int) "
						 "WHERE run_id = $1::bigint", etl_qualified("dw_etl_runs")),
				2, args, SPI_OK_UPDATE);
	SPI_finish();
}

/*
 * A column the run added for a new record key (on_new_keys = add_columns),
 * in the transaction of the page that first carried it:
 * run_context.added_columns gets {"column", "type", "page"}.
 */
void
etl_record_added_column(int64 run_id, const char *column, const char *type, int32 page_index)
{
	const char *args[4];

	SPI_connect();
	args[0] = int64_str(run_id);
	args[1] = column;
	args[2] = type;
	args[3] = psprintf("%d", page_index + 1);
	etl_spi_run(psprintf("UPDATE %s SET run_context = run_context || jsonb_build_object('added_columns', "
						 "  coalesce(run_context -> 'added_columns', '[]'::jsonb) || jsonb_build_array("
						 "    jsonb_build_object('column', $2::text, 'type', $3::text, 'page', $4::int))) "
						 "WHERE run_id = $1::bigint", etl_qualified("dw_etl_runs")),
				4, args, SPI_OK_UPDATE);
	SPI_finish();
}

/*
 * Record when the API accepts the run's requests again (0: no such wait),
 * for etl_resume_pending: run_context.resume_after.
 */
void
etl_record_resume_after(int64 run_id, TimestampTz resume_after)
{
	const char *args[2];

	SPI_connect();
	args[0] = int64_str(run_id);
	args[1] = resume_after == 0 ? NULL :
		psprintf("%.3f", (double) (resume_after - SetEpochTimestamp()) / USECS_PER_SEC);
	etl_spi_run(psprintf("UPDATE %s SET run_context = (run_context - 'resume_after') || "
						 "  CASE WHEN $2 IS NULL THEN '{}'::jsonb "
						 "  ELSE jsonb_build_object('resume_after', pg_catalog.to_timestamp($2::float8)) END "
						 "WHERE run_id = $1::bigint", etl_qualified("dw_etl_runs")),
				2, args, SPI_OK_UPDATE);
	SPI_finish();
}

/*
 * Count a response a response rule ignored (run_context.ignored_responses,
 * with the last one's status), in the transaction that commits the pages
 * before it.
 */
void
etl_record_ignored_response(int64 run_id, long status)
{
	const char *args[2];

	SPI_connect();
	args[0] = int64_str(run_id);
	args[1] = psprintf("%ld", status);
	etl_spi_run(psprintf("UPDATE %s SET run_context = run_context || jsonb_build_object("
						 "  'ignored_responses', coalesce((run_context ->> 'ignored_responses')::int, 0) + 1, "
						 "  'last_ignored_status', $2::int) "
						 "WHERE run_id = $1::bigint", etl_qualified("dw_etl_runs")),
				2, args, SPI_OK_UPDATE);
	SPI_finish();
}

/*
 * Record how the run (segment) ended, in the transaction that commits its
 * last rows and checkpoint, and NOTIFY etl_exec_run listeners on commit.
 */
void
etl_finish_run(int64 run_id, const char *status, int64 pages_fetched, int64 segment_ms,
			   int64 commits, int64 commit_us, const char *error_message,
			   const char *sqlstate, const char *dry_run_report)
{
	const char *args[9];
	char	   *sql;

	SPI_connect();
	args[0] = int64_str(run_id);
	args[1] = status;
	args[2] = int64_str(segment_ms);
	args[3] = error_message;
	args[4] = sqlstate;
	/* a dry run's report shows values of records: an echoed secret is redacted */
	args[5] = etl_redact_json_text(dry_run_report);
	args[6] = int64_str(pages_fetched);
	args[7] = int64_str(commits);
	args[8] = int64_str(commit_us);
	sql = psprintf("WITH u AS ("
				   " UPDATE %s SET status = $2, finished_at = clock_timestamp(), "
				   "   duration_ms = coalesce(duration_ms, 0) + $3::bigint, "
				   "   error_message = $4, sqlstate = $5, pages_fetched = $7::bigint, worker_pid = NULL, "
				   "   run_context = %s._etl_add_segment(run_context, jsonb_build_object("
				   "       'started_at', segment_started_at, 'ended_at', clock_timestamp(), 'status', $2, "
				   "       'records_loaded', records_loaded, 'pages_fetched', $7::bigint, "
				   "       'commits', $8::bigint, 'commit_ms', round($9::bigint / 1000.0, 1))) "
				   "     || CASE WHEN $6 IS NULL THEN '{}'::jsonb "
				   "        ELSE jsonb_build_object('dry_run', $6::jsonb) END "
				   " WHERE run_id = $1::bigint "
				   " RETURNING run_id, job_id, status, records_loaded) "
				   "SELECT pg_notify('etl_exec_run', row_to_json(u)::text) FROM u",
				   etl_qualified("dw_etl_runs"), quote_identifier(etl_extension_schema()));
	etl_spi_run(sql, 9, args, SPI_OK_SELECT);
	SPI_finish();
}

/*
 * What pg_stat_activity shows for the worker: live progress between
 * commits, which the etl_run_progress view reads.
 */
void
etl_report_activity(int64 run_id, const EtlCheckpoint *cp, int64 pages_fetched,
					double rows_per_second, int64 expected_total, int retries)
{
	char		activity[256];

	snprintf(activity, sizeof(activity),
			 "etl_exec run " INT64_FORMAT ": " INT64_FORMAT " pages, " INT64_FORMAT " records, "
			 "%.0f rows/s, expected " INT64_FORMAT ", %d retries",
			 run_id, pages_fetched, cp->total_records, rows_per_second, expected_total, retries);
	/* (with the rate-limit wait, while there is one: host_budget.c) */
	etl_activity_publish(activity);
}

/* The parameters of partition `index` of a run, as frozen when it started. */
Jsonb *
etl_read_partition(int64 run_id, int32 index)
{
	MemoryContext cxt = CurrentMemoryContext;
	const char *args[2];
	Jsonb	   *result;

	SPI_connect();
	args[0] = int64_str(run_id);
	args[1] = psprintf("%d", index);
	if (etl_spi_run(psprintf("SELECT parameters FROM %s WHERE run_id = $1::bigint AND partition_index = $2::int",
							 etl_qualified("dw_etl_run_partitions")), 2, args, SPI_OK_SELECT) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("etl_exec run " INT64_FORMAT " has no partition %d in dw_etl_run_partitions", run_id, index),
				 errhint("The run's frozen partitions were deleted; start the job over with SELECT etl_execute_job(job_id).")));
	result = etl_jsonb_from_cstring(cxt, etl_spi_value(cxt, 1));
	SPI_finish();
	return result;
}
