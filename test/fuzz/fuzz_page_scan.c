/*-------------------------------------------------------------------------
 *
 * fuzz_page_scan.c
 *	  libFuzzer harness: the one-pass page reader (src/page_scan.c) on
 *	  JSON, ndjson and csv pages, with the key resolver (key_resolver.c),
 *	  the CSV reader (csv_scan.c) and the COPY escapers (copy_text.c) it
 *	  calls.
 *
 * Input: one line of options (fuzz_spec.c says which), then the page's
 * body.
 *
 * The reader must never crash, leak or read past the body, and what it
 * says yes to must be well-formed COPY text: one line per record, one
 * field per column the page mentions, escapes only as COPY's text format
 * has them, no raw carriage return (and, from JSON, no NUL byte).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fuzz_spec.h"

/* COPY text: nrec lines of nfields fields, escapes as COPY reads them */
static void
check_copy_text(const EtlScanResult *res, int nfields)
{
	const char *p = res->copy_text;
	const char *end = p + res->copy_len;
	int			lines = 0;

	if (res->copy_len > 0 && end[-1] != '\n')
		fuzz_fail("COPY text does not end with a line end");
	while (p < end)
	{
		int			fields = 1;
		const char *field = p;

		for (; *p != '\n'; p++)
		{
			if (*p == '\r')
				fuzz_fail("raw carriage return in COPY text, line %d", lines + 1);
			if (*p == '\t')
			{
				fields++;
				field = p + 1;
			}
			else if (*p == '\\')
			{
				p++;
				if (*p == 'N')
				{
					if (p - 1 != field || (p[1] != '\t' && p[1] != '\n'))
						fuzz_fail("\\N inside a field, line %d", lines + 1);
				}
				else if (*p != '\\' && *p != 'n' && *p != 'r' && *p != 't')
					fuzz_fail("COPY text escape \\%c, line %d", *p, lines + 1);
			}
		}
		p++;
		lines++;
		if (fields != nfields)
			fuzz_fail("line %d of the COPY text has %d fields, not %d", lines, fields, nfields);
	}
	if (lines != res->nrec)
		fuzz_fail("%d records but %d lines of COPY text", res->nrec, lines);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FuzzInput	in;
	char	   *opts;
	char	   *body;
	size_t		len;
	FuzzPageSpec ps;
	EtlScanResult res;
	bool		ok;

	fuzz_begin();
	fuzz_input_init(&in, data, size);
	opts = fuzz_take_line(&in);

	fuzz_page_spec(opts, &ps);
	body = fuzz_take_rest(&in, &len);
	ok = etl_scan_page(&ps.spec, body, len, &res);
	fuzz_debug("scan: %s, %d records, total %s, next %s, COPY text:\n%.*s",
			   ok ? "read" : "left to the jsonb path", res.nrec,
			   res.total_text ? res.total_text : "-", res.next_text ? res.next_text : "-",
			   res.copy_len, res.copy_text ? res.copy_text : "");
	if (ok)
	{
		int			npresent = 0;

		for (int c = 0; c < ps.spec.ncols; c++)
			npresent += res.present[c];
		/* (a page that mentions no column: an empty line per record) */
		check_copy_text(&res, Max(npresent, 1));
		/* JSON has no way to say NUL that jsonb takes: none may come out */
		if (ps.spec.format != ETL_FORMAT_CSV && memchr(res.copy_text, '\0', res.copy_len))
			fuzz_fail("a NUL byte in the COPY text of a JSON page");
	}
	etl_scan_result_free(&res);
	fuzz_page_spec_free(&ps);
	free(body);
	fuzz_end();
	return 0;
}
