/*-------------------------------------------------------------------------
 *
 * http_client.c
 *	  The worker's HTTP client: requests that run side by side on one
 *	  libcurl multi handle (keep-alive connections shared, HTTP/2
 *	  multiplexed where the server offers it), each stopped within ~100 ms
 *	  by a cancel, a terminate, a shutdown or the run's deadline; retries
 *	  with backoff; redirects followed by hand so every hop is checked
 *	  against the allowed hosts.
 *
 * A request is started (etl_http_start), then waited for (etl_http_wait).
 * While one request is waited for, every other started request makes
 * progress too: that is how a run keeps several pages in flight (page.c).
 * An error belongs to the request that met it: whatever may raise or run
 * SQL for a request other than the one waited for -- building its headers
 * (a secret looked up, an OAuth2 token fetched), a redirect's host check,
 * a 401's renewal, a refusal, retries spent -- runs in a subtransaction of
 * its own, and an error there is kept with the request and raised only
 * when that request is waited for: a page past the end, never waited for,
 * never fails the run.  What cannot raise -- a 2xx, a retry after a 5xx
 * -- is settled at once.
 *
 * A transfer's timers run while the worker loads a page and drives no
 * transfer; one that timed out after such a gap (its answer may have been
 * waiting in the socket) is sent again without spending a retry.
 *
 * Every attempt goes out when its host's budget says so (host_budget.c:
 * dw_etl_hosts and the API's rate-limit headers, shared by every run of
 * the server), and every response's headers go back to it.  A wait for
 * the budget that would pass the run's deadline ends the run at once, and
 * the run records when the API takes requests again (resume_after).
 *
 * libcurl callbacks never ereport() or CHECK_FOR_INTERRUPTS(): a longjmp
 * through curl would corrupt it.  They only copy bytes into malloc'd
 * buffers and return an abort code when a body grows too large; errors
 * are raised after curl has returned.
 *
 * A request is a GET, or a POST of a payload (EtlHttpOptions, the job's):
 * every hop, retry and resend sends it the same way, except that a 301,
 * 302 or 303 redirect turns a POST into a GET without a body, as browsers
 * and curl do (a 307 or 308 keeps the method and the payload).  The job's
 * response rules judge every response that is not a redirect followed or
 * a 401 sent again: the first that matches decides -- ignore (the response
 * is an empty page: EtlHttpResponse.ignored), retry (as a 5xx) or fail --
 * and no match leaves the rules below.  A rule that fails a request other
 * than the one waited for fails it when it is waited for, like any error.
 *
 * The body goes into a buffer the caller owns (EtlHttpBuffer), so that a
 * page's body can stay with whoever reads it -- the page reader's thread,
 * say -- while another request fills another buffer.  The client knows
 * nothing of secrets: the caller's EtlHttpAuth gives each hop's headers
 * and decides whether a 401 is worth one more try.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <curl/curl.h>

#include "access/xact.h"
#include "common/pg_prng.h"
#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "etl_exec.h"

#define ETL_MAX_REDIRECTS 5
#define ETL_POLL_MS 100
#define ETL_MAX_REQUESTS (ETL_MAX_CONCURRENCY + 2)
/* a gap this long without driving transfers may have timed them out */
#define ETL_IDLE_GAP_MS 1000
#define ETL_MAX_FREE_RESENDS 3

/* what a waiting request waits for */
typedef enum RequestWait
{
	WAIT_NONE = 0,
	WAIT_BACKOFF,				/* a retry's backoff */
	WAIT_RETRY_AFTER,			/* the time the API's Retry-After gave */
	WAIT_BUDGET					/* its host's budget (budget_wait says why) */
} RequestWait;

typedef enum RequestState
{
	REQ_IDLE = 0,				/* not started, or abandoned */
	REQ_WAITING,				/* to be sent at not_before (a retry's wait) */
	REQ_RUNNING,				/* its transfer is on the multi handle */
	REQ_FINISHED,				/* the transfer ended; what it leads to is unsettled */
	REQ_DONE,					/* a 2xx response is in the body buffer */
	REQ_FAILED					/* error: raised when it is waited for */
} RequestState;

struct EtlHttpRequest
{
	CURL	   *easy;
	MemoryContext cxt;			/* its URLs; reset when it starts again */
	RequestState state;
	uint64		seq;			/* started before requests with a higher one */
	const EtlHttpAuth *auth;
	const EtlHttpOptions *opts; /* method, rules, header to keep; or NULL */
	char	   *payload;		/* what a POST sends (in cxt), or NULL */
	bool		post;			/* this hop is a POST (a 303 makes it a GET) */
	bool		ignored;		/* done: a response rule said ignore */
	int			rule;			/* the rule that decided (1-based), or 0 */
	EtlHttpBuffer *body;
	char	   *url;			/* as asked */
	char	   *current_url;	/* after redirects */
	TimestampTz not_before;
	RequestWait wait;
	EtlBudgetWait budget_wait;
	char	   *budget_key;		/* its host, as host_budget.c counts it */
	bool		budget_held;	/* an attempt counted in the budget, not yet given back */
	int			attempt;		/* retries spent (of max_retries) */
	int			retries;		/* retries, and resends the API's 429 asked for */
	int			free_resends;	/* after a timeout the worker's idleness caused */
	int64		longest_gap_ms; /* longest time nobody drove its transfer */
	uint64		auth_generation;	/* of the credentials it was sent with */
	ErrorData  *error;			/* REQ_FAILED: what to raise */
	int			redirects;
	bool		reauthorized;
	struct curl_slist *header_list;
	CURLcode	result;
	long		status;
	char		problem[512];	/* why the last attempt failed */
	char		curl_error[CURL_ERROR_SIZE];
	char		blocked_address[INET6_ADDRSTRLEN + 1];
	/* what the response's headers said */
	EtlHttpBuffer link_buf;		/* Link header values, '\n'-separated */
	char		retry_after[128];
	char		location[4096];
	char		captured[8192]; /* the value of opts->capture_header */
	EtlRateHeaders rate;		/* what they said of the host's quota */
};

static CURLM *multi = NULL;
static CURLM *form_multi = NULL;	/* token requests: apart from the pages */
static MemoryContext http_cxt = NULL;
static EtlHttpRequest *requests[ETL_MAX_REQUESTS];
static int	nrequests = 0;
static uint64 next_seq = 0;
static TimestampTz last_driven = 0; /* when transfers last made progress */
static EtlHttpRequest *get_request = NULL;	/* etl_http_get's */
static const EtlRunSettings *run_settings;

