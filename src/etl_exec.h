/*-------------------------------------------------------------------------
 *
 * etl_exec.h
 *	  The map of the etl_exec module: its shared types, and each file's
 *	  prototypes under its name, in layers from the leaves up.
 *
 * A run's life, top down:
 *
 *	  SQL entry points   api.c, launcher.c   (caller.c: who called)
 *	  the worker         worker.c            (launch hand-shake, page loop)
 *	  one page           page.c              fetch -> read -> advance -> load
 *	  its parts          http_client.c (oauth.c, secrets.c: authentication)
 *	                     page_scan.c         (the one-pass page reader)
 *	                     page_records.c      (ndjson and csv pages as jsonb)
 *	                     pagination.c, job.c
 *	                     loader.c            (into the target table)
 *	                     page_table.c        (the loader's way round COPY)
 *	                     rejects.c           (records a run rejects)
 *	  the run store      run_store.c         (dw_etl_runs)
 *	  leaves             host_budget.c (rate_headers.c), run_clock.c, run_lock.c, ext_schema.c,
 *	                     target_kind.c, type_infer.c, json_path.c, key_resolver.c,
 *	                     copy_text.c, csv_scan.c, url.c, redact.c, settings.c,
 *	                     subxact.c, role_switch.c (one way to each)
 *
 * Every call between files points down this list (test/check_module_graph.sh
 * checks that there is no cycle).
 *
 *-------------------------------------------------------------------------
 */
#ifndef ETL_EXEC_H
#define ETL_EXEC_H

#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "storage/spin.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

/* an HTTP 4xx other than 408/429: the API refused the request */
#define ETL_ERRCODE_HTTP_REFUSED MAKE_SQLSTATE('E','T','4','0','0')

/*
 * Settings of one run, read in the SQL caller and stored with the run (the
 * worker never reads its own GUCs: a session's SET must apply).
 */
typedef struct EtlRunSettings
{
	int			checkpoint_interval_seconds;
	int			request_timeout_ms;
	int			connect_timeout_ms;
	int			max_retries;
	int			concurrency;	/* requests in flight at once */
	int			max_concurrency;	/* the superuser's ceiling on it */
	int			retry_base_delay_ms;
	int64		max_response_bytes;
	int64		max_bytes_in_flight;	/* all of a run's response buffers */
	int			low_speed_time_seconds;
	char	   *allowed_hosts;
	char	   *user_agent;
	char	   *ca_file;
} EtlRunSettings;

/* Why a run stopped short of succeeding, as far as the worker can tell. */
typedef enum EtlStopReason
{
	ETL_STOP_NONE = 0,
	ETL_STOP_DONE,				/* no more pages */
	ETL_STOP_TIMED_OUT,
	ETL_STOP_CANCELLED,
	ETL_STOP_INTERRUPTED		/* SIGTERM: pg_terminate_backend, shutdown */
} EtlStopReason;

/* Pagination state: exactly what the checkpoint stores. */
typedef struct EtlCheckpoint
{
	int64		skip;			/* records consumed so far (offset) */
	int32		page_index;		/* pages consumed so far */
	int64		total_records;	/* records loaded so far */
	char	   *next_url;		/* next_link / link_header: next request */
	char	   *cursor;			/* cursor: token for the next request */
	int32		sequential_from_page;	/* > 0: one request at a time from this
										 * page on (an offset page came back
										 * short without being the last) */
	int32		partition_index;	/* the partition being paged; -1: the run
									 * has none */
	int64		rejected;		/* records rejected so far (on_bad_record
								 * reject: run_context.rejected) */
} EtlCheckpoint;

/* ================ leaves ================ */

/*
 * host_budget.c: request budgets per host, shared by every run of the
 * server (dw_etl_hosts, and the API's rate-limit headers), and a run's
 * waits on them.  Per request: key = etl_host_budget_key(url);
 * etl_host_budget_try_start(key, ...) until it says go (never blocks);
 * feed each response header line to etl_rate_header_line (rate_headers.c,
 * from the curl header callback: it never pallocs or ereports); then
 * etl_host_budget_finish(key, status, &headers) exactly once.
 */
