/*-------------------------------------------------------------------------
 *
 * http_client.c
 *	  The worker's HTTP client: one reused libcurl handle (keep-alive),
 *	  driven through the multi interface so that a transfer can be stopped
 *	  within ~100 ms by a cancel, a terminate, a shutdown or the run's
 *	  deadline; retries with backoff; redirects followed by hand so every
 *	  hop is checked against the allowed hosts.
 *
 * libcurl callbacks never ereport() or CHECK_FOR_INTERRUPTS(): a longjmp
 * through curl would corrupt it.  They only copy bytes into malloc'd
 * buffers and return an abort code when a body grows too large; errors
 * are raised after curl has returned.
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

#include "common/pg_prng.h"
#include "miscadmin.h"

#include "etl_exec.h"

#define ETL_MAX_REDIRECTS 5
#define ETL_POLL_MS 100

static CURL *easy = NULL;
static CURLM *multi = NULL;
static EtlHttpBuffer link_buf;	/* Link header values, '\n'-separated */
static char retry_after_buf[128];
static char location_buf[4096];
static const EtlRunSettings *run_settings;
static EtlRateHeaders rate_headers;	/* rate budget (issue 12): the response's quota */

static curl_socket_t open_checked_socket(void *clientp, curlsocktype purpose,
										 struct curl_sockaddr *address);

static bool
buffer_append(EtlHttpBuffer *buf, const char *data, size_t n)
{
	if (buf->len + n + 1 > buf->cap)
	{
		size_t		newcap = Max(buf->cap * 2, buf->len + n + 1);
		char	   *p;

		newcap = Max(newcap, 16384);
		p = realloc(buf->data, newcap);
		if (p == NULL)
			return false;
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
	if (buf->data)
		buf->data[0] = '\0';
}

/* Free a body buffer's memory (it may be used again: it grows anew). */
void
etl_http_buffer_free(EtlHttpBuffer *buf)
{
	free(buf->data);
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

/* forget the response headers kept so far */
static void
forget_headers(void)
{
	link_buf.len = 0;
	if (link_buf.data)
		link_buf.data[0] = '\0';
	retry_after_buf[0] = '\0';
	location_buf[0] = '\0';
	etl_rate_headers_reset(&rate_headers);
}

static size_t
read_header(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	size_t		n = size * nmemb;

	etl_rate_header_line(&rate_headers, ptr, n);	/* rate budget (issue 12) */
	if (n >= 5 && strncmp(ptr, "HTTP/", 5) == 0)
	{
		/* a new response (after a 100-continue or similar): start over */
		forget_headers();
	}
	else if (n > 5 && pg_strncasecmp(ptr, "link:", 5) == 0)
	{
		char		value[8192];

		copy_header_value(value, sizeof(value), ptr + 5, n - 5);
		if (!buffer_append(&link_buf, value, strlen(value)) ||
			!buffer_append(&link_buf, "\n", 1))
			return 0;
	}
	else if (n > 12 && pg_strncasecmp(ptr, "retry-after:", 12) == 0)
		copy_header_value(retry_after_buf, sizeof(retry_after_buf), ptr + 12, n - 12);
	else if (n > 9 && pg_strncasecmp(ptr, "location:", 9) == 0)
		copy_header_value(location_buf, sizeof(location_buf), ptr + 9, n - 9);
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
	easy = curl_easy_init();
	multi = curl_multi_init();
	if (easy == NULL || multi == NULL)
		elog(ERROR, "etl_exec: could not create a libcurl handle");
	run_settings = settings;
	/* settings stored before user_agent was checked when set */
	if (settings->user_agent && !etl_header_value_is_safe(settings->user_agent))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("etl_exec.user_agent must not contain control characters such as line breaks")));

	set_handle_options(easy);
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, read_header);
	curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "");
	curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(easy, CURLOPT_LOW_SPEED_TIME, (long) settings->low_speed_time_seconds);
	curl_easy_setopt(easy, CURLOPT_USERAGENT,
					 settings->user_agent && settings->user_agent[0] ? settings->user_agent : "etl_exec/0.1");
}

