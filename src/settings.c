/*-------------------------------------------------------------------------
 *
 * settings.c
 *	  The etl_exec.* settings (GUCs), and the snapshot of them that a SQL
 *	  caller stores with each run so that its worker obeys the caller's
 *	  session (a SET etl_exec.... applies to the runs that session starts).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "etl_exec.h"

/*
 * The settings' values, for the GUC machinery only: the rest of the module
 * reads them through the snapshot a run stores (etl_settings_snapshot) or,
 * for the server-wide ones, through the accessors below.
 */
static int	etl_default_timeout_seconds = 300;
static int	etl_checkpoint_interval_seconds = 60;
static int	etl_request_timeout_ms = 60000;
static int	etl_connect_timeout_ms = 10000;
static int	etl_max_retries = 3;
static int	etl_default_concurrency = 4;
static int	etl_retry_base_delay_ms = 500;
static int	etl_max_response_bytes = 256 * 1024 * 1024;
static int	etl_max_bytes_in_flight = 512 * 1024 * 1024;
static int	etl_max_concurrency = 16;
static int	etl_low_speed_time_seconds = 30;
static char *etl_allowed_hosts = NULL;
static char *etl_user_agent = NULL;
static char *etl_ca_file = NULL;
static int	etl_run_retention_days = 90;
static int	etl_max_workers = 4;

/*
 * A value that goes into a request line or header must be one line of
 * text: a CR or LF (or any other control character) in it would let it end
 * the header and start another, or a second request.
 */
bool
etl_header_value_is_safe(const char *value)
{
	for (const unsigned char *p = (const unsigned char *) value; *p; p++)
		if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
			return false;
	return true;
}

static bool
check_user_agent(char **newval, void **extra, GucSource source)
{
	if (*newval && !etl_header_value_is_safe(*newval))
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errmsg("etl_exec.user_agent must not contain control characters such as line breaks");
		GUC_check_errhint("It is sent as the User-Agent header: one line of printable text.");
		return false;
	}
	return true;
}