typedef struct EtlRateHeaders
{
	int64		retry_after_ms; /* Retry-After (seconds or HTTP date); -1: none */
	int64		remaining;		/* requests left in the window; -1: not said */
	int64		reset_ms;		/* ms from now until the window resets; -1: not said */
	/* each header family's own (combined into the two above) */
	int64		x_remaining;	/* X-RateLimit-Remaining */
	int64		x_reset_ms;		/* X-RateLimit-Reset: epoch s/ms or seconds to go */
	int64		ietf_remaining; /* RateLimit-Remaining */
	int64		ietf_reset_ms;	/* RateLimit-Reset */
	int64		structured_remaining;	/* RateLimit: remaining= / r= */
	int64		structured_reset_ms;	/* RateLimit: reset= / t= */
} EtlRateHeaders;

/* what a request that may not start yet waits for */
typedef enum EtlBudgetWait
{
	ETL_BUDGET_GO = 0,			/* it started */
	ETL_BUDGET_SPACING,			/* max_requests_per_second */
	ETL_BUDGET_CONCURRENCY,		/* max_concurrency (until: when to ask again) */
	ETL_BUDGET_QUOTA,			/* the API's remaining quota is spent */
	ETL_BUDGET_PAUSED			/* a 429 (its Retry-After) */
} EtlBudgetWait;

/* in rate_headers.c */
extern void etl_rate_headers_reset(EtlRateHeaders *h);
extern void etl_rate_header_line(EtlRateHeaders *h, const char *line, size_t len);

/* in host_budget.c */
extern char *etl_host_budget_key(const char *url);
extern void etl_host_budget_load(void);
extern bool etl_host_budget_try_start(const char *host, TimestampTz *wait_until,
									  EtlBudgetWait *why);
extern void etl_host_budget_finish(const char *host, long status, const EtlRateHeaders *h);
extern void etl_host_budget_release_all(void);
extern void etl_rate_wait_begin(const char *host, TimestampTz until);
extern void etl_rate_wait_end(void);
extern void etl_rate_limit_stop(const char *host, TimestampTz until);
extern bool etl_rate_limit_stopped(const char **host, TimestampTz *until);
extern void etl_activity_publish(const char *figures);

/* in settings.c */
extern int	etl_setting_max_workers(void);
extern void etl_define_settings(void);
extern bool etl_header_value_is_safe(const char *value);
extern Datum etl_settings_snapshot(PG_FUNCTION_ARGS);

/* in run_clock.c */
extern void etl_handle_sigterm(SIGNAL_ARGS);
extern bool etl_run_clock_reset(void);
extern void etl_set_deadline(TimestampTz deadline);
extern EtlStopReason etl_pending_stop(void);
extern EtlStopReason etl_stop_for_error(int sqlerrcode);
extern int64 etl_ms_since(TimestampTz start);
extern int64 etl_ms_until_deadline(void);
extern void etl_cap_lock_waits(void);

/* in run_lock.c: held by a worker as long as it runs the run; free = dead worker */
extern bool etl_run_lock_try_acquire(int64 run_id);
extern void etl_run_lock_release(int64 run_id);
extern bool etl_run_is_live(int64 run_id);
/* ... and the server-wide worker slots (etl_exec.max_workers) */
extern int	etl_worker_slots(void);
extern bool etl_worker_slot_try_acquire(void);
extern void etl_worker_slot_release(void);
extern int	etl_worker_slots_free(void);
extern void etl_job_claim_lock(int32 job_id);

/* in url.c */
extern char *etl_url_encode(const char *s);
extern char *etl_url_resolve(const char *base, const char *relative);
extern char *etl_url_host(const char *url);
extern int	etl_url_port(const char *url);
extern char *etl_url_redact(const char *url);
extern bool etl_url_holds_dot_segment(const char *value);

/* in redact.c */
extern void etl_redact_register(const char *value);
extern void etl_redact_register_secret(const char *value, const char *name);
extern char *etl_redact(const char *text);
extern char *etl_redact_url(const char *url);
extern void etl_redact_error(ErrorData *edata);
extern Jsonb *etl_redact_jsonb(Jsonb *jb);
extern char *etl_redact_json_text(const char *json);
extern void etl_redact_log(void);
extern void etl_redact_forget(void);
extern ErrorData *etl_catch_error(MemoryContext cxt);

/* in subxact.c */
typedef bool (*EtlSubxactStep) (void *arg);	/* false: roll back */
extern ErrorData *etl_subxact_try(EtlSubxactStep step, void *arg, MemoryContext error_cxt,
								  bool (*taken) (int sqlerrcode));