/*
 * What the run's buffers hold (their capacity), across all its requests:
 * at most run_settings->max_bytes_in_flight, so that a worker's memory is
 * bounded whatever the concurrency (each body alone by max_response_bytes).
 */
static size_t held_bytes = 0;

static curl_socket_t open_checked_socket(void *clientp, curlsocktype purpose,
										 struct curl_sockaddr *address);

static bool
buffer_append(EtlHttpBuffer *buf, const char *data, size_t n)
{
	if (buf->len + n + 1 > buf->cap)
	{
		size_t		need = buf->len + n + 1;
		size_t		newcap = Max(Max(buf->cap * 2, need), 16384);
		size_t		budget = run_settings ? (size_t) run_settings->max_bytes_in_flight : SIZE_MAX;
		/* (a buffer of an earlier run in this process is not in held_bytes) */
		size_t		others = held_bytes > buf->cap ? held_bytes - buf->cap : 0;
		char	   *p;

		/* doubling, but not past the budget where the exact size fits */
		if (others + newcap > budget)
			newcap = need;
		if (others + newcap > budget)
		{
			buf->over_budget = true;
			return false;
		}
		p = realloc(buf->data, newcap);
		if (p == NULL)
			return false;
		held_bytes = others + newcap;
		buf->data = p;
		buf->cap = newcap;
	}
	memcpy(buf->data + buf->len, data, n);
	buf->len += n;
	buf->data[buf->len] = '\0';
	return true;
}

/* the body, into the EtlHttpBuffer given as CURLOPT_WRITEDATA */
static size_t
write_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	EtlHttpBuffer *body = (EtlHttpBuffer *) userdata;
	size_t		n = size * nmemb;

	if (body->len + n > body->max)
	{
		body->too_big = true;
		return 0;				/* makes curl abort with CURLE_WRITE_ERROR */
	}
	if (!buffer_append(body, ptr, n))
		return 0;
	return n;
}

/* Empty a buffer for the next transfer, keeping its memory. */
static void
buffer_reset(EtlHttpBuffer *buf, size_t max)
{
	buf->len = 0;
	buf->max = max;
	buf->too_big = false;
	buf->over_budget = false;
	if (buf->data)
		buf->data[0] = '\0';
}

/* Free a body buffer's memory (it may be used again: it grows anew). */
void
etl_http_buffer_free(EtlHttpBuffer *buf)
{
	free(buf->data);
	held_bytes -= Min(held_bytes, buf->cap);
	memset(buf, 0, sizeof(*buf));
}

static void
copy_header_value(char *dst, size_t dstlen, const char *value, size_t n)
{
	while (n > 0 && (*value == ' ' || *value == '\t'))
		value++, n--;
	while (n > 0 && (value[n - 1] == '\r' || value[n - 1] == '\n' || value[n - 1] == ' '))
		n--;
	n = Min(n, dstlen - 1);
	memcpy(dst, value, n);
	dst[n] = '\0';
}

/* forget the response headers a request kept so far */
static void
forget_headers(EtlHttpRequest *req)
{
	buffer_reset(&req->link_buf, SIZE_MAX);
	req->retry_after[0] = '\0';
	req->location[0] = '\0';
	req->captured[0] = '\0';
	etl_rate_headers_reset(&req->rate);
}

/* one response header line, into the request given as CURLOPT_HEADERDATA */
static size_t
read_header(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	EtlHttpRequest *req = (EtlHttpRequest *) userdata;
	size_t		n = size * nmemb;

	etl_rate_header_line(&req->rate, ptr, n);
	if (n >= 5 && strncmp(ptr, "HTTP/", 5) == 0)
	{
		/* a new response (after a 100-continue or similar): start over */
		forget_headers(req);
	}
	else if (n > 5 && pg_strncasecmp(ptr, "link:", 5) == 0)
	{
		char		value[8192];

		copy_header_value(value, sizeof(value), ptr + 5, n - 5);
		if (!buffer_append(&req->link_buf, value, strlen(value)) ||
			!buffer_append(&req->link_buf, "\n", 1))
			return 0;
	}
	else if (n > 12 && pg_strncasecmp(ptr, "retry-after:", 12) == 0)
		copy_header_value(req->retry_after, sizeof(req->retry_after), ptr + 12, n - 12);
	else if (n > 9 && pg_strncasecmp(ptr, "location:", 9) == 0)
		copy_header_value(req->location, sizeof(req->location), ptr + 9, n - 9);
	else if (req->opts && req->opts->capture_header)
	{
		size_t		namelen = strlen(req->opts->capture_header);

		if (n > namelen && ptr[namelen] == ':' &&
			pg_strncasecmp(ptr, req->opts->capture_header, namelen) == 0)
			copy_header_value(req->captured, sizeof(req->captured),
							  ptr + namelen + 1, n - namelen - 1);
	}
	return n;
}

/*
 * What every handle of the run does: no signals, no proxy from the
 * server's environment (addresses are checked directly), http and https
 * only, bodies into an EtlHttpBuffer, every address checked, TLS verified.
 */
static void
set_handle_options(CURL *h)
{
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_PROXY, "");
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write_body);
	curl_easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, open_checked_socket);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	if (run_settings->ca_file && run_settings->ca_file[0])
		curl_easy_setopt(h, CURLOPT_CAINFO, run_settings->ca_file);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long) run_settings->connect_timeout_ms);
}

void
etl_http_init(const EtlRunSettings *settings)
{
	if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
		elog(ERROR, "etl_exec: could not initialize libcurl");
	run_settings = settings;
	/* an earlier run's buffers in this process were freed with its pager */
	held_bytes = 0;
	/* settings stored before user_agent was checked when set */
	if (settings->user_agent && !etl_header_value_is_safe(settings->user_agent))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("etl_exec.user_agent must not contain control characters such as line breaks")));
	multi = curl_multi_init();
	if (multi == NULL)
		elog(ERROR, "etl_exec: could not create a libcurl handle");
	http_cxt = AllocSetContextCreate(TopMemoryContext, "etl_exec HTTP client",
									 ALLOCSET_SMALL_SIZES);
	get_request = etl_http_request_create();
}