void
etl_http_cleanup(void)
{
	if (multi)
		curl_multi_cleanup(multi);
	if (easy)
		curl_easy_cleanup(easy);
	multi = NULL;
	easy = NULL;
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

/*
 * One transfer, polled so that stop requests are seen within ETL_POLL_MS.
 * Returns the stop reason (ETL_STOP_NONE when the transfer completed, in
 * which case *result is curl's result).
 */
static EtlStopReason
perform_transfer(CURL *handle, CURLcode *result)
{
	int			running = 1;
	EtlStopReason stop = ETL_STOP_NONE;

	/* after an error raised mid-transfer the handle may still be attached */
	curl_multi_remove_handle(multi, handle);
	curl_multi_add_handle(multi, handle);
	for (;;)
	{
		CURLMcode	mc = curl_multi_perform(multi, &running);

		if (mc != CURLM_OK)
		{
			curl_multi_remove_handle(multi, handle);
			elog(ERROR, "etl_exec: libcurl multi error: %s", curl_multi_strerror(mc));
		}
		if (running == 0)
			break;
		if ((stop = etl_pending_stop()) != ETL_STOP_NONE)
			break;
		mc = curl_multi_poll(multi, NULL, 0, ETL_POLL_MS, NULL);
		if (mc != CURLM_OK && mc != CURLM_UNRECOVERABLE_POLL)
		{
			curl_multi_remove_handle(multi, handle);
			elog(ERROR, "etl_exec: libcurl poll error: %s", curl_multi_strerror(mc));
		}
		if ((stop = etl_pending_stop()) != ETL_STOP_NONE)
			break;
	}

	*result = CURLE_OK;
	if (stop == ETL_STOP_NONE)
	{
		CURLMsg    *msg;
		int			left;

		while ((msg = curl_multi_info_read(multi, &left)) != NULL)
			if (msg->msg == CURLMSG_DONE)
				*result = msg->data.result;
	}
	curl_multi_remove_handle(multi, handle);
	return stop;
}

static bool
retryable_status(long status)
{
	return status == 429 || status == 408 || (status >= 500 && status <= 599);
}

/* Delay before retry number `attempt` (0-based): Retry-After, or backoff. */
static int64
retry_delay_ms(int attempt)
{
	int64		base = run_settings->retry_base_delay_ms;
	int64		delay;

	if (retry_after_buf[0])
	{
		char	   *end;
		long		secs = strtol(retry_after_buf, &end, 10);

		if (end != retry_after_buf && *end == '\0' && secs >= 0)
			return (int64) Min(secs, 86400L) * 1000;
		else
		{
			time_t		when = curl_getdate(retry_after_buf, NULL);

			if (when > 0)
				return Min(Max((int64) (when - time(NULL)), 0), (int64) 86400) * 1000;
		}
	}
	delay = base << Min(attempt, 16);
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
 * inside a curl callback: only sets a flag.
 */
static char blocked_address[INET6_ADDRSTRLEN + 1];

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
		strlcpy(blocked_address, text, sizeof(blocked_address));
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

/*
 * Send one request for url and wait for its response (into body), polled
 * so that a stop request ends it.  On ETL_STOP_NONE *res is curl's result.
 */
static EtlStopReason
send_request(const char *url, const EtlHttpAuth *auth, EtlHttpBuffer *body,
			 CURLcode *res, char *curl_error)
{
	EtlStopReason stop;
	struct curl_slist *header_list;
	int64		ms_left = etl_ms_until_deadline();

	buffer_reset(body, (size_t) run_settings->max_response_bytes);
	forget_headers();
	curl_error[0] = '\0';
	blocked_address[0] = '\0';

	header_list = header_slist(auth && auth->headers ? auth->headers(auth->arg, url) : NIL);
	curl_easy_setopt(easy, CURLOPT_URL, url);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, header_list);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, body);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, curl_error);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS,
					 (long) Max(Min((int64) run_settings->request_timeout_ms, ms_left), 1));

	stop = perform_transfer(easy, res);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, NULL);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, NULL);
	curl_slist_free_all(header_list);
	if (stop != ETL_STOP_NONE)
		return stop;

	if (blocked_address[0])
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("refused to connect to %s for %s: unspecified, link-local and cloud-metadata addresses are blocked",
						blocked_address, etl_url_redact(url)),
				 errhint("A superuser can allow the address by listing it in etl_exec.allowed_hosts.")));
	return ETL_STOP_NONE;
}