/* in role_switch.c */
typedef struct EtlRoleSwitch
{
	Oid			userid;
	int			sec_context;
	int			nestlevel;
	bool		made_read_only;
	bool		was_read_only;
} EtlRoleSwitch;

extern void etl_role_switch_enter(EtlRoleSwitch *sw, Oid role, const char *search_path,
								  bool read_only);
extern void etl_role_switch_leave(EtlRoleSwitch *sw);

/* in ext_schema.c */
extern char *etl_extension_schema(void);
extern const char *etl_qualified(const char *relname);
extern uint64 etl_spi_run(const char *sql, int nargs, const char **args, int expect);
extern char *etl_spi_value(MemoryContext cxt, int col);

/* in target_kind.c: tables another extension (Citus, TimescaleDB) takes over */
typedef enum EtlTargetKind
{
	ETL_TARGET_PLAIN = 0,		/* COPY may write it directly */
	ETL_TARGET_CITUS_DISTRIBUTED,	/* hash, range or single-shard */
	ETL_TARGET_CITUS_APPEND,	/* append-distributed: COPY only, refused */
	ETL_TARGET_CITUS_REFERENCE,
	ETL_TARGET_CITUS_LOCAL,		/* citus_add_local_table_to_metadata */
	ETL_TARGET_HYPERTABLE		/* TimescaleDB */
} EtlTargetKind;

typedef struct EtlTargetInfo
{
	EtlTargetKind kind;
	char	   *distribution_column;	/* NULL: none */
} EtlTargetInfo;

extern void etl_target_kind(Oid relid, EtlTargetInfo *info);
extern const char *etl_target_kind_name(EtlTargetKind kind);

/* in json_path.c */
typedef struct EtlPath EtlPath;

/* a path of member steps: $.a.b */
typedef struct EtlKeyPath
{
	int			n;				/* -1: no such path */
	char	  **keys;
	int		   *lens;
} EtlKeyPath;

extern EtlPath *etl_path_compile(const char *text);
extern char *etl_column_map_parameter(const char *value, int len);
extern const char *etl_path_text(const EtlPath *path);
extern int	etl_path_query(const EtlPath *path, const JsonbValue *doc, JsonbValue **items);
extern JsonbValue *etl_path_first(const EtlPath *path, const JsonbValue *doc);
extern bool etl_path_split(const EtlPath *path, EtlKeyPath *before, bool *star,
						   EtlKeyPath *after);
extern void etl_jsonb_as_value(Jsonb *doc, JsonbValue *v);
extern char *etl_jsonb_top_keys(Jsonb *doc);
extern char *etl_jsonb_value_text(const JsonbValue *v);
extern Jsonb *etl_jsonb_from_cstring(MemoryContext cxt, const char *s);
extern int	etl_jsonb_int(Jsonb *jb, const char *key, int dflt);
extern char *etl_jsonb_str(Jsonb *jb, const char *key);

/* in type_infer.c: a column type from the JSON values a key was seen with */
typedef struct EtlInference EtlInference;

extern EtlInference *etl_infer_create(MemoryContext parent, bool track_unique);
extern void etl_infer_value(EtlInference *inf, const char *key, int len, const JsonbValue *v);
extern void etl_infer_records(EtlInference *inf, JsonbValue *records, int nrec,
							  int32 page_index);
extern int	etl_infer_nkeys(const EtlInference *inf);
extern const char *etl_infer_key(const EtlInference *inf, int i);
extern const char *etl_infer_type(const EtlInference *inf, int i);
extern char *etl_infer_report(const EtlInference *inf);

/* in key_resolver.c (malloc only: the page reader's thread uses it) */
typedef struct EtlKeyResolver EtlKeyResolver;

extern EtlKeyResolver *etl_key_resolver_create(int ncols, char *const *names);
extern void etl_key_resolver_free(EtlKeyResolver *r);
extern int	etl_key_resolver_column(EtlKeyResolver *r, int position,
									const char *key, int len);

/* in copy_text.c */
extern int	etl_copy_escape(char *dst, const char *s, int len);
extern void etl_append_copy_text(StringInfo buf, const char *s, int len);
extern int	etl_quote_array_element(char *dst, const char *s, int len);

/* in csv_scan.c: CSV pages (malloc only: the page reader's thread uses it) */