/* Free every request and handle (the run's end). */
void
etl_http_cleanup(void)
{
	for (int i = 0; i < nrequests; i++)
	{
		etl_http_abandon(requests[i]);
		curl_easy_cleanup(requests[i]->easy);
		etl_http_buffer_free(&requests[i]->link_buf);
	}
	nrequests = 0;
	get_request = NULL;
	if (multi)
		curl_multi_cleanup(multi);
	if (form_multi)
		curl_multi_cleanup(form_multi);
	multi = form_multi = NULL;
	if (http_cxt)
		MemoryContextDelete(http_cxt);
	http_cxt = NULL;
}

/*
 * A request of the run's, with a handle of its own, to be started again
 * and again; it lives until etl_http_cleanup.
 */
EtlHttpRequest *
etl_http_request_create(void)
{
	EtlHttpRequest *req;

	if (nrequests >= ETL_MAX_REQUESTS)
		elog(ERROR, "etl_exec: more than %d HTTP requests", ETL_MAX_REQUESTS);
	req = MemoryContextAllocZero(http_cxt, sizeof(EtlHttpRequest));
	req->cxt = AllocSetContextCreate(http_cxt, "etl_exec HTTP request", ALLOCSET_SMALL_SIZES);
	req->easy = curl_easy_init();
	if (req->easy == NULL)
		elog(ERROR, "etl_exec: could not create a libcurl handle");
	set_handle_options(req->easy);
	curl_easy_setopt(req->easy, CURLOPT_PRIVATE, req);
	curl_easy_setopt(req->easy, CURLOPT_OPENSOCKETDATA, req);
	curl_easy_setopt(req->easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(req->easy, CURLOPT_HEADERFUNCTION, read_header);
	curl_easy_setopt(req->easy, CURLOPT_HEADERDATA, req);
	curl_easy_setopt(req->easy, CURLOPT_ERRORBUFFER, req->curl_error);
	curl_easy_setopt(req->easy, CURLOPT_ACCEPT_ENCODING, "");
	curl_easy_setopt(req->easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(req->easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(req->easy, CURLOPT_LOW_SPEED_TIME, (long) run_settings->low_speed_time_seconds);
	curl_easy_setopt(req->easy, CURLOPT_USERAGENT,
					 run_settings->user_agent && run_settings->user_agent[0] ?
					 run_settings->user_agent : "etl_exec/0.1");
	requests[nrequests++] = req;
	return req;
}

/*
 * The host part of the allowed list check: empty list allows every host.
 */
static void
check_host_allowed(const char *url)
{
	char	   *host = etl_url_host(url);
	char	   *list;
	char	   *tok;
	char	   *save = NULL;

	if (run_settings->allowed_hosts == NULL || run_settings->allowed_hosts[0] == '\0')
		return;
	list = pstrdup(run_settings->allowed_hosts);
	for (tok = strtok_r(list, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save))
		if (pg_strcasecmp(tok, host) == 0)
			return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("host \"%s\" is not in etl_exec.allowed_hosts", host),
			 errdetail("URL: %s", etl_url_redact(url)),
			 errhint("A superuser can add it to etl_exec.allowed_hosts.")));
}

static bool
retryable_status(long status)
{
	return status == 429 || status == 408 || (status >= 500 && status <= 599);
}

/*
 * Whether a transfer's failure is one that sending the request again
 * cannot fix -- a body that does not decode, a certificate that does not
 * verify, a URL or option curl refuses -- and so fails the page at once;
 * *why says what kind.  Connection troubles, timeouts and a TLS handshake
 * cut short are retried.
 */
static bool
transfer_failure_is_permanent(CURLcode result, const char **why, const char **hint)
{
	switch (result)
	{
		case CURLE_BAD_CONTENT_ENCODING:
			*why = "the response body does not decode (its Content-Encoding)";
			*hint = "The API sent a body that its Content-Encoding header does not describe: ask the API's owner to fix it.";
			return true;
		case CURLE_PEER_FAILED_VERIFICATION:
		case CURLE_SSL_CACERT_BADFILE:
		case CURLE_SSL_CERTPROBLEM:
		case CURLE_SSL_ISSUER_ERROR:
		case CURLE_SSL_CRL_BADFILE:
		case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
			*why = "the server's TLS certificate does not verify";
			*hint = "Give the CA that signed it in etl_exec.ca_file (superuser), or fix the server's certificate; the host name must match it too.";
			return true;
		case CURLE_URL_MALFORMAT:
		case CURLE_NOT_BUILT_IN:
		case CURLE_FUNCTION_NOT_FOUND:
		case CURLE_BAD_FUNCTION_ARGUMENT:
			*why = "the request cannot be made as it is";
			*hint = "Check the job's URL and settings.";
			return true;
		default:
			return false;
	}
}

/* Delay before retry number `attempt` (0-based): Retry-After, or backoff. */
static int64
retry_delay_ms(const EtlHttpRequest *req)
{
	int64		base = run_settings->retry_base_delay_ms;
	int64		delay;

	if (req->retry_after[0])
	{
		char	   *end;
		long		secs = strtol(req->retry_after, &end, 10);

		if (end != req->retry_after && *end == '\0' && secs >= 0)
			return (int64) Min(secs, 86400L) * 1000;
		else
		{
			time_t		when = curl_getdate(req->retry_after, NULL);

			if (when > 0)
				return Min(Max((int64) (when - time(NULL)), 0), (int64) 86400) * 1000;
		}
	}
	delay = base << Min(req->attempt, 16);
	delay = Min(delay, (int64) 60000);
	/* jitter: up to half the delay again, so parallel runs spread out */
	if (delay > 0)
		delay += (int64) (pg_prng_double(&pg_global_prng_state) * delay / 2);
	return delay;
}

static char *
body_snippet(const EtlHttpBuffer *body)
{
	/* redacted before it is cut: a secret across the cut would half show */
	char	   *s = pnstrdup(etl_redact(body->data ? body->data : ""), 300);

	for (char *p = s; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	return s;
}

/*
 * Refuse addresses that reach this host's unspecified address or the cloud
 * metadata service, whatever name led there and in whichever form:
 * 0.0.0.0/8, link-local 169.254.0.0/16 and 100.100.100.200 (IPv4, and the
 * IPv4-mapped, SIIT and NAT64 IPv6 forms of them), ::, IPv4-compatible
 * ::a.b.c.d, local-use NAT64 64:ff9b:1::/48, fe80::/10 and fd00:ec2::254 -- unless etl_exec.allowed_hosts names that address itself.
 * Loopback (127.0.0.0/8, ::1) stays allowed: local APIs are common.  Runs
 * inside a curl callback: only notes the address in the request.
 */
static bool
ipv4_blocked(uint32 a)
{
	return (a >> 24) == 0 || (a >> 16) == ((169 << 8) | 254) ||
		a == ((100u << 24) | (100 << 16) | (100 << 8) | 200);	/* Alibaba's metadata */
}

static bool
ipv6_blocked(const unsigned char *b)
{
	static const unsigned char metadata[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54};
	static const unsigned char zeros[12] = {0};
	static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	static const unsigned char translated[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0};
	static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
	static const unsigned char nat64_local[6] = {0, 0x64, 0xff, 0x9b, 0, 0x01};
	uint32		v4 = ((uint32) b[12] << 24) | ((uint32) b[13] << 16) | ((uint32) b[14] << 8) | b[15];

	if ((b[0] == 0xfe && (b[1] & 0xc0) == 0x80) || memcmp(b, metadata, 16) == 0)
		return true;
	/* ::, and IPv4-compatible ::a.b.c.d (all but ::1) */
	if (memcmp(b, zeros, 12) == 0)
		return v4 != 1;
	/* IPv4-mapped ::ffff:a.b.c.d and SIIT-translated ::ffff:0:a.b.c.d */
	if (memcmp(b, mapped, 12) == 0 || memcmp(b, translated, 12) == 0)
		return ipv4_blocked(v4);
	/* NAT64 64:ff9b::/96 to a blocked or loopback address */
	if (memcmp(b, nat64, 12) == 0)
		return ipv4_blocked(v4) || (v4 >> 24) == 127;
	/* local-use NAT64 64:ff9b:1::/48 places the address anywhere: all of it */
	if (memcmp(b, nat64_local, 6) == 0)
		return true;
	return false;
}

static bool
address_listed(const char *addr)
{
	char	   *list;
	char	   *tok;
	char	   *save = NULL;

	if (run_settings->allowed_hosts == NULL)
		return false;
	list = strdup(run_settings->allowed_hosts);
	if (list == NULL)
		return false;
	for (tok = strtok_r(list, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save))
		if (strcmp(tok, addr) == 0)
		{
			free(list);
			return true;
		}
	free(list);
	return false;
}

static curl_socket_t
open_checked_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	EtlHttpRequest *req = (EtlHttpRequest *) clientp;
	char		text[INET6_ADDRSTRLEN + 1] = "";
	bool		blocked = false;

	if (address->family == AF_INET)
	{
		struct sockaddr_in *in = (struct sockaddr_in *) &address->addr;

		inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
		blocked = ipv4_blocked(ntohl(in->sin_addr.s_addr));
	}
	else if (address->family == AF_INET6)
	{
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &address->addr;

		inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
		blocked = ipv6_blocked(in6->sin6_addr.s6_addr);
	}
	if (blocked && !address_listed(text))
	{
		strlcpy(req->blocked_address, text, sizeof(req->blocked_address));
		return CURL_SOCKET_BAD;
	}
	return socket(address->family, address->socktype, address->protocol);
}

static struct curl_slist *
header_slist(List *headers)
{
	struct curl_slist *list = NULL;
	ListCell   *lc;

	foreach(lc, headers)
		list = curl_slist_append(list, (char *) lfirst(lc));
	return list;
}

/* ---------- the requests' life ---------- */

/* Milliseconds from now until t (0 when it has come). */
static int64
ms_until(TimestampTz t)
{
	TimestampTz now = GetCurrentTimestamp();

	return t > now ? (t - now + 999) / 1000 : 0;
}

/* Take a request off the multi handle, if it is on it. */
static void
detach(EtlHttpRequest *req)
{
	if (req->budget_held)
	{
		/* stopped without a response */
		etl_host_budget_finish(req->budget_key, 0, NULL);
		req->budget_held = false;
	}
	if (req->state == REQ_RUNNING)
		curl_multi_remove_handle(multi, req->easy);
	curl_easy_setopt(req->easy, CURLOPT_HTTPHEADER, NULL);
	curl_slist_free_all(req->header_list);
	req->header_list = NULL;
}

/*
 * A POST's request line and headers: its payload, the job's content type
 * (unless the job's headers name one), and no "Expect: 100-continue" (one
 * more round trip for nothing).  A GET's: none of that.
 */
static List *
set_method(EtlHttpRequest *req, List *headers)
{
	ListCell   *lc;
	bool		typed = false;

	if (!req->post)
	{
		curl_easy_setopt(req->easy, CURLOPT_HTTPGET, 1L);
		return headers;
	}
	curl_easy_setopt(req->easy, CURLOPT_POST, 1L);
	curl_easy_setopt(req->easy, CURLOPT_POSTFIELDSIZE_LARGE,
					 (curl_off_t) (req->payload ? strlen(req->payload) : 0));
	curl_easy_setopt(req->easy, CURLOPT_POSTFIELDS, req->payload ? req->payload : "");
	foreach(lc, headers)
		typed |= pg_strncasecmp((char *) lfirst(lc), "content-type:", 13) == 0;
	headers = list_copy(headers);
	if (!typed && req->payload && req->opts->content_type)
		headers = lappend(headers, psprintf("Content-Type: %s", req->opts->content_type));
	return lappend(headers, "Expect:");
}

/* Send the next attempt of a request: onto the multi handle. */
static void
send_attempt(EtlHttpRequest *req)
{
	List	   *headers;

	buffer_reset(req->body, (size_t) run_settings->max_response_bytes);
	forget_headers(req);
	req->curl_error[0] = '\0';
	req->blocked_address[0] = '\0';
	req->status = 0;
	req->ignored = false;
	req->rule = 0;

	headers = req->auth && req->auth->headers ? req->auth->headers(req->auth->arg, req->current_url) : NIL;
	req->auth_generation = req->auth && req->auth->generation ?
		req->auth->generation(req->auth->arg) : 0;
	headers = set_method(req, headers);
	req->header_list = header_slist(headers);
	req->longest_gap_ms = 0;
	/* the URL that goes out: the caller's query-string secrets filled in (curl copies it) */
	curl_easy_setopt(req->easy, CURLOPT_URL,
					 req->auth && req->auth->url ? req->auth->url(req->auth->arg, req->current_url) :
					 req->current_url);
	curl_easy_setopt(req->easy, CURLOPT_HTTPHEADER, req->header_list);
	curl_easy_setopt(req->easy, CURLOPT_WRITEDATA, req->body);
	curl_easy_setopt(req->easy, CURLOPT_TIMEOUT_MS,
					 (long) Max(Min((int64) run_settings->request_timeout_ms,
									etl_ms_until_deadline()), 1));
	if (curl_multi_add_handle(multi, req->easy) != CURLM_OK)
		elog(ERROR, "etl_exec: could not start a libcurl transfer");
	req->state = REQ_RUNNING;
}

/* Send again as soon as its host's budget allows: no wait of its own. */
static void
resend_now(EtlHttpRequest *req)
{
	req->state = REQ_WAITING;
	req->not_before = 0;
	req->wait = WAIT_NONE;
}

/* A URL's host, as the budget counts it (in the request's memory). */
static void
set_url(EtlHttpRequest *req, const char *url)
{
	req->current_url = MemoryContextStrdup(req->cxt, url);
	req->budget_key = MemoryContextStrdup(req->cxt, etl_host_budget_key(url));
}

/*
 * Start a request of url into body, a buffer the caller owns (emptied
 * now); etl_http_wait gives its response.  opts (NULL: a plain GET) says
 * whether it is a POST of payload, and which rules judge its responses.
 * The request headers come from auth for every hop, so a redirect to
 * another host gets only what is meant for that host.  Requests are sent
 * in the order they were started.
 */
void
etl_http_start(EtlHttpRequest *req, const char *url, const char *payload,
			   const EtlHttpOptions *opts, const EtlHttpAuth *auth, EtlHttpBuffer *body)
{
	check_host_allowed(url);
	etl_http_abandon(req);
	MemoryContextReset(req->cxt);
	req->error = NULL;
	set_url(req, url);
	req->url = req->current_url;
	req->opts = opts;
	req->post = opts && opts->post;
	req->payload = req->post && payload ? MemoryContextStrdup(req->cxt, payload) : NULL;
	req->auth = auth;
	req->body = body;
	req->attempt = 0;
	req->retries = 0;
	req->free_resends = 0;
	req->redirects = 0;
	req->reauthorized = false;
	req->problem[0] = '\0';
	req->seq = next_seq++;
	buffer_reset(body, (size_t) run_settings->max_response_bytes);
	resend_now(req);
}

/* Drop a request, wherever it is (its transfer stopped, its body left as is). */
void
etl_http_abandon(EtlHttpRequest *req)
{
	if (req == NULL)
		return;
	detach(req);
	req->state = REQ_IDLE;
}

static EtlStopReason settle(EtlHttpRequest *req, bool may_raise);

typedef void (*RequestStep) (EtlHttpRequest *req);

/*
 * Run a step of a request other than the one waited for in a
 * subtransaction of its own: an error is kept with the request
 * (REQ_FAILED), to be raised when it is waited for.
 */
static void
run_apart(EtlHttpRequest *req, RequestStep step)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorContextCallback *context = error_context_stack;

	/* the context of the page waited for now is not this request's */
	error_context_stack = NULL;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		step(req);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		req->error = etl_catch_error(req->cxt);
		RollbackAndReleaseCurrentSubTransaction();
		detach(req);
		req->state = REQ_FAILED;
	}
	PG_END_TRY();
	error_context_stack = context;
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
}