/*
 * A transfer that did not complete: raise the errors no retry can fix;
 * else describe it in problem (for the retry message) and return
 * ETL_STOP_TIMED_OUT when it ran into the run's deadline.
 */
static EtlStopReason
transfer_problem(CURLcode res, const char *url, const EtlHttpBuffer *body,
				 const char *curl_error, char *problem, size_t problem_len)
{
	if (res == CURLE_WRITE_ERROR && body->too_big)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("response from %s is larger than etl_exec.max_response_bytes (%zu bytes)",
						etl_url_redact(url), body->max),
				 errhint("Lower the job's page_size, or raise etl_exec.max_response_bytes.")));
	if (res == CURLE_UNSUPPORTED_PROTOCOL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("URL %s does not use http or https", etl_url_redact(url)),
				 errhint("etl_exec only fetches http:// and https:// URLs.")));
	if (res == CURLE_OPERATION_TIMEDOUT && etl_ms_until_deadline() <= 0)
		return ETL_STOP_TIMED_OUT;
	snprintf(problem, problem_len, "%s", curl_error[0] ? curl_error : curl_easy_strerror(res));
	return ETL_STOP_NONE;
}

/*
 * Before retry number attempt + 1 of url: fail when the retries are spent;
 * wait (Retry-After, or backoff), or stop when the wait would pass the
 * run's deadline.
 */
static EtlStopReason
wait_to_retry(int attempt, const char *url, const char *problem)
{
	int64		delay;

	if (attempt >= run_settings->max_retries)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("request to %s failed after %d retries: %s",
						etl_url_redact(url), attempt, problem)));
	delay = retry_delay_ms(attempt);
	/* a wait that would pass the deadline: stop now, resumable */
	if (delay >= etl_ms_until_deadline())
	{
		/* rate budget (issue 12): the API said when: resume_after */
		if (retry_after_buf[0])
			etl_rate_limit_stop(etl_host_budget_key(url),
								TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay));
		return ETL_STOP_TIMED_OUT;
	}
	elog(DEBUG1, "etl_exec: retrying %s in " INT64_FORMAT " ms: %s",
		 etl_url_redact(url), delay, problem);
	etl_wait_ms(delay);
	return ETL_STOP_NONE;
}

/* The response a completed GET of url leaves: body, status, Link headers. */
static void
fill_response(EtlHttpResponse *resp, char *url, const EtlHttpBuffer *body)
{
	resp->status = 200;
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &resp->status);
	resp->body = body->data ? body->data : "";
	resp->body_len = body->len;
	resp->retry_after = NULL;
	resp->effective_url = url;
	if (link_buf.len > 0)
	{
		char	   *copy = pnstrdup(link_buf.data, link_buf.len);
		char	   *save = NULL;

		for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
			resp->link_headers = lappend(resp->link_headers, line);
	}
}

/*
 * GET a URL into body, a buffer the caller owns.  The request headers come
 * from auth for every hop, so a redirect to another host gets only what is
 * meant for that host; after a 401 auth may renew its credentials for one
 * more try.  On success fills *resp (its body is body's data, valid until
 * body is used again) and returns ETL_STOP_NONE.  Returns a stop reason
 * when the run must stop (deadline, cancel, terminate) before a complete
 * response was had; raises an error for an HTTP error that retries cannot
 * fix.
 */
