/*-------------------------------------------------------------------------
 *
 * rate_headers.c
 *	  What a response says about its host's request quota: Retry-After
 *	  (seconds or an HTTP date), X-RateLimit-Remaining / -Reset (also
 *	  X-Rate-Limit-*, and -Reset-After), the IETF fields RateLimit-Remaining
 *	  / RateLimit-Reset of the early drafts, and the structured RateLimit
 *	  field of the later ones, as a dictionary ("limit=100, remaining=5,
 *	  reset=9") or as a list of policies ("default";r=50;t=30, ...).
 *	  host_budget.c turns it into waits.
 *
 * Reset values are read by magnitude, as the wild has them all: over 10^12
 * epoch milliseconds, over 10^9 epoch seconds, else seconds to go
 * (fractions allowed).  Where several families or policies speak, the most
 * restrictive wins: the fewest remaining, then the latest reset.
 * RateLimit-Policy and the *-Limit fields only describe the quota and are
 * not needed to wait on it.
 *
 * etl_rate_header_line runs inside libcurl's header callback: it never
 * pallocs, ereports or longjmps -- fixed buffers and plain C only.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include <curl/curl.h>

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "etl_exec.h"

#define ETL_MAX_WAIT_MS INT64CONST(86400000)	/* no header makes us wait longer */

/* a timestamp as milliseconds since the Unix epoch */
static int64
unix_ms(TimestampTz t)
{
	return t / 1000 + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;
}

void
etl_rate_headers_reset(EtlRateHeaders *h)
{
	h->retry_after_ms = -1;
	h->remaining = -1;
	h->reset_ms = -1;
	h->x_remaining = -1;
	h->x_reset_ms = -1;
	h->ietf_remaining = -1;
	h->ietf_reset_ms = -1;
	h->structured_remaining = -1;
	h->structured_reset_ms = -1;
}

/*
 * A non-negative decimal number ("12", "1.5") at *s, in thousandths;
 * -1 when there is none.  Advances *s past it.
 */
static int64
parse_thousandths(const char **s, const char *end)
{
	const char *p = *s;
	int64		v = 0;
	int64		frac = 0;
	int			fdigits = 0;
	bool		any = false;

	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	while (p < end && *p >= '0' && *p <= '9')
	{
		if (v < INT64CONST(10000000000000))
			v = v * 10 + (*p - '0');	/* (no overflow in thousandths) */
		p++;
		any = true;
	}
	if (p < end && *p == '.')
	{
		p++;
		while (p < end && *p >= '0' && *p <= '9')
		{
			if (fdigits < 3)
			{
				frac = frac * 10 + (*p - '0');
				fdigits++;
			}
			p++;
			any = true;
		}
	}
	*s = p;
	if (!any)
		return -1;
	while (fdigits++ < 3)
		frac *= 10;
	return v * 1000 + frac;
}

/* a whole number, or -1 */
static int64
parse_count(const char *s, const char *end)
{
	int64		v = parse_thousandths(&s, end);

	return v < 0 ? -1 : v / 1000;
}

/*
 * A reset time in ms from now, decided by magnitude: epoch milliseconds
 * (over 10^12), epoch seconds (over 10^9), else seconds to go.
 */
static int64
reset_to_ms(int64 thousandths)
{
	int64		now_ms = unix_ms(GetCurrentTimestamp());
	int64		ms;

	if (thousandths < 0)
		return -1;
	if (thousandths > INT64CONST(1000000000000000))
		ms = thousandths / 1000 - now_ms;	/* epoch ms */
	else if (thousandths > INT64CONST(1000000000000))
		ms = thousandths - now_ms;	/* epoch seconds */
	else
		ms = thousandths;
	return Min(Max(ms, 0), ETL_MAX_WAIT_MS);
}

/* Retry-After: seconds, or an HTTP date */
static int64
retry_after_ms(const char *v, const char *end)
{
	char		date[128];
	size_t		n = Min((size_t) (end - v), sizeof(date) - 1);
	const char *p = v;
	int64		t = parse_thousandths(&p, end);
	time_t		when;

	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	if (t >= 0 && p == end)
		return Min(t, ETL_MAX_WAIT_MS);
	memcpy(date, v, n);
	date[n] = '\0';
	when = curl_getdate(date, NULL);
	if (when <= 0)
		return -1;
	/* clamped in seconds first: a date centuries ahead overflows in ms */
	return Min(Max((int64) (when - time(NULL)), 0), ETL_MAX_WAIT_MS / 1000) * 1000;
}

/* a policy of the IETF RateLimit field: kept when it is the most restrictive */
static void
consider_policy(EtlRateHeaders *h, int64 remaining, int64 reset)
{
	int64		reset_ms;

	if (remaining < 0)
		return;
	reset_ms = reset_to_ms(reset);
	if (h->structured_remaining < 0 || remaining < h->structured_remaining ||
		(remaining == h->structured_remaining && reset_ms > h->structured_reset_ms))
	{
		h->structured_remaining = remaining;
		h->structured_reset_ms = reset_ms;
	}
}

static bool
name_is(const char *name, size_t len, const char *what)
{
	return len == strlen(what) && pg_strncasecmp(name, what, len) == 0;
}

/*
 * The IETF RateLimit field: the dictionary of draft 7
 * ("limit=100, remaining=50, reset=5") or the list of policies of later
 * drafts ("default";r=50;t=30, "burst";r=0;t=1 -- a policy's name may be a
 * bare token).  Keeps the most restrictive policy: the fewest remaining,
 * then the latest reset.
 */