static void
settle_step(EtlHttpRequest *req)
{
	(void) settle(req, true);
}

/*
 * Send the requests whose time has come, oldest first, each when its
 * host's budget allows (else it waits for when the budget says).  *wake:
 * the earliest time a request still waits for (0: none).
 */
static void
send_due_requests(EtlHttpRequest *awaited, TimestampTz *wake)
{
	TimestampTz now = GetCurrentTimestamp();

	*wake = 0;
	for (;;)
	{
		EtlHttpRequest *first = NULL;

		for (int i = 0; i < nrequests; i++)
		{
			EtlHttpRequest *req = requests[i];

			if (req->state != REQ_WAITING)
				continue;
			if (req->not_before > now)
			{
				if (*wake == 0 || req->not_before < *wake)
					*wake = req->not_before;
				continue;
			}
			if (first == NULL || req->seq < first->seq)
				first = req;
		}
		if (first == NULL)
			return;
		if (!etl_host_budget_try_start(first->budget_key, &first->not_before, &first->budget_wait))
		{
			first->wait = WAIT_BUDGET;
			if (*wake == 0 || first->not_before < *wake)
				*wake = first->not_before;
			continue;
		}
		first->budget_held = true;
		if (first == awaited)
			send_attempt(first);
		else
			run_apart(first, send_attempt);
	}
}

