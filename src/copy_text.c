/*-------------------------------------------------------------------------
 *
 * copy_text.c
 *	  Values written as COPY text: COPY's text-format escaping, and quoted
 *	  elements of array literals.
 *
 * Both the page reader (page_scan.c, in its own thread) and the jsonb path
 * (loader.c) render records as COPY text through these.  The escapers
 * write into memory the caller reserved and touch no PostgreSQL state;
 * etl_append_copy_text is the StringInfo form, for the worker's thread.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"

#include "etl_exec.h"

/*
 * Escape s[0..len) for COPY's text format into dst (room for 2 * len);
 * returns the bytes written.
 */
int
etl_copy_escape(char *dst, const char *s, int len)
{
	char	   *d = dst;

	for (const char *end = s + len; s < end; s++)
	{
		switch (*s)
		{
			case '\\':
				*d++ = '\\';
				*d++ = '\\';
				break;
			case '\n':
				*d++ = '\\';
				*d++ = 'n';
				break;
			case '\r':
				*d++ = '\\';
				*d++ = 'r';
				break;
			case '\t':
				*d++ = '\\';
				*d++ = 't';
				break;
			default:
				*d++ = *s;
		}
	}
	return d - dst;
}

/* append s[0..len) escaped for COPY's text format */
void
etl_append_copy_text(StringInfo buf, const char *s, int len)
{
	enlargeStringInfo(buf, 2 * len + 1);
	buf->len += etl_copy_escape(buf->data + buf->len, s, len);
	buf->data[buf->len] = '\0';
}

/*
 * s[0..len) as a quoted element of an array literal ("a\"b") into dst
 * (room for 2 * len + 2); returns the bytes written.
 */
int
etl_quote_array_element(char *dst, const char *s, int len)
{
	char	   *d = dst;

	*d++ = '"';
	for (const char *end = s + len; s < end; s++)
	{
		if (*s == '"' || *s == '\\')
			*d++ = '\\';
		*d++ = *s;
	}
	*d++ = '"';
	return d - dst;
}
