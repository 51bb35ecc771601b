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

/* a growable malloc'd buffer, filled from curl callbacks */
typedef struct CurlBuffer
{
	char	   *data;
	size_t		len;
	size_t		cap;
	size_t		max;
	bool		too_big;
} CurlBuffer;

static CURL *easy = NULL;
static CURLM *multi = NULL;
static CurlBuffer body_buf;
static CurlBuffer link_buf;		/* Link header values, '\n'-separated */
static char retry_after_buf[128];
static char location_buf[4096];
static const EtlRunSettings *run_settings;

static curl_socket_t open_checked_socket(void *clientp, curlsocktype purpose,
										 struct curl_sockaddr *address);

static bool
buffer_append(CurlBuffer *buf, const char *data, size_t n)
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

static size_t
write_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	size_t		n = size * nmemb;

	if (body_buf.len + n > body_buf.max)
	{
		body_buf.too_big = true;
		return 0;				/* makes curl abort with CURLE_WRITE_ERROR */
	}
	if (!buffer_append(&body_buf, ptr, n))
		return 0;
	return n;
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

static size_t
read_header(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	size_t		n = size * nmemb;

	if (n >= 5 && strncmp(ptr, "HTTP/", 5) == 0)
	{
		/* a new response (after a 100-continue or similar): start over */
		link_buf.len = 0;
		if (link_buf.data)
			link_buf.data[0] = '\0';
		retry_after_buf[0] = '\0';
		location_buf[0] = '\0';
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
	body_buf.max = (size_t) settings->max_response_bytes;
	/* settings stored before user_agent was checked when set */
	if (settings->user_agent && !etl_header_value_is_safe(settings->user_agent))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("etl_exec.user_agent must not contain control characters such as line breaks")));

	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	/* no proxy from the server's environment: addresses are checked directly */
	curl_easy_setopt(easy, CURLOPT_PROXY, "");
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_body);
	curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, read_header);
	curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "");
	curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) settings->connect_timeout_ms);
	curl_easy_setopt(easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(easy, CURLOPT_LOW_SPEED_TIME, (long) settings->low_speed_time_seconds);
	curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, open_checked_socket);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
	if (settings->ca_file && settings->ca_file[0])
		curl_easy_setopt(easy, CURLOPT_CAINFO, settings->ca_file);
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
body_snippet(void)
{
	size_t		n = Min(body_buf.len, (size_t) 300);
	char	   *s = pnstrdup(body_buf.data ? body_buf.data : "", n);

	for (char *p = s; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	return etl_redact(s);
}

/*
 * Refuse addresses that reach this host's unspecified address or the cloud
 * metadata service, whatever name led there and in whichever form:
 * 0.0.0.0/8 and link-local 169.254.0.0/16 (IPv4, and IPv4-mapped or NAT64
 * IPv6 forms of them), ::, IPv4-compatible ::a.b.c.d, fe80::/10 and
 * fd00:ec2::254 -- unless etl_exec.allowed_hosts names that address itself.
 * Loopback (127.0.0.0/8, ::1) stays allowed: local APIs are common.  Runs
 * inside a curl callback: only sets a flag.
 */
static char blocked_address[INET6_ADDRSTRLEN + 1];

static bool
ipv4_blocked(uint32 a)
{
	return (a >> 24) == 0 || (a >> 16) == ((169 << 8) | 254);
}

static bool
ipv6_blocked(const unsigned char *b)
{
	static const unsigned char metadata[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54};
	static const unsigned char zeros[12] = {0};
	static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
	static const unsigned char nat64_local[6] = {0, 0x64, 0xff, 0x9b, 0, 0x01};
	uint32		v4 = ((uint32) b[12] << 24) | ((uint32) b[13] << 16) | ((uint32) b[14] << 8) | b[15];

	if ((b[0] == 0xfe && (b[1] & 0xc0) == 0x80) || memcmp(b, metadata, 16) == 0)
		return true;
	/* ::, and IPv4-compatible ::a.b.c.d (all but ::1) */
	if (memcmp(b, zeros, 12) == 0)
		return v4 != 1;
	if (memcmp(b, mapped, 12) == 0)
		return ipv4_blocked(v4);
	/* NAT64 (64:ff9b::/96, 64:ff9b:1::/48) to a blocked or loopback address */
	if (memcmp(b, nat64, 12) == 0 || memcmp(b, nat64_local, 6) == 0)
		return ipv4_blocked(v4) || (v4 >> 24) == 127;
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
 * GET a URL.  The request headers come from build_headers(arg, url) for
 * every hop, so a redirect to another host gets only what is meant for
 * that host.  On success fills *resp (its body stays valid until the next
 * call) and returns ETL_STOP_NONE.  Returns a stop reason when the run
 * must stop (deadline, cancel, terminate) before a complete response was
 * had; raises an error for an HTTP error that retries cannot fix.
 */
EtlStopReason
etl_http_get(const char *url, EtlHeaderBuilder build_headers, void *arg,
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
		int64		ms_left;
		long		status = 0;
		char		curl_error[CURL_ERROR_SIZE];
		struct curl_slist *header_list;

		if ((stop = etl_pending_stop()) != ETL_STOP_NONE)
			return stop;
		check_host_allowed(current_url);
		ms_left = etl_ms_until_deadline();

		body_buf.len = 0;
		body_buf.too_big = false;
		link_buf.len = 0;
		if (link_buf.data)
			link_buf.data[0] = '\0';
		retry_after_buf[0] = '\0';
		location_buf[0] = '\0';
		curl_error[0] = '\0';
		blocked_address[0] = '\0';

		header_list = header_slist(build_headers ? build_headers(arg, current_url) : NIL);
		curl_easy_setopt(easy, CURLOPT_URL, current_url);
		curl_easy_setopt(easy, CURLOPT_HTTPHEADER, header_list);
		curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, curl_error);
		curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS,
						 (long) Max(Min((int64) run_settings->request_timeout_ms, ms_left), 1));

		stop = perform_transfer(easy, &res);
		curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, NULL);
		curl_easy_setopt(easy, CURLOPT_HTTPHEADER, NULL);
		curl_slist_free_all(header_list);
		if (stop != ETL_STOP_NONE)
			return stop;

		if (blocked_address[0])
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("refused to connect to %s for %s: unspecified, link-local and cloud-metadata addresses are blocked",
							blocked_address, etl_url_redact(current_url)),
					 errhint("A superuser can allow the address by listing it in etl_exec.allowed_hosts.")));

		if (res == CURLE_OK)
		{
			curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
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
			if (status == 401 && !reauthorized && etl_oauth_forget_tokens())
			{
				/* an OAuth2 token the server no longer takes: fetch anew, once */
				reauthorized = true;
				continue;
			}
			if (!retryable_status(status))
				ereport(ERROR,
						(errcode(ETL_ERRCODE_HTTP_REFUSED),
						 errmsg("HTTP %ld from %s: %s", status,
								etl_url_redact(current_url), body_snippet())));
			snprintf(problem, sizeof(problem), "HTTP %ld: %s", status, body_snippet());
		}
		else if (res == CURLE_WRITE_ERROR && body_buf.too_big)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("response from %s is larger than etl_exec.max_response_bytes (%zu bytes)",
							etl_url_redact(current_url), body_buf.max),
					 errhint("Lower the job's page_size, or raise etl_exec.max_response_bytes.")));
		else if (res == CURLE_UNSUPPORTED_PROTOCOL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("URL %s does not use http or https", etl_url_redact(current_url)),
					 errhint("etl_exec only fetches http:// and https:// URLs.")));
		else if (res == CURLE_OPERATION_TIMEDOUT && etl_ms_until_deadline() <= 0)
			return ETL_STOP_TIMED_OUT;
		else
			snprintf(problem, sizeof(problem), "%s", curl_error[0] ? curl_error : curl_easy_strerror(res));

		/* retryable: a connection problem, a timeout, 408/429/5xx */
		if (attempt >= run_settings->max_retries)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("request to %s failed after %d retries: %s",
							etl_url_redact(current_url), attempt, problem)));
		{
			int64		delay = retry_delay_ms(attempt);

			/* a wait that would pass the deadline: stop now, resumable */
			if (delay >= etl_ms_until_deadline())
				return ETL_STOP_TIMED_OUT;
			elog(DEBUG1, "etl_exec: retrying %s in " INT64_FORMAT " ms: %s",
				 etl_url_redact(current_url), delay, problem);
			etl_wait_ms(delay);
		}
		attempt++;
		resp->retries++;
	}

	resp->status = 200;
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &resp->status);
	resp->body = body_buf.data ? body_buf.data : "";
	resp->body_len = body_buf.len;
	resp->retry_after = NULL;
	resp->effective_url = current_url;
	if (link_buf.len > 0)
	{
		char	   *copy = pnstrdup(link_buf.data, link_buf.len);
		char	   *save = NULL;

		for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
			resp->link_headers = lappend(resp->link_headers, line);
	}
	return ETL_STOP_NONE;
}