/* Whether the response body holds text (a byte search: bodies may hold NULs). */
static bool
body_contains(const EtlHttpBuffer *body, const char *text)
{
	size_t		n = strlen(text);

	if (n == 0)
		return true;
	if (body->data == NULL || body->len < n)
		return false;
	for (size_t i = 0; i + n <= body->len; i++)
		if (body->data[i] == text[0] && memcmp(body->data + i, text, n) == 0)
			return true;
	return false;
}

/* The first of the job's response rules that matches the response, or NULL. */
static const EtlResponseRule *
matching_rule(EtlHttpRequest *req)
{
	if (req->opts == NULL)
		return NULL;
	for (int i = 0; i < req->opts->nrules; i++)
	{
		const EtlResponseRule *r = &req->opts->rules[i];

		if (r->status_lo != 0 && (req->status < r->status_lo || req->status > r->status_hi))
			continue;
		if (r->body_contains && !body_contains(req->body, r->body_contains))
			continue;
		req->rule = i + 1;
		return r;
	}
	return NULL;
}

/*
 * Settle a finished transfer.  may_raise false (the request is not the
 * one waited for): only what raises nothing and runs no SQL -- a 2xx is
 * done, a retryable failure with retries left waits for its retry; the
 * rest stays REQ_FINISHED until the request is waited for.  May return
 * ETL_STOP_TIMED_OUT (the transfer ran into the run's deadline).
 */
