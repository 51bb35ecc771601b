/*-------------------------------------------------------------------------
 *
 * host_budget.c
 *	  Request budgets per host, shared by every run of the server: the
 *	  limits of dw_etl_hosts (requests per second, requests in flight) and
 *	  what the API's own rate-limit headers say (Retry-After, X-RateLimit-*,
 *	  the IETF RateLimit fields, as rate_headers.c reads them), and a run's
 *	  waits on them.
 *
 * The contract, per request (the HTTP engine may have several in flight):
 *
 *	  key = etl_host_budget_key(url);
 *	  if (etl_host_budget_try_start(key, &until, &why))  -- counted: send it
 *	  ... else ask again at `until` (never blocks, never waits itself)
 *	  etl_rate_headers_reset(&h); each response header line ->
 *	  etl_rate_header_line(&h, line, len)  -- rate_headers.c, from the curl
 *	                                         header callback
 *	  etl_host_budget_finish(key, status, &h);  -- once per started request
 *
 * The HTTP engine (http_client.c) waits while it drives the run's other
 * requests, shows a long wait in pg_stat_activity (etl_rate_wait_begin),
 * and when a wait would pass the run's deadline stops the run at once and
 * records when the host accepts requests again (etl_rate_limit_stop),
 * which the worker stores as run_context.resume_after
 * (etl_rate_limit_stopped).
 *
 * A host's key is its lower-case name (or address) with ":port" when the
 * port is not the scheme's default -- what dw_etl_hosts.host names and
 * dw_etl_secrets.allowed_hosts names.  Requests to a host are spaced
 * 1/max_requests_per_second apart (plus ETL_SPREAD_US spread over each
 * second, so that a request delayed on the way does not land one too many
 * in a second of the API's clock); never more than max_concurrency are in
 * flight; a quota the API reports (remaining, reset) is counted down by
 * every request started after the response that reported it, so N
 * requests in flight do not overshoot it, and when it is spent requests
 * wait for the reset; a 429 pauses every run's requests to the host until
 * its Retry-After (else its quota's reset, else a second) has passed.  (A
 * 503's Retry-After is the request's own retry wait: a server in trouble,
 * which the HTTP client retries a limited number of times.)
 *
 * Shared memory, without shared_preload_libraries: a fixed table of
 * ETL_HOST_SLOTS hosts under a spinlock (critical sections are a lookup
 * and a few assignments; nothing in them can fail).  On PostgreSQL 17 and
 * later it is a named DSM segment (GetNamedDSMSegment); on 15, which has
 * no DSM registry, a named struct in the main shared memory segment,
 * allocated by the first process that needs it (ShmemInitStruct under
 * AddinShmemInitLock) from the segment's slack -- PostgreSQL sizes the
 * segment with 100 kB to spare (more after rounding to pages) for small
 * structures nobody estimates; this one takes about 40 kB, once.  Both
 * live exactly as long as the server's shared memory: a crash restart
 * (a SIGKILLed worker) reinitialises the main segment and with it the DSM
 * registry, and destroys the old DSM segments, so no count outlives the
 * processes that held it.  See etl_shared_struct in compat.h.
 *
 * Counts a process holds (requests started and not finished) are known to
 * it: a run's end (etl_host_budget_release_all) and the process's exit
 * (a before_shmem_exit callback, which runs on ERROR exits too) give them
 * back.  A full table is not an error: a host that finds no free entry
 * (and no idle one to take over) is not budgeted, and the process says so
 * once in its log.
 *
 * dw_etl_hosts is per database, the state per server: runs of another
 * database share a host's state and apply their own database's limits.
 * A run reads the limits when it starts (etl_host_budget_load).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "etl_exec.h"

#define ETL_HOST_SLOTS 128
#define ETL_HOST_KEY_LEN 272	/* a 253-character name, ":65535", NUL */
#define ETL_SPREAD_US 30000		/* spread over each second of spacing */
#define ETL_CONCURRENCY_POLL_MS 20	/* a full host: ask again this soon */
#define ETL_UNKNOWN_RESET_MS 1000	/* quota spent, no reset said: wait this */
#define ETL_BARE_429_PAUSE_MS 1000	/* a 429 that says nothing: pause this */
#define ETL_MIN_PAUSE_MS 100	/* the shortest pause a 429 makes */
#define ETL_MAX_WAIT_MS INT64CONST(86400000)	/* no header makes us wait longer */

