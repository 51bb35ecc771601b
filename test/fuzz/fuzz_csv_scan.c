/*-------------------------------------------------------------------------
 *
 * fuzz_csv_scan.c
 *	  libFuzzer harness: the CSV reader (src/csv_scan.c), record by record.
 *
 * Input: one line of options, then the CSV body.
 *
 *	  csv=,"\	delimiter, quote, escape (one byte each, as the job's trigger
 *				allows them: ASCII, no line break, delimiter != quote)
 *	  null=NULL	the null text (without the delimiter or the quote)
 *
 * Beyond memory safety, what each record's fields claim is checked: a
 * field lies inside the body or the reader's buffer, a "plain" field holds
 * no byte COPY's text format escapes, a NULL field is unquoted null text,
 * line numbers only grow, and each record moves the reader forward.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "etl_exec.h"
#include "fuzz.h"

/* whether csv_options are ones dw_etl_jobs' trigger accepts */
static bool
valid_options(const char *opt)
{
	return strlen(opt) == 3 && opt[0] != opt[1] && strpbrk(opt, "\r\n") == NULL &&
		(opt[0] & 0x80) == 0 && (opt[1] & 0x80) == 0 && (opt[2] & 0x80) == 0;
}

static void
check_record(const EtlCsvReader *r, const char *body, size_t len)
{
	for (int i = 0; i < r->nfields; i++)
	{
		const EtlCsvField *f = &r->fields[i];
		const char *data = etl_csv_field_data(r, f);

		if (f->off < 0 || f->len < 0 ||
			(f->in_buf ? f->off + f->len > r->buf_len : (size_t) f->off + f->len > len))
			fuzz_fail("field %d of line %d lies outside its %s", i + 1, r->line,
					  f->in_buf ? "buffer" : "body");
		if (f->plain && memchr(data, '\\', f->len) != NULL)
			fuzz_fail("field %d of line %d is plain but holds a backslash", i + 1, r->line);
		if (f->plain && (memchr(data, '\n', f->len) || memchr(data, '\r', f->len) ||
						 memchr(data, '\t', f->len)))
			fuzz_fail("field %d of line %d is plain but holds a control byte", i + 1, r->line);
		if (f->isnull && (f->len != r->opts->null_len ||
						  memcmp(data, r->opts->null, f->len) != 0))
			fuzz_fail("field %d of line %d is NULL but is not the null text", i + 1, r->line);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FuzzInput	in;
	char	   *opts;
	char	   *opt;
	char	   *body;
	size_t		len;
	EtlCsvOptions csv = {',', '"', '"', "", 0};
	EtlCsvReader r;
	int			rc;
	int			last_line = 0;
	int			records = 0;

	fuzz_begin();
	fuzz_input_init(&in, data, size);
	opts = fuzz_take_line(&in);
	if ((opt = fuzz_option(opts, "csv")) != NULL && valid_options(opt))
	{
		csv.delimiter = opt[0];
		csv.quote = opt[1];
		csv.escape = opt[2];
	}
	if ((opt = fuzz_option(opts, "null")) != NULL &&
		strchr(opt, csv.delimiter) == NULL && strchr(opt, csv.quote) == NULL)
	{
		csv.null = opt;
		csv.null_len = strlen(opt);
	}
	body = fuzz_take_rest(&in, &len);

	etl_csv_reader_init(&r, &csv, body, len);
	for (;;)
	{
		const char *before = r.p;

		rc = etl_csv_next(&r);
		if (rc <= 0)
			break;
		if (r.p <= before)
			fuzz_fail("a record that did not move the reader, line %d", r.line);
		if (r.line <= last_line)
			fuzz_fail("record on line %d after one on line %d", r.line, last_line);
		if (r.nfields < 1)
			fuzz_fail("a record without fields, line %d", r.line);
		last_line = r.line;
		check_record(&r, body, len);
		if (++records > (int) len + 1)
			fuzz_fail("more records than bytes");
	}
	if (rc < 0 && r.error == NULL)
		fuzz_fail("an error without a message, line %d", r.line);
	if (r.p > r.end)
		fuzz_fail("the reader went past the body's end");
	etl_csv_reader_free(&r);
	free(body);
	fuzz_end();
	return 0;
}