static EtlStopReason
settle(EtlHttpRequest *req, bool may_raise)
{
	const char *why;
	const char *hint;
	int64		delay;

	Assert(req->state == REQ_FINISHED);
	if (req->blocked_address[0])
	{
		if (!may_raise)
			return ETL_STOP_NONE;
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("refused to connect to %s for %s: unspecified, link-local and cloud-metadata addresses are blocked",
						req->blocked_address, etl_url_redact(req->current_url)),
				 errhint("A superuser can allow the address by listing it in etl_exec.allowed_hosts.")));
	}
	if (req->result == CURLE_OK)
	{
		long		status = req->status;
		bool		ok = status >= 200 && status < 300;
		const EtlResponseRule *rule;

		if (ok && (req->opts == NULL || req->opts->nrules == 0))
		{
			req->state = REQ_DONE;
			return ETL_STOP_NONE;
		}
		if (!ok && !may_raise && !retryable_status(status))
			return ETL_STOP_NONE;
		if (status >= 300 && status < 400 && req->location[0])
		{
			if (++req->redirects > ETL_MAX_REDIRECTS)
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("too many redirects (more than %d) from %s",
								ETL_MAX_REDIRECTS, etl_url_redact(req->url))));
			set_url(req, etl_url_resolve(req->current_url, req->location));
			check_host_allowed(req->current_url);
			/* as browsers and curl do: 307 and 308 alone keep a POST a POST */
			if (status == 301 || status == 302 || status == 303)
				req->post = false;
			resend_now(req);
			return ETL_STOP_NONE;
		}
		if (status == 401 && req->auth && req->auth->generation &&
			req->auth->generation(req->auth->arg) != req->auth_generation)
		{
			/* sent before the credentials were renewed (for another page): again */
			resend_now(req);
			return ETL_STOP_NONE;
		}
		if (status == 401 && !req->reauthorized && req->auth && req->auth->renew &&
			req->auth->renew(req->auth->arg))
		{
			/* credentials the server no longer takes: renewed, try once more */
			req->reauthorized = true;
			resend_now(req);
			return ETL_STOP_NONE;
		}

		/* the job's response rules, then the rules of HTTP */
		rule = matching_rule(req);
		if (rule == NULL && ok)
		{
			req->state = REQ_DONE;
			return ETL_STOP_NONE;
		}
		if (rule && rule->action == ETL_RULE_IGNORE)
		{
			req->ignored = true;
			req->state = REQ_DONE;
			return ETL_STOP_NONE;
		}
		if (rule && rule->action == ETL_RULE_FAIL)
		{
			if (!may_raise)
				return ETL_STOP_NONE;
			ereport(ERROR,
					(errcode(ETL_ERRCODE_HTTP_REFUSED),
					 errmsg("HTTP %ld from %s: %s", status,
							etl_url_redact(req->current_url), body_snippet(req->body)),
					 errdetail("Response rule %d of the job says fail.", req->rule)));
		}
		if (rule == NULL && !retryable_status(status))
			ereport(ERROR,
					(errcode(ETL_ERRCODE_HTTP_REFUSED),
					 errmsg("HTTP %ld from %s: %s", status,
							etl_url_redact(req->current_url), body_snippet(req->body))));
		snprintf(req->problem, sizeof(req->problem), "HTTP %ld: %s", status, body_snippet(req->body));

		/*
		 * A 429 with Retry-After paused the host for every run
		 * (host_budget.c); waiting for that is the API's schedule, not a
		 * failure: no retry spent.
		 */
		if (status == 429 && req->rate.retry_after_ms >= 0)
		{
			req->retries++;
			resend_now(req);
			return ETL_STOP_NONE;
		}
	}
	else
	{
		/* a transfer that did not complete: some errors no retry can fix */
		if (req->result == CURLE_OPERATION_TIMEDOUT && etl_ms_until_deadline() <= 0)
			return ETL_STOP_TIMED_OUT;
		if (req->result == CURLE_OPERATION_TIMEDOUT && req->longest_gap_ms >= ETL_IDLE_GAP_MS &&
			req->free_resends < ETL_MAX_FREE_RESENDS)
		{
			/* its timer ran while the worker loaded a page: not the API's fault */
			elog(DEBUG1, "etl_exec: %s timed out while the worker was busy (" INT64_FORMAT " ms); sending it again",
				 etl_url_redact(req->current_url), req->longest_gap_ms);
			req->free_resends++;
			resend_now(req);
			return ETL_STOP_NONE;
		}
		if (req->result == CURLE_WRITE_ERROR && req->body->over_budget)
		{
			if (!may_raise)
				return ETL_STOP_NONE;
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("the run's responses in flight would hold more than etl_exec.max_bytes_in_flight (%zu bytes)",
							(size_t) run_settings->max_bytes_in_flight),
					 errdetail("The response from %s had %zu bytes when its buffer had to grow; the run's buffers held %zu bytes in all.",
							   etl_url_redact(req->current_url), req->body->len, held_bytes),
					 errhint("Lower the job's concurrency or page_size, or let a superuser raise etl_exec.max_bytes_in_flight.")));
		}
		if (req->result == CURLE_WRITE_ERROR && req->body->too_big)
		{
			if (!may_raise)
				return ETL_STOP_NONE;
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("response from %s is larger than etl_exec.max_response_bytes (%zu bytes)",
							etl_url_redact(req->current_url), req->body->max),
					 errhint("Lower the job's page_size, or raise etl_exec.max_response_bytes.")));
		}
		if (req->result == CURLE_UNSUPPORTED_PROTOCOL)
		{
			if (!may_raise)
				return ETL_STOP_NONE;
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("URL %s does not use http or https", etl_url_redact(req->current_url)),
					 errhint("etl_exec only fetches http:// and https:// URLs.")));
		}
		snprintf(req->problem, sizeof(req->problem), "%s",
				 req->curl_error[0] ? req->curl_error : curl_easy_strerror(req->result));
		if (transfer_failure_is_permanent(req->result, &why, &hint))
		{
			if (!may_raise)
				return ETL_STOP_NONE;
			ereport(ERROR,
					(errcode(req->result == CURLE_BAD_CONTENT_ENCODING ?
							 ERRCODE_PROTOCOL_VIOLATION : ERRCODE_CONNECTION_FAILURE),
					 errmsg("request to %s failed: %s", etl_url_redact(req->current_url), req->problem),
					 errdetail("Not retried: %s, and sending it again gets the same answer.", why),
					 errhint("%s", hint)));
		}
	}

	/* retryable: a connection problem, a timeout, 408/429/5xx, a rule's retry */
	if (req->attempt >= run_settings->max_retries)
	{
		if (!may_raise)
			return ETL_STOP_NONE;
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("request to %s failed after %d retries: %s",
						etl_url_redact(req->current_url), req->attempt, req->problem)));
	}
	delay = retry_delay_ms(req);
	elog(DEBUG1, "etl_exec: retrying %s in " INT64_FORMAT " ms: %s",
		 etl_url_redact(req->current_url), delay, req->problem);
	req->attempt++;
	req->retries++;
	req->state = REQ_WAITING;
	req->wait = req->retry_after[0] ? WAIT_RETRY_AFTER : WAIT_BACKOFF;
	req->not_before = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay);
	return ETL_STOP_NONE;
}