/* What a job's response bodies are (dw_etl_jobs.format). */
typedef enum EtlFormat
{
	ETL_FORMAT_JSON = 0,		/* an envelope: records at records_path */
	ETL_FORMAT_NDJSON,			/* one JSON record per line */
	ETL_FORMAT_CSV				/* a header row, then one record per row */
} EtlFormat;

/* dw_etl_jobs.csv_options, as COPY's CSV options */
typedef struct EtlCsvOptions
{
	char		delimiter;		/* ',' */
	char		quote;			/* '"' */
	char		escape;			/* the quote */
	char	   *null;			/* an unquoted field of this text is NULL: "" */
	int			null_len;
} EtlCsvOptions;

/* a field of the record a reader is at */
typedef struct EtlCsvField
{
	int32		off;			/* into the body, or the reader's buffer */
	int32		len;
	bool		in_buf;			/* unquoted into the reader's buffer */
	bool		plain;			/* no byte COPY's text format escapes */
	bool		isnull;			/* unquoted and equal to the null text */
} EtlCsvField;

typedef struct EtlCsvReader
{
	const EtlCsvOptions *opts;
	const char *body;
	const char *p;
	const char *end;
	const char *start;			/* where the current record starts in the body */
	int			line;			/* the line it starts on (1-based) */
	int			next_line;
	char	   *buf;			/* quoted fields with escapes, unquoted */
	int			buf_len;
	int			buf_cap;
	EtlCsvField *fields;
	int			nfields;
	int			fields_cap;
	const char *error;			/* what was wrong, when etl_csv_next returned -1 */
} EtlCsvReader;

extern void etl_csv_reader_init(EtlCsvReader *r, const EtlCsvOptions *opts,
								const char *body, size_t len);
extern int	etl_csv_next(EtlCsvReader *r);
extern const char *etl_csv_field_data(const EtlCsvReader *r, const EtlCsvField *f);
extern void etl_csv_reader_free(EtlCsvReader *r);

/* ================ the parts of a page ================ */

/* in page_scan.c: the one-pass page reader (no PostgreSQL state) */
typedef struct EtlScanSpec
{
	EtlKeyPath	records_before; /* records_path = before[*]after */
	EtlKeyPath	records_after;
	EtlKeyPath	total;			/* n = -1: not wanted */
	EtlKeyPath	next;
	int			ncols;
	bool	   *column_is_json; /* json/jsonb: takes the value's JSON text */
	bool	   *column_is_array;
	bool		use_map;
	EtlKeyPath *map;			/* per column; n = -1: not mapped */
	EtlKeyResolver *keys;		/* the reader's own: record key -> column */
	EtlKeyResolver *table_keys; /* on_new_keys: every column of the target (a
								 * key one names is not new); NULL: not watched */
	EtlFormat	format;			/* ndjson, csv: records_path, total and next unused */
	const EtlCsvOptions *csv;
} EtlScanSpec;

typedef struct EtlScanResult
{
	int			nrec;
	bool	   *present;		/* columns the page mentions */
	char	   *copy_text;		/* those columns of each record, as COPY text */
	int			copy_len;
	char	   *total_text;
	char	   *next_text;
	bool		container_seen; /* records_path led somewhere */
	bool		new_keys;		/* a record key no column takes (mapping by name) */
} EtlScanResult;

extern bool etl_scan_page(const EtlScanSpec *spec, const char *body, size_t len,
						  EtlScanResult *result);
extern void etl_scan_result_free(EtlScanResult *result);
extern bool etl_scan_start(const EtlScanSpec *spec, const char *body, size_t len,
						   EtlScanResult *result);
extern bool etl_scan_finish(void);

/* in http_client.c */

/* A response body: malloc'd, owned by the caller, reused request after request. */
typedef struct EtlHttpBuffer
{
	char	   *data;
	size_t		len;
	size_t		cap;
	size_t		max;			/* a longer body aborts the transfer */
	bool		too_big;
	bool		over_budget;	/* the run's buffers would pass max_bytes_in_flight */
} EtlHttpBuffer;

typedef struct EtlHttpResponse
{
	long		status;
	char	   *body;			/* NUL-terminated; the EtlHttpBuffer's data */
	size_t		body_len;
	List	   *link_headers;	/* char * values of Link: headers */
	char	   *retry_after;	/* value of Retry-After, or NULL */
	char	   *effective_url;
	int			retries;		/* retries this fetch needed */
	char	   *header_value;	/* of EtlHttpOptions.capture_header, or NULL */
	bool		ignored;		/* a response rule said ignore: no page to read */
	int			rule;			/* that rule's number (1-based), or 0 */
} EtlHttpResponse;

