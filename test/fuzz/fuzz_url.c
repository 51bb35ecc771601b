/*-------------------------------------------------------------------------
 *
 * fuzz_url.c
 *	  libFuzzer harness: the URL helpers (src/url.c) on URLs and links an
 *	  API sent: resolving a next link against the page's URL, a URL's host
 *	  and port, redacting a URL for messages, encoding a value and finding
 *	  dot segments in a value bound for a path.
 *
 * Input: three lines -- a base URL (the page's), a link (absolute or
 * relative), a value.  An invalid URL or link is an ERROR, a normal
 * outcome.  What is checked: a redacted URL keeps no user name or password
 * (as libcurl reads it again),
 * an encoded value holds only unreserved bytes and %XX escapes, and a
 * value with a literal "/../" segment is always found out.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "etl_exec.h"
#include "fuzz.h"

typedef struct UrlCase
{
	const char *base;
	const char *link;
	const char *value;
	char	   *result;
	int			port;
} UrlCase;

static void
resolve(void *arg)
{
	UrlCase    *c = arg;

	c->result = etl_url_resolve(c->base, c->link);
}

static void
host(void *arg)
{
	UrlCase    *c = arg;

	c->result = etl_url_host(c->base);
}

static void
port(void *arg)
{
	UrlCase    *c = arg;

	c->port = etl_url_port(c->base);
}

/* whether curl finds a user name or password in url */
static bool
has_credentials(const char *url)
{
	CURLU	   *u = curl_url();
	char	   *part = NULL;
	bool		found = false;

	if (curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK)
	{
		if (curl_url_get(u, CURLUPART_USER, &part, 0) == CURLUE_OK && part && *part)
			found = true;
		curl_free(part);
		part = NULL;
		if (curl_url_get(u, CURLUPART_PASSWORD, &part, 0) == CURLUE_OK && part && *part)
			found = true;
		curl_free(part);
	}
	curl_url_cleanup(u);
	return found;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FuzzInput	in;
	UrlCase		c = {0};
	char	   *redacted;
	char	   *encoded;

	fuzz_begin();
	fuzz_input_init(&in, data, size);
	c.base = fuzz_take_line(&in);
	c.link = fuzz_take_line(&in);
	c.value = fuzz_take_line(&in);

	(void) fuzz_call(resolve, &c);
	(void) fuzz_call(host, &c);
	if (fuzz_call(port, &c) && (c.port < 0 || c.port > 65535))
		fuzz_fail("port %d of \"%s\"", c.port, c.base);

	redacted = etl_url_redact(c.base);
	if (has_credentials(redacted))
		fuzz_fail("\"%s\" redacted keeps its credentials: \"%s\"", c.base, redacted);

	encoded = etl_url_encode(c.value);
	for (const char *p = encoded; *p; p++)
		if (!(isalnum((unsigned char) *p) || strchr("-._~", *p) ||
			  (*p == '%' && isxdigit((unsigned char) p[1]) && isxdigit((unsigned char) p[2]))))
			fuzz_fail("\"%s\" encoded as \"%s\"", c.value, encoded);

	if ((strstr(c.value, "/../") || strncmp(c.value, "../", 3) == 0 ||
		 strcmp(c.value, "..") == 0) && !etl_url_holds_dot_segment(c.value))
		fuzz_fail("dot segment in \"%s\" not found", c.value);
	(void) etl_url_holds_dot_segment(c.value);

	fuzz_end();
	return 0;
}