void
etl_define_settings(void)
{
	DefineCustomIntVariable("etl_exec.default_timeout_seconds",
							"Run timeout used when neither the call nor the job gives one.",
							"A run that reaches its timeout stops with a checkpoint and can be resumed.",
							&etl_default_timeout_seconds,
							300, 1, INT_MAX,
							PGC_USERSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("etl_exec.checkpoint_interval_seconds",
							"Longest time between two commits of loaded rows and their checkpoint.",
							"A job's checkpoint_interval_seconds overrides it. 0 commits every page.",
							&etl_checkpoint_interval_seconds,
							60, 0, 86400,
							PGC_USERSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("etl_exec.request_timeout_ms",
							"Time limit of one HTTP request (always capped by the time the run has left).",
							NULL,
							&etl_request_timeout_ms,
							60000, 100, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("etl_exec.connect_timeout_ms",
							"Time limit for connecting to an API server.",
							NULL,
							&etl_connect_timeout_ms,
							10000, 100, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("etl_exec.max_retries",
							"Retries of a request after a connection error, a timeout, 429 or 5xx.",
							"A job's max_retries overrides it.",
							&etl_max_retries,
							3, 0, 100,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("etl_exec.default_concurrency",
							"Most requests of a run in flight at once, for jobs whose concurrency is NULL.",
							"Offset and page paging keep this many pages in flight and load them in page order; 1 sends one request at a time.",
							&etl_default_concurrency,
							4, 1, ETL_MAX_CONCURRENCY,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("etl_exec.retry_base_delay_ms",
							"First retry delay; it doubles with each retry, with jitter.",
							NULL,
							&etl_retry_base_delay_ms,
							500, 0, 600000,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("etl_exec.max_response_bytes",
							"Largest response body a run accepts, counted after decompression; a larger one fails the run.",
							NULL,
							&etl_max_response_bytes,
							256 * 1024 * 1024, 1024, INT_MAX,
							PGC_SUSET, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomIntVariable("etl_exec.max_bytes_in_flight",
							"Most bytes of response bodies one run holds at once, across all its requests in flight; more fails the run.",
							"Bounds a worker's memory whatever the concurrency: each response is bounded by etl_exec.max_response_bytes, all of them together by this.",
							&etl_max_bytes_in_flight,
							512 * 1024 * 1024, 1024 * 1024, INT_MAX,
							PGC_SUSET, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomIntVariable("etl_exec.max_concurrency",
							"Most requests of a run in flight at once, whatever the job's concurrency or etl_exec.default_concurrency ask for.",
							"A ceiling only a superuser sets: a higher concurrency is lowered to it.",
							&etl_max_concurrency,
							16, 1, ETL_MAX_CONCURRENCY,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("etl_exec.low_speed_time_seconds",
							"A transfer that moves less than one byte a second for this long is cut.",
							NULL,
							&etl_low_speed_time_seconds,
							30, 1, 3600,
							PGC_USERSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomStringVariable("etl_exec.allowed_hosts",
							   "Comma-separated host names runs may connect to; empty allows any.",
							   "Checked for the first URL, every next link and every redirect.",
							   &etl_allowed_hosts,
							   "",
							   PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("etl_exec.user_agent",
							   "User-Agent header sent with every request.",
							   NULL,
							   &etl_user_agent,
							   "etl_exec/0.1",
							   PGC_SUSET, 0, check_user_agent, NULL, NULL);
	DefineCustomStringVariable("etl_exec.ca_file",
							   "File of CA certificates to verify API servers with (empty: the system's).",
							   NULL,
							   &etl_ca_file,
							   "",
							   PGC_SUSET, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("etl_exec.run_retention_days",
							"How long etl_prune_runs() keeps finished runs (0 keeps them forever).",
							NULL,
							&etl_run_retention_days,
							90, 0, 36500,
							PGC_SUSET, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("etl_exec.max_workers",
							"Most runs that run at once on the server; runs beyond it wait, queued.",
							"At most max_worker_processes. A finishing worker starts the oldest queued run of its database.",
							&etl_max_workers,
							4, 1, 1024,
							PGC_SIGHUP, 0, NULL, NULL, NULL);

	MarkGUCPrefixReserved("etl_exec");
}

static void
append_json_string(StringInfo buf, const char *key, const char *value)
{
	escape_json(buf, key);
	appendStringInfoChar(buf, ':');
	escape_json(buf, value ? value : "");
}

/*
 * _etl_settings() returns the settings in force in this session as jsonb,
 * ready to be stored with a run.
 */
PG_FUNCTION_INFO_V1(etl_settings_snapshot);
Datum
etl_settings_snapshot(PG_FUNCTION_ARGS)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf,
					 "{\"default_timeout_seconds\":%d,"
					 "\"checkpoint_interval_seconds\":%d,"
					 "\"request_timeout_ms\":%d,"
					 "\"connect_timeout_ms\":%d,"
					 "\"max_retries\":%d,"
					 "\"default_concurrency\":%d,"
					 "\"retry_base_delay_ms\":%d,"
					 "\"max_response_bytes\":%d,"
					 "\"max_bytes_in_flight\":%d,"
					 "\"max_concurrency\":%d,"
					 "\"low_speed_time_seconds\":%d,"
					 "\"run_retention_days\":%d,",
					 etl_default_timeout_seconds,
					 etl_checkpoint_interval_seconds,
					 etl_request_timeout_ms,
					 etl_connect_timeout_ms,
					 etl_max_retries,
					 etl_default_concurrency,
					 etl_retry_base_delay_ms,
					 etl_max_response_bytes,
					 etl_max_bytes_in_flight,
					 etl_max_concurrency,
					 etl_low_speed_time_seconds,
					 etl_run_retention_days);
	append_json_string(&buf, "allowed_hosts", etl_allowed_hosts);
	appendStringInfoChar(&buf, ',');
	append_json_string(&buf, "user_agent", etl_user_agent);
	appendStringInfoChar(&buf, ',');
	append_json_string(&buf, "ca_file", etl_ca_file);
	appendStringInfoChar(&buf, '}');

	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/* etl_exec.max_workers: how many runs work at once in this server */
int
etl_setting_max_workers(void)
{
	return etl_max_workers;
}