/* What a response rule (dw_etl_jobs.response_rules) does with a response. */
typedef enum EtlRuleAction
{
	ETL_RULE_IGNORE,			/* an empty page: the run ends normally after it */
	ETL_RULE_RETRY,				/* retried like a 5xx */
	ETL_RULE_FAIL				/* the run fails at once */
} EtlRuleAction;

typedef struct EtlResponseRule
{
	long		status_lo;		/* statuses it matches; 0, 0: any */
	long		status_hi;
	char	   *body_contains;	/* NULL: any body */
	EtlRuleAction action;
} EtlResponseRule;

/*
 * How a job's requests go out and how their responses are judged, the same
 * for every request of the run (and every hop, retry and resend of one).
 */
typedef struct EtlHttpOptions
{
	bool		post;			/* POST (with the request's payload), else GET */
	const char *content_type;	/* of a POST's payload */
	const char *capture_header; /* a response header to keep, or NULL */
	const EtlResponseRule *rules;	/* first match decides */
	int			nrules;
} EtlHttpOptions;

/* How requests authenticate: the caller's, the client knows no secrets. */
typedef struct EtlHttpAuth
{
	/* the request headers ("Name: value" strings) for a URL */
	List	   *(*headers) (void *arg, const char *url);
	/* the URL that goes out for url (its query-string secrets filled in) */
	char	   *(*url) (void *arg, const char *url);
	/* after a 401: renew the credentials; true when one more try may help */
	bool		(*renew) (void *arg);
	/* changes whenever the credentials do (a 401 on older ones: just resend) */
	uint64		(*generation) (void *arg);
	void	   *arg;
} EtlHttpAuth;

/* the most requests of a run in flight at once (dw_etl_jobs.concurrency) */
#define ETL_MAX_CONCURRENCY 64

/* A request of the run's: started, then waited for (others progress meanwhile). */
typedef struct EtlHttpRequest EtlHttpRequest;

extern void etl_http_init(const EtlRunSettings *settings);
extern void etl_http_cleanup(void);
extern EtlHttpRequest *etl_http_request_create(void);
extern void etl_http_start(EtlHttpRequest *req, const char *url, const char *payload,
						   const EtlHttpOptions *opts, const EtlHttpAuth *auth,
						   EtlHttpBuffer *body);
extern EtlStopReason etl_http_wait(EtlHttpRequest *req, EtlHttpResponse *resp);
extern bool etl_http_ready(EtlHttpRequest *req);
extern void etl_http_abandon(EtlHttpRequest *req);
extern EtlStopReason etl_http_get(const char *url, const char *payload,
								  const EtlHttpOptions *opts, const EtlHttpAuth *auth,
								  EtlHttpBuffer *body, EtlHttpResponse *resp);
extern void etl_http_buffer_free(EtlHttpBuffer *buf);
extern char *etl_http_post_form(const char *url, const char *form, const char *what);

/* in oauth.c */
extern Jsonb *etl_secret_json(const char *name, const char *value, const char *shape);
extern const char *etl_oauth_token(const char *name, const char *client_json);
extern bool etl_oauth_renew(void *arg);
extern uint64 etl_oauth_generation(void *arg);
extern void etl_oauth_save_rotated(void);
extern void etl_oauth_forget_all(void);

/* in job.c */
typedef enum EtlPaginationStyle
{
	ETL_PAGINATION_NONE,
	ETL_PAGINATION_OFFSET,
	ETL_PAGINATION_PAGE,
	ETL_PAGINATION_NEXT_LINK,
	ETL_PAGINATION_LINK_HEADER,
	ETL_PAGINATION_CURSOR
} EtlPaginationStyle;

/* What a run does with a record key no column takes (dw_etl_jobs.on_new_keys). */
typedef enum EtlNewKeys
{
	ETL_NEW_KEYS_IGNORE = 0,
	ETL_NEW_KEYS_ADD_COLUMNS,	/* a new column, its type from the page's values */
	ETL_NEW_KEYS_FAIL
} EtlNewKeys;