typedef struct HostSlot
{
	uint32		hash;
	uint32		generation;		/* bumped when another host takes it */
	char		key[ETL_HOST_KEY_LEN];	/* "": free */
	int32		in_flight;
	TimestampTz next_start;		/* spacing: no request before */
	TimestampTz paused_until;	/* a 429 (its Retry-After) */
	int64		quota_left;		/* -1: unknown */
	TimestampTz quota_reset_at; /* 0: unknown */
	TimestampTz last_used;
	int64		started;		/* requests started (since server start) */
	int64		answered;		/* responses had (idem) */
	bool		reports_quota;	/* its answers have said what quota is left */
	int64		throttled;		/* 429s seen */
} HostSlot;

typedef struct HostBudgetShared
{
	slock_t		mutex;
	HostSlot	slots[ETL_HOST_SLOTS];
} HostBudgetShared;

/* this database's dw_etl_hosts, read when a run starts */
typedef struct HostLimit
{
	char	   *key;
	double		rps;			/* 0: no limit */
	int			max_concurrency;	/* 0: no limit */
} HostLimit;

static HostBudgetShared *budget = NULL;
static MemoryContext limits_cxt = NULL;
static HostLimit *limits = NULL;
static int	nlimits = 0;

/* what this process holds, per slot (and which host held the slot then) */
static int32 held[ETL_HOST_SLOTS];
static uint32 held_generation[ETL_HOST_SLOTS];
static bool warned_full = false;

/* the run's wait, as pg_stat_activity shows it, and a stop for one */
static char activity_figures[256];
static char waiting_host[ETL_HOST_KEY_LEN];
static TimestampTz waiting_until = 0;
static char stopped_host[ETL_HOST_KEY_LEN];
static TimestampTz stopped_until = 0;

static void release_all_at_exit(int code, Datum arg);

/* a timestamp as milliseconds since the Unix epoch */
static int64
unix_ms(TimestampTz t)
{
	return t / 1000 + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;
}

/* ---------- the shared table ---------- */

static void
init_budget(void *ptr)
{
	HostBudgetShared *b = (HostBudgetShared *) ptr;

	memset(b, 0, sizeof(*b));
	SpinLockInit(&b->mutex);
	for (int i = 0; i < ETL_HOST_SLOTS; i++)
		b->slots[i].quota_left = -1;
}

static void
attach_budget(void)
{
	if (budget != NULL)
		return;
	budget = etl_shared_struct("etl_exec host budgets", sizeof(HostBudgetShared), init_budget);
	memset(held, 0, sizeof(held));
	before_shmem_exit(release_all_at_exit, (Datum) 0);
}

static uint32
key_hash(const char *key)
{
	uint32		h = 2166136261u;

	for (const char *p = key; *p; p++)
		h = (h ^ (unsigned char) *p) * 16777619u;
	return h;
}

/* may another host take this slot over? (spinlock held) */
static bool
slot_idle(const HostSlot *s, TimestampTz now)
{
	return s->in_flight == 0 && s->paused_until <= now && s->next_start <= now &&
		(s->quota_reset_at <= now || s->quota_left != 0);
}

/*
 * The slot of key (spinlock held), taken when the host has none: a free
 * one, else the idle one used least recently.  -1 when all are busy.
 */
static int
find_slot(const char *key, uint32 hash, bool create, TimestampTz now)
{
	int			victim = -1;

	for (int i = 0; i < ETL_HOST_SLOTS; i++)
	{
		HostSlot   *s = &budget->slots[i];

		if (s->key[0] != '\0' && s->hash == hash && strcmp(s->key, key) == 0)
			return i;
		if (!create)
			continue;
		if (s->key[0] == '\0')
		{
			if (victim < 0 || budget->slots[victim].key[0] != '\0')
				victim = i;
		}
		else if (slot_idle(s, now) &&
				 (victim < 0 || (budget->slots[victim].key[0] != '\0' &&
								 s->last_used < budget->slots[victim].last_used)))
			victim = i;
	}
	if (victim >= 0)
	{
		HostSlot   *s = &budget->slots[victim];
		uint32		generation = s->generation + 1;

		memset(s, 0, sizeof(*s));
		s->generation = generation;
		s->hash = hash;
		strlcpy(s->key, key, sizeof(s->key));
		s->quota_left = -1;
	}
	return victim;
}

