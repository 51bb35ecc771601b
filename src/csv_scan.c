/*-------------------------------------------------------------------------
 *
 * csv_scan.c
 *	  Reads the records of a CSV page, one at a time, as fields.
 *
 * The rules are COPY's CSV rules with the job's csv_options (delimiter,
 * quote, escape, null): a field is quoted wherever a quote character
 * appears in it, and a quoted part may hold delimiters, line breaks and
 * quotes (an escape character -- the quote itself by default -- before a
 * quote, or before the escape character, stands for that character); an
 * unquoted field whose text is the null text (empty by default) is NULL,
 * a quoted one never is.  Lines end with \n or \r\n; empty lines are
 * skipped; a UTF-8 byte order mark before the first line is skipped.
 *
 * A field points into the body where it can (most fields: no quote, or
 * quotes only around it), else into the reader's own buffer, and says
 * whether COPY's text format must escape any of its bytes.
 *
 * It touches no PostgreSQL state (malloc, never palloc or ereport): the
 * page reader's thread uses it (page_scan.c), and so does the worker
 * (page_records.c, which raises the errors).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "etl_exec.h"

/* Set up a reader of a CSV body; body stays the caller's. */
void
etl_csv_reader_init(EtlCsvReader *r, const EtlCsvOptions *opts, const char *body, size_t len)
{
	memset(r, 0, sizeof(*r));
	r->opts = opts;
	r->body = body;
	r->p = body;
	r->end = body + len;
	r->next_line = 1;
	if (len >= 3 && memcmp(body, "\xEF\xBB\xBF", 3) == 0)
		r->p += 3;
}

void
etl_csv_reader_free(EtlCsvReader *r)
{
	free(r->buf);
	free(r->fields);
	r->buf = NULL;
	r->fields = NULL;
}

/* The bytes of a field of the current record. */
const char *
etl_csv_field_data(const EtlCsvReader *r, const EtlCsvField *f)
{
	const char *base = f->in_buf ? r->buf : r->body;

	/* an empty quoted field of the first record: no buffer yet */
	return base ? base + f->off : "";
}

static bool
buf_put(EtlCsvReader *r, char c)
{
	if (r->buf_len + 1 >= r->buf_cap)
	{
		int			cap = Max(r->buf_cap * 2, 256);
		char	   *grown = realloc(r->buf, cap);

		if (grown == NULL)
			return false;
		r->buf = grown;
		r->buf_cap = cap;
	}
	r->buf[r->buf_len++] = c;
	return true;
}

static EtlCsvField *
new_field(EtlCsvReader *r)
{
	if (r->nfields == r->fields_cap)
	{
		int			cap = Max(r->fields_cap * 2, 32);
		EtlCsvField *grown = realloc(r->fields, sizeof(EtlCsvField) * cap);

		if (grown == NULL)
			return NULL;
		r->fields = grown;
		r->fields_cap = cap;
	}
	return &r->fields[r->nfields++];
}

static inline bool
copy_special(char c)
{
	return c == '\\' || c == '\t' || c == '\n' || c == '\r';
}

/* the end of a field at p: a delimiter, a line's end or the body's */
static inline bool
field_ends(const EtlCsvReader *r, const char *p)
{
	return p >= r->end || *p == r->opts->delimiter || *p == '\n' ||
		(*p == '\r' && (p + 1 >= r->end || p[1] == '\n'));
}

/*
 * A field quoted as a whole, "like this", with no quote or escape inside:
 * points into the body.  False (nothing consumed) for any other shape.
 */
static bool
simple_quoted(EtlCsvReader *r, EtlCsvField *f)
{
	const char *p = r->p + 1;
	int			newlines = 0;
	bool		plain = true;

	while (p < r->end && *p != r->opts->quote && *p != r->opts->escape)
	{
		if (copy_special(*p))
		{
			plain = false;
			newlines += *p == '\n';
		}
		p++;
	}
	if (p >= r->end || *p != r->opts->quote || !field_ends(r, p + 1))
		return false;
	f->off = (r->p + 1) - r->body;
	f->len = p - (r->p + 1);
	f->plain = plain;
	r->next_line += newlines;
	r->p = p + 1;
	return true;
}

/*
 * Any other field, a byte at a time, unquoted into the buffer; -1 when
 * a quoted part does not end.
 */
static int
general_field(EtlCsvReader *r, EtlCsvField *f, bool *saw_quote)
{
	const EtlCsvOptions *o = r->opts;
	const char *p = r->p;
	bool		in_quote = false;

	f->off = r->buf_len;
	f->in_buf = true;
	f->plain = true;
	for (;;)
	{
		char		c;

		if (!in_quote && field_ends(r, p))
			break;
		if (p >= r->end)
		{
			r->error = "a quoted field does not end";
			return -1;
		}
		c = *p++;
		if (in_quote && c == o->escape && p < r->end && (*p == o->quote || *p == o->escape))
			c = *p++;
		else if (c == o->quote)
		{
			in_quote = !in_quote;
			*saw_quote = true;
			continue;
		}
		if (c == '\n')
			r->next_line++;
		if (copy_special(c))
			f->plain = false;
		if (!buf_put(r, c))
		{
			r->error = "out of memory";
			return -1;
		}
	}
	f->len = r->buf_len - f->off;
	r->p = p;
	return 0;
}

/*
 * Read the next record into r->fields (valid until the next call): 1, or
 * 0 at the body's end, or -1 (r->error says why, r->line where the record
 * starts).
 */
int
etl_csv_next(EtlCsvReader *r)
{
	const EtlCsvOptions *o = r->opts;

	/* empty lines are no records */
	for (;;)
	{
		if (r->p < r->end && *r->p == '\n')
			r->p++;
		else if (r->end - r->p >= 2 && r->p[0] == '\r' && r->p[1] == '\n')
			r->p += 2;
		else
			break;
		r->next_line++;
	}
	if (r->p >= r->end)
		return 0;
	r->start = r->p;
	r->line = r->next_line;
	r->nfields = 0;
	r->buf_len = 0;
	for (;;)
	{
		EtlCsvField *f = new_field(r);
		const char *start = r->p;
		bool		saw_quote = false;

		if (f == NULL)
		{
			r->error = "out of memory";
			return -1;
		}
		f->in_buf = false;
		if (start < r->end && *start == o->quote && simple_quoted(r, f))
			saw_quote = true;
		else
		{
			const char *p = start;
			bool		plain = true;

			/* unquoted: the common case, pointing into the body */
			while (!field_ends(r, p) && *p != o->quote)
			{
				if (copy_special(*p))
					plain = false;
				p++;
			}
			if (field_ends(r, p))
			{
				f->off = start - r->body;
				f->len = p - start;
				f->plain = plain;
				r->p = p;
			}
			else if (general_field(r, f, &saw_quote) < 0)
				return -1;
		}
		f->isnull = !saw_quote && f->len == o->null_len &&
			memcmp(etl_csv_field_data(r, f), o->null, o->null_len) == 0;
		if (r->p < r->end && *r->p == o->delimiter)
		{
			r->p++;
			continue;
		}
		/* the line's end */
		if (r->p < r->end && *r->p == '\r')
			r->p++;
		if (r->p < r->end)
			r->p++;
		r->next_line++;
		return 1;
	}
}