/*
 * The transfers that ended: finished, and settled at once when that
 * cannot raise (all but `awaited`, which its waiter settles).
 */
static void
collect_finished(EtlHttpRequest *awaited)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		EtlHttpRequest *req = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &req);
		if (req == NULL || req->state != REQ_RUNNING)
			continue;
		req->result = msg->data.result;
		curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &req->status);
		etl_host_budget_finish(req->budget_key, req->result == CURLE_OK ? req->status : 0,
							   &req->rate);
		req->budget_held = false;
		detach(req);
		req->state = REQ_FINISHED;
		if (req != awaited)
		{
			/* what raises nothing at once; the rest apart, its error kept */
			(void) settle(req, false);
			if (req->state == REQ_FINISHED)
				run_apart(req, settle_step);
		}
	}
}

/* Let every transfer make progress, without waiting. */
static void
perform(EtlHttpRequest *awaited)
{
	int			running;
	CURLMcode	mc;
	TimestampTz now = GetCurrentTimestamp();

	/* how long the transfers went undriven (a page being loaded, say) */
	if (last_driven != 0 && now - last_driven >= (int64) ETL_IDLE_GAP_MS * 1000)
		for (int i = 0; i < nrequests; i++)
			if (requests[i]->state == REQ_RUNNING)
				requests[i]->longest_gap_ms = Max(requests[i]->longest_gap_ms,
												  (now - last_driven) / 1000);
	mc = curl_multi_perform(multi, &running);
	last_driven = GetCurrentTimestamp();

	if (mc != CURLM_OK)
		elog(ERROR, "etl_exec: libcurl multi error: %s", curl_multi_strerror(mc));
	collect_finished(awaited);
}

/*
 * Whether the awaited request's wait passes the run's deadline: the run
 * then stops now (it can be resumed), recording when the API takes
 * requests again if the API said so.  Shows a long wait for the host's
 * budget in etl_run_progress.
 */
static bool
wait_passes_deadline(EtlHttpRequest *awaited)
{
	int64		ms;

	if (awaited->state != REQ_WAITING || awaited->wait == WAIT_NONE)
	{
		etl_rate_wait_end();
		return false;
	}
	ms = ms_until(awaited->not_before);
	if (awaited->wait == WAIT_BUDGET && awaited->budget_wait == ETL_BUDGET_CONCURRENCY)
	{
		etl_rate_wait_end();
		return false;			/* not a time: a poll for a free place */
	}
	if (ms >= etl_ms_until_deadline())
	{
		if (awaited->wait == WAIT_BUDGET || awaited->wait == WAIT_RETRY_AFTER)
			etl_rate_limit_stop(awaited->budget_key, awaited->not_before);
		etl_rate_wait_end();
		return true;
	}
	if (awaited->wait == WAIT_BUDGET &&
		(awaited->budget_wait == ETL_BUDGET_PAUSED || awaited->budget_wait == ETL_BUDGET_QUOTA ||
		 ms >= 1000))
		etl_rate_wait_begin(awaited->budget_key, awaited->not_before);
	return false;
}

/*
 * Drive every request until `awaited` has finished, polled so that stop
 * requests are seen within ETL_POLL_MS.
 */
static EtlStopReason
drive_until_finished(EtlHttpRequest *awaited)
{
	for (;;)
	{
		TimestampTz wake;
		EtlStopReason stop;
		long		timeout = ETL_POLL_MS;
		CURLMcode	mc;

		if ((stop = etl_pending_stop()) != ETL_STOP_NONE)
			return stop;
		send_due_requests(awaited, &wake);
		if (wait_passes_deadline(awaited))
			return ETL_STOP_TIMED_OUT;
		perform(awaited);
		if (awaited->state == REQ_FINISHED || awaited->state == REQ_DONE ||
			awaited->state == REQ_FAILED)
			return ETL_STOP_NONE;
		if (awaited->state == REQ_IDLE)
			elog(ERROR, "etl_exec: waiting for an HTTP request that was not started");
		if (wake != 0)
			timeout = Min(timeout, ms_until(wake));
		mc = curl_multi_poll(multi, NULL, 0, (int) timeout, NULL);
		if (mc != CURLM_OK && mc != CURLM_UNRECOVERABLE_POLL)
			elog(ERROR, "etl_exec: libcurl poll error: %s", curl_multi_strerror(mc));
	}
}

/* The response a completed request leaves: body, status, Link headers. */
static void
fill_response(EtlHttpRequest *req, EtlHttpResponse *resp)
{
	memset(resp, 0, sizeof(*resp));
	resp->status = req->status;
	resp->body = req->body->data ? req->body->data : "";
	resp->body_len = req->body->len;
	resp->effective_url = pstrdup(req->current_url);
	resp->retries = req->retries;
	resp->header_value = req->captured[0] ? pstrdup(req->captured) : NULL;
	resp->ignored = req->ignored;
	resp->rule = req->ignored ? req->rule : 0;
	if (req->link_buf.len > 0)
	{
		char	   *copy = pnstrdup(req->link_buf.data, req->link_buf.len);
		char	   *save = NULL;

		for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
			resp->link_headers = lappend(resp->link_headers, line);
	}
}