static const HostLimit *
limit_of(const char *key)
{
	for (int i = 0; i < nlimits; i++)
		if (strcmp(limits[i].key, key) == 0)
			return &limits[i];
	return NULL;
}

/*
 * The key of the host a URL goes to: its lower-case host name (or
 * address), with ":port" when that is not the scheme's default.
 */
char *
etl_host_budget_key(const char *url)
{
	char	   *host = etl_url_host(url);
	int			port = etl_url_port(url);
	bool		https = pg_strncasecmp(url, "https:", 6) == 0;
	bool		http = pg_strncasecmp(url, "http:", 5) == 0;

	for (char *p = host; *p; p++)
		*p = pg_ascii_tolower((unsigned char) *p);
	if ((https && port == 443) || (http && port == 80))
		return host;
	return psprintf("%s:%d", host, port);
}

/*
 * Read this database's dw_etl_hosts (SPI; a worker, in a transaction, when
 * a run starts), attach the shared table, and forget the run before's
 * waits.  Without the table (an extension not yet updated) no host has
 * limits.
 */
void
etl_host_budget_load(void)
{
	MemoryContext old;
	char	   *sql;

	attach_budget();
	waiting_host[0] = '\0';
	stopped_host[0] = '\0';
	stopped_until = 0;
	activity_figures[0] = '\0';
	if (limits_cxt == NULL)
		limits_cxt = AllocSetContextCreate(TopMemoryContext, "etl_exec host limits",
										   ALLOCSET_SMALL_SIZES);
	MemoryContextReset(limits_cxt);
	limits = NULL;
	nlimits = 0;

	SPI_connect();
	if (etl_spi_run(psprintf("SELECT pg_catalog.to_regclass(%s)",
							 quote_literal_cstr(etl_qualified("dw_etl_hosts"))),
					0, NULL, SPI_OK_SELECT) == 1 &&
		etl_spi_value(CurrentMemoryContext, 1) != NULL)
	{
		uint64		n;

		sql = psprintf("SELECT host, coalesce(max_requests_per_second, 0)::float8, "
					   "  coalesce(max_concurrency, 0) FROM %s "
					   "WHERE max_requests_per_second IS NOT NULL OR max_concurrency IS NOT NULL",
					   etl_qualified("dw_etl_hosts"));
		n = etl_spi_run(sql, 0, NULL, SPI_OK_SELECT);
		old = MemoryContextSwitchTo(limits_cxt);
		limits = palloc0(sizeof(HostLimit) * Max(n, 1));
		for (uint64 i = 0; i < n; i++)
		{
			limits[i].key = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
			limits[i].rps = strtod(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2), NULL);
			limits[i].max_concurrency = atoi(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3));
		}
		nlimits = (int) n;
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
}

/* the gap between two requests to a host limited to rps a second */
static int64
spacing_us(double rps)
{
	double		us = (1000000.0 + ETL_SPREAD_US) / rps;

	return (int64) Min(us, (double) ETL_MAX_WAIT_MS * 1000);
}

/*
 * May a request to host start now?  True: it is counted (one more in
 * flight, a request of the host's quota spent, the next one spaced after
 * it).  False: *wait_until says when to ask again and *why what it waits
 * for (the latest of what holds it back).  Never blocks.
 */