/*
 * POST a form (OAuth2 token requests) and return the body; raises an error
 * on anything but a 2xx.  Its own handle and buffer: it may run while a
 * GET is being prepared.  Polled like every transfer (a stop request ends
 * it at once, as a query cancel) and bounded by the run's time left.
 */
char *
etl_http_post_form(const char *url, const char *form, const char *what)
{
	CURL	   *h = curl_easy_init();
	CurlBuffer	saved = body_buf;
	CURLcode	res = CURLE_OK;
	EtlStopReason stop;
	long		status = 0;
	char		curl_error[CURL_ERROR_SIZE] = "";
	char	   *result;

	check_host_allowed(url);
	if (h == NULL)
		elog(ERROR, "etl_exec: could not create a libcurl handle");
	memset(&body_buf, 0, sizeof(body_buf));
	body_buf.max = 1024 * 1024;
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, form);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write_body);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_error);
	curl_easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, open_checked_socket);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	if (run_settings->ca_file && run_settings->ca_file[0])
		curl_easy_setopt(h, CURLOPT_CAINFO, run_settings->ca_file);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long) run_settings->connect_timeout_ms);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS,
					 (long) Max(Min((int64) run_settings->request_timeout_ms, etl_ms_until_deadline()), 1));
	curl_easy_setopt(h, CURLOPT_PROXY, "");
	stop = perform_transfer(h, &res);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(h);
	result = pnstrdup(body_buf.data ? body_buf.data : "", body_buf.len);
	free(body_buf.data);
	body_buf = saved;

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
