/*-------------------------------------------------------------------------
 *
 * fuzz_rate_headers.c
 *	  libFuzzer harness: the rate-limit header parser (src/rate_headers.c),
 *	  fed a response's header lines one at a time, as libcurl's header
 *	  callback feeds it.
 *
 * Input: header lines ("Name: value\r\n" or "\n"), a status line starting
 * a new response.  Each line is handed over in a buffer of exactly its
 * length, without a NUL after it -- as libcurl hands it -- so that a read
 * past the line is caught.
 *
 * After each line the parser's figures must stay in their ranges: waits
 * and resets within 0 .. 24 h (or -1: not said), counts not below -1.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "etl_exec.h"
#include "fuzz.h"

#define MAX_WAIT_MS INT64CONST(86400000)

static void
check_ms(const char *what, int64 v)
{
	if (v < -1 || v > MAX_WAIT_MS)
		fuzz_fail("%s = " INT64_FORMAT ", outside -1 .. 24 h", what, v);
}

static void
check_count(const char *what, int64 v)
{
	if (v < -1)
		fuzz_fail("%s = " INT64_FORMAT ", below -1", what, v);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *) data;
	const char *end = p + size;
	EtlRateHeaders h;

	fuzz_begin();
	etl_rate_headers_reset(&h);
	while (p < end)
	{
		const char *nl = memchr(p, '\n', end - p);
		size_t		len = (nl ? nl + 1 : end) - p;
		char	   *line = malloc(Max(len, 1));

		memcpy(line, p, len);
		etl_rate_header_line(&h, line, len);
		free(line);
		p += len;

		check_ms("retry_after_ms", h.retry_after_ms);
		check_ms("reset_ms", h.reset_ms);
		check_ms("x_reset_ms", h.x_reset_ms);
		check_ms("ietf_reset_ms", h.ietf_reset_ms);
		check_ms("structured_reset_ms", h.structured_reset_ms);
		check_count("remaining", h.remaining);
		check_count("x_remaining", h.x_remaining);
		check_count("ietf_remaining", h.ietf_remaining);
		check_count("structured_remaining", h.structured_remaining);
	}
	fuzz_end();
	return 0;
}