/*
 * Wait for a started request's response, while the other started requests
 * make progress.  On success fills *resp (its body is the request's body
 * buffer, valid until that is used again) and returns ETL_STOP_NONE.
 * Returns a stop reason when the run must stop (deadline, cancel,
 * terminate) before a complete response was had; raises an error for an
 * HTTP error that retries cannot fix.
 */
EtlStopReason
etl_http_wait(EtlHttpRequest *req, EtlHttpResponse *resp)
{
	memset(resp, 0, sizeof(*resp));
	for (;;)
	{
		EtlStopReason stop;

		if ((stop = drive_until_finished(req)) != ETL_STOP_NONE)
			return stop;
		if (req->state == REQ_FAILED)
		{
			/* met while another request was waited for: raised as this page's */
			ErrorData  *e = req->error;

			req->state = REQ_IDLE;
			ereport(ERROR,
					(errcode(e->sqlerrcode),
					 errmsg_internal("%s", e->message),
					 e->detail ? errdetail_internal("%s", e->detail) : 0,
					 e->hint ? errhint("%s", e->hint) : 0));
		}
		if (req->state == REQ_FINISHED &&
			(stop = settle(req, true)) != ETL_STOP_NONE)
			return stop;
		if (req->state == REQ_DONE)
			break;
	}
	fill_response(req, resp);
	etl_rate_limit_stop(NULL, 0);	/* a wait that stopped nothing after all */
	return ETL_STOP_NONE;
}

/*
 * Whether a started request has its response already (a body in its
 * buffer to read: not one a response rule ignored), after letting every
 * transfer make progress; never waits.
 */
bool
etl_http_ready(EtlHttpRequest *req)
{
	TimestampTz wake;

	if (req->state != REQ_DONE)
	{
		send_due_requests(NULL, &wake);
		perform(NULL);
	}
	return req->state == REQ_DONE && !req->ignored;
}

/* One request, waited for: etl_http_start and etl_http_wait. */
EtlStopReason
etl_http_get(const char *url, const char *payload, const EtlHttpOptions *opts,
			 const EtlHttpAuth *auth, EtlHttpBuffer *body, EtlHttpResponse *resp)
{
	EtlStopReason stop;

	if ((stop = etl_pending_stop()) != ETL_STOP_NONE)
		return stop;
	etl_http_start(get_request, url, payload, opts, auth, body);
	stop = etl_http_wait(get_request, resp);
	if (stop != ETL_STOP_NONE)
		etl_http_abandon(get_request);
	return stop;
}

/*
 * One transfer on a multi handle of its own, polled so that stop requests
 * are seen within ETL_POLL_MS.  Returns the stop reason (ETL_STOP_NONE
 * when the transfer completed, in which case *result is curl's result).
 */
static EtlStopReason
perform_alone(CURLM *m, CURL *handle, CURLcode *result)
{
	int			running = 1;
	EtlStopReason stop = ETL_STOP_NONE;
	CURLMsg    *msg;
	int			left;

	curl_multi_add_handle(m, handle);
	for (;;)
	{
		CURLMcode	mc = curl_multi_perform(m, &running);

		if (mc != CURLM_OK)
		{
			curl_multi_remove_handle(m, handle);
			elog(ERROR, "etl_exec: libcurl multi error: %s", curl_multi_strerror(mc));
		}
		if (running == 0)
			break;
		if ((stop = etl_pending_stop()) != ETL_STOP_NONE)
			break;
		mc = curl_multi_poll(m, NULL, 0, ETL_POLL_MS, NULL);
		if (mc != CURLM_OK && mc != CURLM_UNRECOVERABLE_POLL)
		{
			curl_multi_remove_handle(m, handle);
			elog(ERROR, "etl_exec: libcurl poll error: %s", curl_multi_strerror(mc));
		}
		if ((stop = etl_pending_stop()) != ETL_STOP_NONE)
			break;
	}
	*result = CURLE_OK;
	while ((msg = curl_multi_info_read(m, &left)) != NULL)
		if (msg->msg == CURLMSG_DONE)
			*result = msg->data.result;
	curl_multi_remove_handle(m, handle);
	return stop;
}

/*
 * POST a form (OAuth2 token requests) and return the body; raises an error
 * on anything but a 2xx.  Its own handle, buffer and multi handle: it may
 * run while page requests are in flight (their headers being built).
 * Polled like every transfer (a stop request ends it at once, as a query
 * cancel) and bounded by the run's time left.
 */
char *
etl_http_post_form(const char *url, const char *form, const char *what)
{
	CURL	   *h = curl_easy_init();
	EtlHttpRequest *checks = palloc0(sizeof(EtlHttpRequest));	/* for the address check */
	EtlHttpBuffer body = {0};
	CURLcode	res = CURLE_OK;
	EtlStopReason stop;
	long		status = 0;
	char		curl_error[CURL_ERROR_SIZE] = "";
	char	   *result;

	check_host_allowed(url);
	if (h == NULL)
		elog(ERROR, "etl_exec: could not create a libcurl handle");
	if (form_multi == NULL && (form_multi = curl_multi_init()) == NULL)
		elog(ERROR, "etl_exec: could not create a libcurl handle");
	body.max = 1024 * 1024;
	set_handle_options(h);
	curl_easy_setopt(h, CURLOPT_OPENSOCKETDATA, checks);
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, form);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_error);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS,
					 (long) Max(Min((int64) run_settings->request_timeout_ms, etl_ms_until_deadline()), 1));
	stop = perform_alone(form_multi, h, &res);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(h);
	result = pnstrdup(body.data ? body.data : "", body.len);
	etl_http_buffer_free(&body);

	if (stop != ETL_STOP_NONE)
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("%s: request stopped (%s)", what,
						stop == ETL_STOP_TIMED_OUT ? "the run's timeout" : "cancel or shutdown")));
	if (checks->blocked_address[0])
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("refused to connect to %s for %s: unspecified, link-local and cloud-metadata addresses are blocked",
						checks->blocked_address, etl_url_redact(url)),
				 errhint("A superuser can allow the address by listing it in etl_exec.allowed_hosts.")));
	if (res != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("%s: request to %s failed: %s", what, etl_url_redact(url),
						curl_error[0] ? curl_error : curl_easy_strerror(res))));
	if (status < 200 || status >= 300)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("%s: HTTP %ld from %s: %.300s", what, status, etl_url_redact(url),
						etl_redact(result))));
	return result;
}