static void
parse_structured(EtlRateHeaders *h, const char *v, const char *end)
{
	int64		dict_remaining = -1;
	int64		dict_reset = -1;
	const char *member = v;

	while (member < end)
	{
		const char *mend = memchr(member, ',', end - member);
		const char *p = member;
		int64		remaining = -1;
		int64		reset = -1;
		bool		policy = false;

		if (mend == NULL)
			mend = end;
		while (p < mend && (*p == ' ' || *p == '\t'))
			p++;
		if (p < mend && *p == '"')
		{
			policy = true;
			p = memchr(p + 1, '"', mend - p - 1);
			p = p ? p + 1 : mend;
		}
		while (p < mend)
		{
			const char *name;
			size_t		nlen;
			int64		val = -1;

			while (p < mend && (*p == ' ' || *p == '\t' || *p == ';'))
				p++;
			name = p;
			while (p < mend && *p != '=' && *p != ';' && *p != ' ')
				p++;
			nlen = p - name;
			while (p < mend && *p == ' ')
				p++;
			if (p < mend && *p == '=')
			{
				p++;
				val = parse_thousandths(&p, mend);
				while (p < mend && *p != ';')
					p++;
			}
			else if (nlen > 0)
				policy = true;	/* a bare token: a policy's name */
			if (name_is(name, nlen, "r"))
				remaining = val < 0 ? -1 : val / 1000;
			else if (name_is(name, nlen, "t"))
				reset = val;
			else if (name_is(name, nlen, "remaining"))
				dict_remaining = val < 0 ? -1 : val / 1000;
			else if (name_is(name, nlen, "reset"))
				dict_reset = val;
		}
		if (policy)
			consider_policy(h, remaining, reset);
		member = mend + 1;
	}
	consider_policy(h, dict_remaining, dict_reset);
}

/* the most restrictive of what the header families said */
static void
combine(EtlRateHeaders *h)
{
	int64		rems[3] = {h->x_remaining, h->ietf_remaining, h->structured_remaining};
	int64		resets[3] = {h->x_reset_ms, h->ietf_reset_ms, h->structured_reset_ms};

	h->remaining = -1;
	h->reset_ms = -1;
	for (int i = 0; i < 3; i++)
	{
		if (rems[i] < 0)
			continue;
		if (h->remaining < 0 || rems[i] < h->remaining ||
			(rems[i] == h->remaining && resets[i] > h->reset_ms))
		{
			h->remaining = rems[i];
			h->reset_ms = resets[i];
		}
	}
	/* a reset without a count (a family split over two responses): keep it */
	if (h->remaining < 0)
		for (int i = 0; i < 3; i++)
			h->reset_ms = Max(h->reset_ms, resets[i]);
}

static bool
header_is(const char *line, size_t len, const char *name, const char **value)
{
	size_t		n = strlen(name);

	if (len <= n || pg_strncasecmp(line, name, n) != 0 || line[n] != ':')
		return false;
	*value = line + n + 1;
	return true;
}

/*
 * One response header line ("Name: value\r\n"), from inside a libcurl
 * header callback: no palloc, no ereport.  A status line starts a new
 * response (after a 100 Continue, say): what came before is forgotten.
 */
void
etl_rate_header_line(EtlRateHeaders *h, const char *line, size_t len)
{
	const char *v;
	const char *end = line + len;

	while (end > line && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
		end--;
	len = end - line;
	if (len >= 5 && strncmp(line, "HTTP/", 5) == 0)
		etl_rate_headers_reset(h);
	else if (header_is(line, len, "retry-after", &v))
		h->retry_after_ms = retry_after_ms(v, end);
	else if (header_is(line, len, "x-ratelimit-remaining", &v) ||
			 header_is(line, len, "x-rate-limit-remaining", &v))
		h->x_remaining = parse_count(v, end);
	else if (header_is(line, len, "x-ratelimit-reset", &v) ||
			 header_is(line, len, "x-rate-limit-reset", &v) ||
			 header_is(line, len, "x-ratelimit-reset-after", &v))
	{
		const char *p = v;

		h->x_reset_ms = reset_to_ms(parse_thousandths(&p, end));
	}
	else if (header_is(line, len, "ratelimit-remaining", &v))
		h->ietf_remaining = parse_count(v, end);
	else if (header_is(line, len, "ratelimit-reset", &v))
	{
		const char *p = v;

		h->ietf_reset_ms = reset_to_ms(parse_thousandths(&p, end));
	}
	else if (header_is(line, len, "ratelimit", &v))
		parse_structured(h, v, end);
	else
		return;
	/* (RateLimit-Policy and *-Limit only describe the quota: nothing to wait on) */
	combine(h);
}

PG_FUNCTION_INFO_V1(etl_rate_headers_sql);

/*
 * _etl_rate_headers(headers text): what the parser makes of a response's
 * header lines (one a line) -- {"retry_after_ms", "remaining", "reset_ms"},
 * -1 for what they do not say.  For tests.
 */
Datum
etl_rate_headers_sql(PG_FUNCTION_ARGS)
{
	char	   *block = text_to_cstring(PG_GETARG_TEXT_PP(0));
	EtlRateHeaders h;
	char	   *line = block;

	etl_rate_headers_reset(&h);
	while (line && *line)
	{
		char	   *nl = strchr(line, '\n');
		size_t		len = nl ? (size_t) (nl - line + 1) : strlen(line);

		etl_rate_header_line(&h, line, len);
		line = nl ? nl + 1 : NULL;
	}
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in,
										CStringGetDatum(psprintf("{\"retry_after_ms\": " INT64_FORMAT
																 ", \"remaining\": " INT64_FORMAT
																 ", \"reset_ms\": " INT64_FORMAT "}",
																 h.retry_after_ms, h.remaining,
																 h.reset_ms))));
}