bool
etl_host_budget_try_start(const char *host, TimestampTz *wait_until, EtlBudgetWait *why)
{
	const HostLimit *limit = limit_of(host);
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz until = 0;
	EtlBudgetWait reason = ETL_BUDGET_GO;
	uint32		hash = key_hash(host);
	int			i;

	attach_budget();
	SpinLockAcquire(&budget->mutex);
	i = find_slot(host, hash, true, now);
	if (i >= 0)
	{
		HostSlot   *s = &budget->slots[i];

		if (s->quota_reset_at != 0 && s->quota_reset_at <= now)
		{
			/* the window the quota was for is over */
			s->quota_left = -1;
			s->quota_reset_at = 0;
		}
		/*
		 * The first request to a host nobody has had an answer from goes
		 * alone: its answer says whether the API keeps a quota, before a
		 * run's whole window of requests can overshoot it.  So does the
		 * first of a new quota window, for a host that reports its quota.
		 */
		if ((s->answered == 0 || (s->reports_quota && s->quota_left < 0)) && s->in_flight > 0)
		{
			until = TimestampTzPlusMilliseconds(now, ETL_CONCURRENCY_POLL_MS);
			reason = ETL_BUDGET_CONCURRENCY;
		}
		if (limit && limit->max_concurrency > 0 && s->in_flight >= limit->max_concurrency)
		{
			until = TimestampTzPlusMilliseconds(now, ETL_CONCURRENCY_POLL_MS);
			reason = ETL_BUDGET_CONCURRENCY;
		}
		if (limit && limit->rps > 0 && s->next_start > now && s->next_start >= until)
		{
			until = s->next_start;
			reason = ETL_BUDGET_SPACING;
		}
		if (s->quota_left == 0 && s->quota_reset_at >= until)
		{
			until = s->quota_reset_at;
			reason = ETL_BUDGET_QUOTA;
		}
		if (s->paused_until > now && s->paused_until >= until)
		{
			until = s->paused_until;
			reason = ETL_BUDGET_PAUSED;
		}
		if (reason == ETL_BUDGET_GO)
		{
			s->in_flight++;
			s->started++;
			s->last_used = now;
			if (s->quota_left > 0)
				s->quota_left--;
			if (limit && limit->rps > 0)
				s->next_start = now + spacing_us(limit->rps);
			if (held_generation[i] != s->generation)
			{
				held_generation[i] = s->generation;
				held[i] = 0;
			}
			held[i]++;
		}
	}
	SpinLockRelease(&budget->mutex);

	if (i < 0 && !warned_full)
	{
		warned_full = true;
		ereport(WARNING,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("etl_exec: the shared host budget table is full (%d hosts busy at once); requests to %s are not budgeted",
						ETL_HOST_SLOTS, host),
				 errhint("Fewer hosts at once; this process says it only once.")));
	}
	if (wait_until)
		*wait_until = until;
	if (why)
		*why = reason;
	return reason == ETL_BUDGET_GO;
}

/* one request this process started on slot i is over (spinlock held) */
static void
give_back(int i)
{
	HostSlot   *s = &budget->slots[i];

	if (held_generation[i] == s->generation && held[i] > 0)
	{
		held[i]--;
		if (s->in_flight > 0)
			s->in_flight--;
	}
}

/*
 * A request started with etl_host_budget_try_start ended (status 0: no
 * response, h may then be NULL).  What its response said about the host's
 * quota becomes every run's: a 429 pauses the host (Retry-After),
 * a remaining count (less the other requests still in flight, which the
 * API may not have counted yet) and its reset bound what may start.
 */
void
etl_host_budget_finish(const char *host, long status, const EtlRateHeaders *h)
{
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	if (budget == NULL)
		return;
	SpinLockAcquire(&budget->mutex);
	i = find_slot(host, key_hash(host), false, now);
	if (i >= 0)
	{
		HostSlot   *s = &budget->slots[i];
		int64		pause_ms = -1;

		give_back(i);
		s->last_used = now;
		if (status != 0)
			s->answered++;
		if (status == 429)
			s->throttled++;
		if (status == 429)
			pause_ms = (h && h->retry_after_ms >= 0) ? h->retry_after_ms :
				(h && h->remaining == 0 && h->reset_ms >= 0) ? h->reset_ms : ETL_BARE_429_PAUSE_MS;
		if (pause_ms >= 0)		/* (Retry-After: 0 must not make a busy loop) */
			s->paused_until = Max(s->paused_until,
								  TimestampTzPlusMilliseconds(now, Max(pause_ms, ETL_MIN_PAUSE_MS)));

		if (h && h->remaining >= 0)
		{
			int64		left = Max(h->remaining - s->in_flight, 0);
			TimestampTz reset_at = TimestampTzPlusMilliseconds(now, h->reset_ms >= 0 ? h->reset_ms
															   : ETL_UNKNOWN_RESET_MS);

			s->reports_quota = true;

			/* a later window's count replaces, one of the same window bounds */
			if (s->quota_left < 0 || s->quota_reset_at == 0 ||
				reset_at >= s->quota_reset_at + USECS_PER_SEC)
				s->quota_left = left;
			else
				s->quota_left = Min(s->quota_left, left);
			if (h->reset_ms >= 0 || s->quota_reset_at == 0)
				s->quota_reset_at = reset_at;
		}
	}
	SpinLockRelease(&budget->mutex);
}