/* A job definition as the worker uses it. */
typedef struct EtlJob
{
	int32		job_id;
	char	   *name;
	char	   *url;			/* first-page URL, placeholders filled but
								 * {secret:NAME} (per request: secrets.c) */
	char	   *url_template;	/* as the job defines it, placeholders and all */
	EtlPaginationStyle pagination;
	int32		page_size;
	char	   *skip_param;
	char	   *limit_param;
	char	   *page_param;
	int64		first_page;
	char	   *next_path;
	char	   *cursor_param;
	char	   *total_path;
	bool		stop_on_short_page;
	char	   *records_path;
	Jsonb	   *headers;
	char	   *target_table;
	Jsonb	   *column_map;		/* NULL: map by name */
	char	   *load_mode;
	List	   *key_columns;	/* of char * */
	int			checkpoint_interval_seconds;	/* -1: the setting */
	int			max_retries;	/* -1: the setting */
	int			request_timeout_ms; /* -1: the setting */
	int			concurrency;	/* -1: the setting */
	EtlFormat	format;
	EtlCsvOptions csv;			/* format csv: its options, defaults filled in */
	EtlPath    *records;		/* records_path, next_path, total_path compiled */
	EtlPath    *next;
	EtlPath    *total;
	/* requests beyond GET, and response rules (0.4.0) */
	EtlHttpOptions http;		/* method, content_type, next_header, rules */
	Jsonb	   *body;			/* the POST body, placeholders filled; or NULL */
	Jsonb	   *body_template;	/* as the job defines it */
	bool		cursor_in_body; /* cursor_param is body:...: cursors kept as JSON text */
	char	   *next_header;	/* next link or cursor from this header, or NULL */
	char	   *has_more_path;
	EtlPath    *has_more;		/* compiled has_more_path, or NULL */
	/* records that do not fit the table (0.5.0) */
	EtlNewKeys	on_new_keys;
	bool		reject_bad_records; /* on_bad_record = 'reject' */
	int			max_rejected;	/* -1: no limit */
} EtlJob;

extern void etl_read_job(int32 job_id, Jsonb *parameters, EtlJob *job);
extern void etl_job_for_partition(const EtlJob *job, Jsonb *run_parameters,
								  Jsonb *partition_parameters, EtlJob *out);
extern Jsonb *etl_partition_parameters(Jsonb *run_parameters, Jsonb *partition_parameters);
extern void etl_job_use_partition(EtlJob *job, Jsonb *parameters);

/* in page_records.c */
extern int	etl_page_records(const EtlJob *job, const char *body, size_t len,
							 int32 page_index, const char *url, bool as_sent,
							 JsonbValue **records);

/* in secrets.c */
extern void etl_job_http_auth(EtlJob *job, EtlHttpAuth *auth);
extern void etl_secrets_forget(void);

/* in pagination.c */

/* What a page's body says, as the pagination needs it. */
typedef struct EtlPageFacts
{
	int			record_count;
	char	   *total_text;		/* value at total_path, or NULL */
	char	   *next_text;		/* value at next_path, or NULL (JSON text for
								 * a cursor that goes in the body) */
	int			has_more;		/* at has_more_path: 1 true, -1 false, 0 not said */
} EtlPageFacts;

/* What one response says about the pages after it. */
typedef struct EtlPageOutcome
{
	bool		last_page;
	int64		expected_total; /* -1 when the API does not say */
	char	   *next_url;
	char	   *cursor;
} EtlPageOutcome;

extern char *etl_pagination_request_url(const EtlJob *job,
										const EtlCheckpoint *cp);
extern char *etl_pagination_request_body(const EtlJob *job,
										 const EtlCheckpoint *cp);
extern void etl_pagination_advance(const EtlJob *job, const EtlCheckpoint *cp,
								   const char *request_url,
								   const EtlPageFacts *facts, const EtlHttpResponse *resp,
								   EtlPageOutcome *outcome);

/* in run_store.c */
typedef struct EtlRunRow
{
	int64		run_id;
	int32		job_id;
	Oid			role_oid;
	char	   *status;
	bool		dry_run;
	int32		timeout_seconds;
	int64		records_loaded;
	int64		pages_fetched;
	int64		expected_total; /* the API's last reported total; -1: none */
	int32		partitions_total;	/* -1: the run has no partitions */
	int32		resume_count;
	int32		retries;
	char	   *target;			/* frozen at the run's start (quoted, qualified) */
	char	   *staging_table;	/* replace mode: the run's staging table, or NULL */
	bool		has_checkpoint;
	EtlCheckpoint checkpoint;
	Jsonb	   *parameters;
	EtlRunSettings settings;
	int32		sample_pages;	/* a sample run (etl_infer_table): its pages; else 0 */
} EtlRunRow;