EtlStopReason
etl_http_get(const char *url, const EtlHttpAuth *auth, EtlHttpBuffer *body,
			 EtlHttpResponse *resp)
{
	char	   *current_url = pstrdup(url);
	int			redirects = 0;
	int			attempt = 0;
	bool		reauthorized = false;
	char		problem[512];

	memset(resp, 0, sizeof(*resp));
	for (;;)
	{
		EtlStopReason stop;
		CURLcode	res;
		long		status = 0;
		char		curl_error[CURL_ERROR_SIZE];
		char	   *budget_key;

		if ((stop = etl_pending_stop()) != ETL_STOP_NONE)
			return stop;
		check_host_allowed(current_url);

		/* rate budget (issue 12): wait for the host's budget, shared by all runs */
		budget_key = etl_host_budget_key(current_url);
		if ((stop = etl_host_budget_start(budget_key)) != ETL_STOP_NONE)
			return stop;
		stop = send_request(current_url, auth, body, &res, curl_error);
		if (stop == ETL_STOP_NONE && res == CURLE_OK)
			curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
		etl_host_budget_finish(budget_key, status, &rate_headers);
		if (stop != ETL_STOP_NONE)
			return stop;

		if (res == CURLE_OK)
		{
			if (status >= 200 && status < 300)
				break;
			if (status >= 300 && status < 400 && location_buf[0])
			{
				if (++redirects > ETL_MAX_REDIRECTS)
					ereport(ERROR,
							(errcode(ERRCODE_CONNECTION_FAILURE),
							 errmsg("too many redirects (more than %d) from %s",
									ETL_MAX_REDIRECTS, etl_url_redact(url))));
				current_url = etl_url_resolve(current_url, location_buf);
				continue;
			}
			if (status == 401 && !reauthorized && auth && auth->renew && auth->renew(auth->arg))
			{
				/* credentials the server no longer takes: renewed, try once more */
				reauthorized = true;
				continue;
			}
			if (!retryable_status(status))
				ereport(ERROR,
						(errcode(ETL_ERRCODE_HTTP_REFUSED),
						 errmsg("HTTP %ld from %s: %s", status,
								etl_url_redact(current_url), body_snippet(body))));
			snprintf(problem, sizeof(problem), "HTTP %ld: %s", status, body_snippet(body));

			/*
			 * rate budget (issue 12): a 429 paused the host for every run
			 * until Retry-After; the next turn waits for that (or stops the
			 * run, resumable after it, when it lies past the deadline).  Such
			 * a wait is the API's schedule, not a failure: no retry spent.
			 */
			if (status == 429 && rate_headers.retry_after_ms >= 0)
			{
				resp->retries++;
				continue;
			}
		}
		else if ((stop = transfer_problem(res, current_url, body, curl_error,
										  problem, sizeof(problem))) != ETL_STOP_NONE)
			return stop;

		/* retryable: a connection problem, a timeout, 408/429/5xx */
		if ((stop = wait_to_retry(attempt, current_url, problem)) != ETL_STOP_NONE)
			return stop;
		attempt++;
		resp->retries++;
	}

	fill_response(resp, current_url, body);
	return ETL_STOP_NONE;
}

/*
 * POST a form (OAuth2 token requests) and return the body; raises an error
 * on anything but a 2xx.  Its own handle and buffer: it may run while a
 * GET is being prepared (its headers built).  Polled like every transfer (a stop request ends
 * it at once, as a query cancel) and bounded by the run's time left.
 */
char *
etl_http_post_form(const char *url, const char *form, const char *what)
{
	CURL	   *h = curl_easy_init();
	EtlHttpBuffer body = {0};
	CURLcode	res = CURLE_OK;
	EtlStopReason stop;
	long		status = 0;
	char		curl_error[CURL_ERROR_SIZE] = "";
	char	   *result;

	check_host_allowed(url);
	if (h == NULL)
		elog(ERROR, "etl_exec: could not create a libcurl handle");
	body.max = 1024 * 1024;
	set_handle_options(h);
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, form);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_error);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS,
					 (long) Max(Min((int64) run_settings->request_timeout_ms, etl_ms_until_deadline()), 1));
	stop = perform_transfer(h, &res);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(h);
	result = pnstrdup(body.data ? body.data : "", body.len);
	etl_http_buffer_free(&body);

	if (stop != ETL_STOP_NONE)
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("%s: request stopped (%s)", what,
						stop == ETL_STOP_TIMED_OUT ? "the run's timeout" : "cancel or shutdown")));

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