/* Give back every request this process still counts (a run's end, an error). */
void
etl_host_budget_release_all(void)
{
	if (budget == NULL)
		return;
	SpinLockAcquire(&budget->mutex);
	for (int i = 0; i < ETL_HOST_SLOTS; i++)
		while (held[i] > 0 && held_generation[i] == budget->slots[i].generation)
			give_back(i);
	memset(held, 0, sizeof(held));
	SpinLockRelease(&budget->mutex);
}

static void
release_all_at_exit(int code, Datum arg)
{
	etl_host_budget_release_all();
}

/* ---------- the run's waits ---------- */

/* pg_stat_activity: the worker's figures, and the wait while it waits */
static void
publish(void)
{
	char		activity[512];

	if (waiting_host[0])
		snprintf(activity, sizeof(activity), "%s [rate limit: %s until " INT64_FORMAT "]",
				 activity_figures[0] ? activity_figures : "etl_exec run",
				 waiting_host, unix_ms(waiting_until));
	else
		strlcpy(activity, activity_figures, sizeof(activity));
	pgstat_report_activity(STATE_RUNNING, activity);
}

/* What the worker reports between pages (run_store.c's figures). */
void
etl_activity_publish(const char *figures)
{
	strlcpy(activity_figures, figures, sizeof(activity_figures));
	publish();
}

/* The run waits for host's budget until `until` (etl_run_progress shows it). */
void
etl_rate_wait_begin(const char *host, TimestampTz until)
{
	if (waiting_host[0] && waiting_until == until && strcmp(waiting_host, host) == 0)
		return;
	strlcpy(waiting_host, host, sizeof(waiting_host));
	waiting_until = until;
	publish();
}

void
etl_rate_wait_end(void)
{
	if (waiting_host[0] == '\0')
		return;
	waiting_host[0] = '\0';
	publish();
}

/*
 * The run stops: host accepts requests again only at `until`, past its
 * deadline.  (host NULL: forget it -- a new run.)
 */
void
etl_rate_limit_stop(const char *host, TimestampTz until)
{
	strlcpy(stopped_host, host ? host : "", sizeof(stopped_host));
	stopped_until = until;
}

/* Did the run stop for a rate limit?  Then which host, and until when. */
bool
etl_rate_limit_stopped(const char **host, TimestampTz *until)
{
	if (stopped_host[0] == '\0')
		return false;
	*host = stopped_host;
	*until = stopped_until;
	return true;
}

/* ---------- SQL: the shared state, for operators ---------- */

PG_FUNCTION_INFO_V1(etl_host_budgets_sql);

/*
 * etl_host_budgets(): every host of the shared table -- requests in flight,
 * next start the spacing allows, pause, quota left and its reset, and
 * requests started and 429s seen since the server started.
 */
Datum
etl_host_budgets_sql(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HostSlot   *copy = palloc(sizeof(HostSlot) * ETL_HOST_SLOTS);

	InitMaterializedSRF(fcinfo, 0);
	attach_budget();
	SpinLockAcquire(&budget->mutex);
	memcpy(copy, budget->slots, sizeof(HostSlot) * ETL_HOST_SLOTS);
	SpinLockRelease(&budget->mutex);

	for (int i = 0; i < ETL_HOST_SLOTS; i++)
	{
		HostSlot   *s = &copy[i];
		Datum		values[8];
		bool		nulls[8] = {0};

		if (s->key[0] == '\0')
			continue;
		values[0] = CStringGetTextDatum(s->key);
		values[1] = Int32GetDatum(s->in_flight);
		values[2] = TimestampTzGetDatum(s->next_start);
		nulls[2] = (s->next_start == 0);
		values[3] = TimestampTzGetDatum(s->paused_until);
		nulls[3] = (s->paused_until == 0);
		values[4] = Int64GetDatum(s->quota_left);
		nulls[4] = (s->quota_left < 0);
		values[5] = TimestampTzGetDatum(s->quota_reset_at);
		nulls[5] = (s->quota_reset_at == 0);
		values[6] = Int64GetDatum(s->started);
		values[7] = Int64GetDatum(s->throttled);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