extern int64 etl_create_run(int32 job_id, Oid role_oid, int32 timeout_seconds, bool dry_run,
							const char *target, const char *settings_json,
							const char *parameters_json, const char *partitions_json,
							bool queued);
extern void etl_queue_resume(int64 run_id, Oid role_oid, int32 timeout_seconds,
							 const char *caller_target, const char *settings_json);
extern int64 etl_claim_queued_run(int64 only_run_id);
extern bool etl_runs_queued(void);
extern void etl_claim_run(int64 run_id, Oid role_oid, int32 timeout_seconds,
						  const char *caller_target, const char *settings_json);
extern void etl_read_run(int64 run_id, EtlRunRow *row);
extern void etl_save_checkpoint(int64 run_id, const EtlCheckpoint *cp,
								int64 pages_fetched, int64 expected_total,
								int retries);
extern void etl_record_staging(int64 run_id, const char *staging);
extern void etl_record_sample(int64 run_id, int32 sample_pages);
extern void etl_record_added_column(int64 run_id, const char *column, const char *type,
									int32 page_index);
extern Jsonb *etl_read_partition(int64 run_id, int32 index);
extern void etl_record_resume_after(int64 run_id, TimestampTz resume_after);
extern void etl_record_ignored_response(int64 run_id, long status);
extern void etl_finish_run(int64 run_id, const char *status,
						   int64 pages_fetched, int64 segment_ms,
						   int64 commits, int64 commit_us,
						   const char *error_message, const char *sqlstate,
						   const char *dry_run_report);
extern void etl_report_activity(int64 run_id, const EtlCheckpoint *cp,
								int64 pages_fetched, double rows_per_second,
								int64 expected_total, int retries);

/* in page_table.c: the run's temporary table between COPY and the target */
typedef struct EtlPageTable EtlPageTable;

typedef struct EtlPageTableColumn
{
	const char *name;
	Oid			typid;
	int32		typmod;
	Oid			collation;
	bool		is_key;			/* upsert: a key column */
} EtlPageTableColumn;

extern EtlPageTable *etl_page_table_new(MemoryContext cxt, int64 run_id, Oid role_oid,
										const char *target, EtlTargetKind kind,
										int ncols, const EtlPageTableColumn *cols,
										bool upsert);
extern Oid	etl_page_table_open(EtlPageTable *pt);
extern void etl_page_table_write_rows(EtlPageTable *pt, Datum rows, int nrows,
									  const bool *present, int32 page_index);
extern void etl_page_table_before_copy(EtlPageTable *pt, const bool *present);
extern void etl_page_table_after_copy(EtlPageTable *pt, uint64 rows, int64 bytes,
									  int32 page_index);
extern bool etl_page_table_pending(EtlPageTable *pt);
extern void etl_page_table_flush(EtlPageTable *pt);
extern void etl_page_table_drop(EtlPageTable *pt);

/* in rejects.c: records a run rejects (on_bad_record = 'reject') */
typedef struct EtlRejectedRecord
{
	int			record_index;	/* in its page, 0-based */
	char	   *column_name;	/* the column whose value was refused, or NULL */
	char	   *error;			/* the error's message */
	int			sqlerrcode;
} EtlRejectedRecord;

extern bool etl_error_rejects_record(int sqlerrcode);
extern EtlRejectedRecord *etl_rejected_record(const ErrorData *edata, int record_index);
extern void etl_store_rejects(int64 run_id, int32 job_id, int32 partition_index,
							  int32 page_index, List *rejects, JsonbValue *records, int nrec);
extern char *etl_describe_rejects(List *rejects);

/* in loader.c */
typedef struct EtlLoader EtlLoader;

extern EtlLoader *etl_loader_create(const EtlJob *job, Oid role_oid,
									MemoryContext cxt, int64 run_id, bool dry_run,
									const char *staging, bool has_loaded_pages);
extern void etl_loader_end(EtlLoader *loader);
extern void etl_loader_finish(EtlLoader *loader);
extern void etl_loader_flush(EtlLoader *loader);
extern bool etl_loader_commits_remotely(EtlLoader *loader);
extern void etl_loader_use_parameters(EtlLoader *loader, Jsonb *parameters);
extern const EtlScanSpec *etl_loader_scan_spec(EtlLoader *loader);
extern void etl_loader_note_scan(EtlLoader *loader, bool scanned_ok);
extern void etl_loader_copy_scanned(EtlLoader *loader, EtlScanResult *result, int32 page_index);
extern int	etl_loader_load_page(EtlLoader *loader, JsonbValue *records, int nrec,
								 int32 page_index, bool dry_run);
