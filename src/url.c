/*-------------------------------------------------------------------------
 *
 * url.c
 *	  URL helpers: encode a value, resolve a link, take a URL's host and
 *	  origin, redact a URL for messages.  A leaf, on libcurl's URL API.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include <curl/curl.h>

#include "etl_exec.h"

char *
etl_url_encode(const char *s)
{
	char	   *enc = curl_easy_escape(NULL, s, 0);
	char	   *result;

	if (enc == NULL)
		elog(ERROR, "etl_exec: could not URL-encode a value");
	result = pstrdup(enc);
	curl_free(enc);
	return result;
}

/* Resolve a (possibly relative) link against the URL it came from. */
char *
etl_url_resolve(const char *base, const char *relative)
{
	CURLU	   *u = curl_url();
	char	   *out = NULL;
	char	   *result;

	if (curl_url_set(u, CURLUPART_URL, base, CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK ||
		curl_url_set(u, CURLUPART_URL, relative, CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_URL, &out, 0) != CURLUE_OK)
	{
		curl_url_cleanup(u);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid link \"%s\" (relative to %s)", relative, etl_url_redact(base))));
	}
	result = pstrdup(out);
	curl_free(out);
	curl_url_cleanup(u);
	return result;
}

/*
 * A part of a URL, as a palloc'd string; an invalid URL is an error that
 * shows it as shown (a redacted form, where the caller wants one).
 */
static char *
url_part(const char *url, CURLUPart what, unsigned int flags, const char *shown)
{
	CURLU	   *u = curl_url();
	char	   *part = NULL;
	char	   *result;

	if (curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK ||
		curl_url_get(u, what, &part, flags) != CURLUE_OK)
	{
		curl_url_cleanup(u);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid URL \"%s\"", shown),
				 errhint("URLs must look like https://host/path?query.")));
	}
	result = pstrdup(part);
	curl_free(part);
	curl_url_cleanup(u);
	return result;
}

char *
etl_url_host(const char *url)
{
	return url_part(url, CURLUPART_HOST, 0, url);
}

/* The port a URL connects to: its own, or its scheme's default. */
int
etl_url_port(const char *url)
{
	return atoi(url_part(url, CURLUPART_PORT, CURLU_DEFAULT_PORT, etl_url_redact(url)));
}

/* A URL fit for messages: no user name or password. */
char *
etl_url_redact(const char *url)
{
	CURLU	   *u = curl_url();
	char	   *out = NULL;
	char	   *result;

	if (curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK)
	{
		curl_url_cleanup(u);
		return pstrdup(url);
	}
	curl_url_set(u, CURLUPART_USER, NULL, 0);
	curl_url_set(u, CURLUPART_PASSWORD, NULL, 0);
	if (curl_url_get(u, CURLUPART_URL, &out, 0) != CURLUE_OK)
	{
		curl_url_cleanup(u);
		return pstrdup(url);
	}
	result = pstrdup(out);
	curl_free(out);
	curl_url_cleanup(u);
	return result;
}

/* one round of percent-decoding (an escape that is not one stays as it is) */
static char *
percent_decoded(const char *s)
{
	char	   *out = palloc(strlen(s) + 1);
	char	   *o = out;

	for (const char *p = s; *p; p++)
	{
		if (p[0] == '%' && isxdigit((unsigned char) p[1]) && isxdigit((unsigned char) p[2]))
		{
			char		hex[3] = {p[1], p[2], '\0'};

			*o++ = (char) strtol(hex, NULL, 16);
			p += 2;
		}
		else
			*o++ = *p;
	}
	*o = '\0';
	return out;
}

/*
 * Whether a value put into a URL's path holds a dot segment -- "." or ".."
 * between slashes (or backslashes), as it is or percent-encoded, once or
 * more -- that a server which decodes it would take as a move up the path.
 */
bool
etl_url_holds_dot_segment(const char *value)
{
	char	   *text = pstrdup(value);

	/* each round of decoding a server might do (%252e%252e is ".." twice decoded) */
	for (int round = 0; round < 4; round++)
	{
		char	   *segment = text;

		for (;;)
		{
			size_t		len = strcspn(segment, "/\\");

			if ((len == 1 && segment[0] == '.') || (len == 2 && strncmp(segment, "..", 2) == 0))
				return true;
			if (segment[len] == '\0')
				break;
			segment += len + 1;
		}
		if (strchr(text, '%') == NULL)
			break;
		text = percent_decoded(text);
	}
	return false;
}