extern char *etl_loader_describe_mapping(EtlLoader *loader, JsonbValue *records, int nrec);
extern void etl_loader_begin_page(EtlLoader *loader, const EtlCheckpoint *cp,
								  const char *body, size_t len, const char *url);
extern int	etl_loader_page_rejected(EtlLoader *loader);
extern char *etl_loader_describe_rejects(EtlLoader *loader);
extern bool etl_loader_watches_new_keys(EtlLoader *loader);

/* ================ one page ================ */

/* in page.c */
typedef struct EtlPager EtlPager;

/* Where the run stands after a page. */
typedef struct EtlPageDone
{
	EtlCheckpoint next;			/* the checkpoint after the page */
	bool		last_page;
	int64		expected_total; /* -1 when the API does not say */
	long		ignored_status; /* a response rule ignored the page's response
								 * (this status); 0: none */
} EtlPageDone;

extern EtlPager *etl_pager_create(EtlJob *job, EtlLoader *loader, bool dry_run,
								  bool from_stored_link, int retries, int concurrency,
								  int64 known_total, int64 run_id, Jsonb *run_parameters,
								  int32 partitions_total, MemoryContext run_cxt);
extern EtlStopReason etl_pager_process(EtlPager *pager, const EtlCheckpoint *cp,
									   EtlPageDone *done);
extern void etl_pager_sample(EtlPager *pager);
extern int	etl_pager_retries(EtlPager *pager);
extern const char *etl_pager_dry_run_report(EtlPager *pager);
extern ErrorData *etl_pager_deferred_error(EtlPager *pager);
extern void etl_pager_drain(EtlPager *pager);
extern void etl_pager_end(EtlPager *pager);

/* ================ the worker and the SQL entry points ================ */

/* the launch hand-shake between a SQL caller (launcher.c) and its worker */
typedef enum EtlLaunchMode
{
	ETL_LAUNCH_NEW = 1,
	ETL_LAUNCH_RESUME = 2,
	ETL_LAUNCH_DEQUEUE = 3		/* start a queued run (it waits on if no slot is free) */
} EtlLaunchMode;

typedef enum EtlLaunchState
{
	ETL_LAUNCH_PENDING = 0,
	ETL_LAUNCH_STARTED,			/* run row committed, run_id valid */
	ETL_LAUNCH_REFUSED			/* worker refused: sqlstate/message set */
} EtlLaunchState;

#define ETL_LAUNCH_MESSAGE_LEN 1024

typedef struct EtlLaunchShared
{
	slock_t		mutex;
	pid_t		caller_pid;
	EtlLaunchMode mode;
	Oid			database_oid;
	Oid			role_oid;
	int32		job_id;
	int64		run_id;			/* given for resume, set by worker for new */
	int32		timeout_seconds;
	bool		dry_run;
	int32		sample_pages;	/* > 0: a sample run (dry, no target) */
	char		target[300];	/* new runs: target resolved by the caller */
	EtlLaunchState state;
	int			sqlerrcode;
	char		message[ETL_LAUNCH_MESSAGE_LEN];
	char		detail[ETL_LAUNCH_MESSAGE_LEN];
	char		hint[ETL_LAUNCH_MESSAGE_LEN];
	Size		settings_len;	/* settings JSON, then parameters JSON, */
	Size		parameters_len;
	Size		partitions_len; /* then partitions JSON (0: none) */
	char		payload[FLEXIBLE_ARRAY_MEMBER];
} EtlLaunchShared;

/* in worker.c */
extern PGDLLEXPORT void etl_worker_main(Datum main_arg);

/* in caller.c */
extern Oid	etl_api_caller(void);
extern Datum etl_call_for_caller(FunctionCallInfo fcinfo, FmgrInfo *impl, bool *isnull);
extern void etl_act_as_caller(EtlRoleSwitch *sw, bool read_only);
extern char *etl_resolve_target(const char *name);
extern void etl_refuse_on_standby(const char *what);

/* in select_check.c */
extern const char *etl_select_problem(const char *sql);

#endif							/* ETL_EXEC_H */
