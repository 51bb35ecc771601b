/*-------------------------------------------------------------------------
 *
 * page_scan.c
 *	  A fast reader of one page of JSON records, straight into COPY text.
 *
 * Parsing a page into jsonb costs more than loading it: PostgreSQL 15's
 * JSON lexer copies every string a character at a time and jsonb sorts
 * every object's keys.  For the common shapes (records at a path of
 * member steps with one [*], total and next link at member paths, columns
 * mapped by name or by member paths) this single pass validates the JSON,
 * finds the records and renders each mapped value as COPY text, pointing
 * into the body instead of copying wherever it can.
 *
 * It never raises an error of its own: anything it does not handle
 * exactly as the jsonb path would -- invalid JSON, a shape lax jsonpath
 * would treat specially, a number jsonb prints differently (an exponent,
 * -0), a key twice, an object bound for a column other than jsonb, \u0000,
 * a database that is not UTF-8 -- makes it give up (return false), and the
 * caller parses the page as jsonb, which gives the usual results and
 * error messages.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/memutils.h"

#include "etl_exec.h"

#define SCAN_MAX_DEPTH 1000

typedef enum SlotKind
{
	SLOT_NULL = 0,				/* absent or JSON null */
	SLOT_BODY,					/* bytes of the body */
	SLOT_UNESCAPED				/* bytes of the unescaped-strings buffer */
} SlotKind;

typedef struct Slot
{
	int32		off;
	int32		len;
	SlotKind	kind;
	bool		plain;			/* no byte COPY must escape */
	bool		set;			/* a key of the record gave this column a value */
} Slot;

typedef struct Scanner
{
	const EtlScanSpec *spec;
	const char *body;
	const char *p;
	const char *end;
	bool		failed;
	int			depth;
	/* records found so far, ncols slots each */
	Slot	   *slots;
	int			nrec;
	int			cap;
	StringInfoData unescaped;
	EtlScanResult *result;
} Scanner;

typedef enum MatchWhat
{
	MATCH_RECORDS,
	MATCH_TOTAL,
	MATCH_NEXT,
	MATCH_COLUMN
} MatchWhat;

typedef struct Match
{
	const EtlKeyPath *path;
	int			pos;
	MatchWhat	what;
	int			column;			/* MATCH_COLUMN */
} Match;

static bool scan_value(Scanner *s, Match *matches, int nmatches, Slot *row);

static inline void
skip_ws(Scanner *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
		s->p++;
}

static inline bool
fail(Scanner *s)
{
	s->failed = true;
	return false;
}

/*
 * A string token at s->p: sets [*start, *start + *len) to its content (no
 * quotes) and *escaped when it holds escapes.
 */
/* bytes that end a run of plain string content: '"', '\\', controls */
static bool string_stop[256];
static bool string_stop_ready = false;

static bool
scan_string(Scanner *s, int *start, int *len, bool *escaped)
{
	const char *p = s->p + 1;

	if (!string_stop_ready)
	{
		for (int i = 0; i < 0x20; i++)
			string_stop[i] = true;
		string_stop['"'] = string_stop['\\'] = true;
		string_stop_ready = true;
	}
	*escaped = false;
	for (;;)
	{
		unsigned char c;

		while (p < s->end && !string_stop[(unsigned char) *p])
			p++;
		if (p >= s->end)
			return fail(s);
		c = (unsigned char) *p;
		if (c == '"')
			break;
		if (c < 0x20)
			return fail(s);
		if (c == '\\')
		{
			*escaped = true;
			if (p + 1 >= s->end)
				return fail(s);
			p++;
			if (*p == 'u')
			{
				if (p + 4 >= s->end)
					return fail(s);
				for (int i = 1; i <= 4; i++)
					if (!isxdigit((unsigned char) p[i]))
						return fail(s);
				p += 4;
			}
			else if (!strchr("\"\\/bfnrt", *p))
				return fail(s);
		}
		p++;
	}
	*start = (s->p + 1) - s->body;
	*len = p - (s->p + 1);
	s->p = p + 1;
	return true;
}

static int
hex4(const char *p)
{
	int			v = 0;

	for (int i = 0; i < 4; i++)
	{
		char		c = p[i];

		v = v * 16 + (c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
	}
	return v;
}

/* Decode a (validated) string's escapes into buf, as UTF-8. */
static bool
unescape(Scanner *s, int start, int len, StringInfo buf)
{
	const char *p = s->body + start;
	const char *end = p + len;

	while (p < end)
	{
		const char *bs = memchr(p, '\\', end - p);

		if (bs == NULL)
		{
			appendBinaryStringInfo(buf, p, end - p);
			break;
		}
		appendBinaryStringInfo(buf, p, bs - p);
		p = bs + 1;
		switch (*p)
		{
			case 'b':
				appendStringInfoChar(buf, '\b');
				break;
			case 'f':
				appendStringInfoChar(buf, '\f');
				break;
			case 'n':
				appendStringInfoChar(buf, '\n');
				break;
			case 'r':
				appendStringInfoChar(buf, '\r');
				break;
			case 't':
				appendStringInfoChar(buf, '\t');
				break;
			case 'u':
				{
					pg_wchar	code = hex4(p + 1);
					unsigned char utf8[8];

					p += 4;
					if (code >= 0xD800 && code <= 0xDBFF)
					{
						/* a surrogate pair: the low half must follow */
						if (p + 6 < end + 1 && p[1] == '\\' && p[2] == 'u')
						{
							pg_wchar	low = hex4(p + 3);

							if (low < 0xDC00 || low > 0xDFFF)
								return fail(s);
							code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
							p += 6;
						}
						else
							return fail(s);
					}
					else if ((code >= 0xDC00 && code <= 0xDFFF) || code == 0)
						return fail(s);
					unicode_to_utf8(code, utf8);
					appendBinaryStringInfo(buf, (char *) utf8, pg_utf_mblen(utf8));
					break;
				}
			default:			/* " \ / */
				appendStringInfoChar(buf, *p);
				break;
		}
		p++;
	}
	return true;
}

/* A number token; *plain is false when it has a fraction or exponent. */
static bool
scan_number(Scanner *s, bool *exponent)
{
	const char *p = s->p;

	*exponent = false;
	if (p < s->end && *p == '-')
		p++;
	if (p >= s->end || !isdigit((unsigned char) *p))
		return fail(s);
	if (*p == '0')
		p++;
	else
		while (p < s->end && isdigit((unsigned char) *p))
			p++;
	if (p < s->end && *p == '.')
	{
		p++;
		if (p >= s->end || !isdigit((unsigned char) *p))
			return fail(s);
		while (p < s->end && isdigit((unsigned char) *p))
			p++;
	}
	if (p < s->end && (*p == 'e' || *p == 'E'))
	{
		*exponent = true;
		p++;
		if (p < s->end && (*p == '+' || *p == '-'))
			p++;
		if (p >= s->end || !isdigit((unsigned char) *p))
			return fail(s);
		while (p < s->end && isdigit((unsigned char) *p))
			p++;
	}
	s->p = p;
	return true;
}

static bool
scan_literal(Scanner *s, const char *word)
{
	size_t		n = strlen(word);

	if ((size_t) (s->end - s->p) < n || memcmp(s->p, word, n) != 0)
		return fail(s);
	s->p += n;
	return true;
}

/*
 * A JSON array at s->p as a PostgreSQL array literal, appended to buf:
 * ["a", 1, null, [2]] -> {"a","1",NULL,{"2"}}.  Objects become quoted JSON
 * text, as the jsonb path does.
 */
static bool
array_literal(Scanner *s, StringInfo buf)
{
	if (++s->depth > SCAN_MAX_DEPTH)
		return fail(s);
	s->p++;
	appendStringInfoChar(buf, '{');
	skip_ws(s);
	if (s->p < s->end && *s->p == ']')
	{
		s->p++;
		appendStringInfoChar(buf, '}');
		s->depth--;
		return true;
	}
	for (;;)
	{
		const char *start;

		skip_ws(s);
		if (s->p >= s->end)
			return fail(s);
		start = s->p;
		if (*s->p == '[')
		{
			if (!array_literal(s, buf))
				return false;
		}
		else if (*s->p == 'n')
		{
			if (!scan_literal(s, "null"))
				return false;
			appendStringInfoString(buf, "NULL");
		}
		else
		{
			StringInfoData text;
			int			off;
			int			len;
			bool		escaped;
			bool		exponent;

			initStringInfo(&text);
			if (*s->p == '"')
			{
				if (!scan_string(s, &off, &len, &escaped) || !unescape(s, off, len, &text))
					return false;
			}
			else if (*s->p == '{')
				return fail(s);	/* jsonb prints objects normalised */
			else if (*s->p == 't' || *s->p == 'f')
			{
				if (!scan_literal(s, *s->p == 't' ? "true" : "false"))
					return false;
				appendBinaryStringInfo(&text, start, s->p - start);
			}
			else
			{
				if (!scan_number(s, &exponent) || exponent ||
					(*start == '-' && strspn(start + 1, "0.") == (size_t) (s->p - start - 1)))
					return fail(s);
				appendBinaryStringInfo(&text, start, s->p - start);
			}
			appendStringInfoChar(buf, '"');
			for (int i = 0; i < text.len; i++)
			{
				if (text.data[i] == '"' || text.data[i] == '\\')
					appendStringInfoChar(buf, '\\');
				appendStringInfoChar(buf, text.data[i]);
			}
			appendStringInfoChar(buf, '"');
			pfree(text.data);
		}
		skip_ws(s);
		if (s->p < s->end && *s->p == ',')
		{
			s->p++;
			appendStringInfoChar(buf, ',');
			continue;
		}
		if (s->p < s->end && *s->p == ']')
		{
			s->p++;
			appendStringInfoChar(buf, '}');
			s->depth--;
			return true;
		}
		return fail(s);
	}
}

static void
store(Scanner *s, Slot *row, int column, SlotKind kind, int off, int len)
{
	row[column].set = true;
	row[column].kind = kind;
	row[column].off = off;
	row[column].len = len;
	row[column].plain = false;
	s->result->present[column] = true;
}

/*
 * Bytes COPY need not escape: a JSON string without escapes holds no
 * control character and no backslash, nor does a number or a literal.
 */
static void
store_plain(Scanner *s, Slot *row, int column, int off, int len)
{
	store(s, row, column, SLOT_BODY, off, len);
	row[column].plain = true;
}

/*
 * The value at s->p goes to column `column` of the current record: as the
 * column type's input function will read it (strings unescaped; JSON text
 * for json/jsonb columns; other values as their JSON text).
 */
static bool
capture_column(Scanner *s, Slot *row, int column)
{
	const char *start = s->p;
	bool		json_col = s->spec->column_is_json[column];
	bool		exponent;
	int			off;
	int			len;
	bool		escaped;

	/*
	 * A second value for one column (a repeated key, or keys differing only
	 * in case): jsonb keeps one by its own rules.
	 */
	if (row[column].set)
		return fail(s);
	switch (*s->p)
	{
		case '"':
			if (!scan_string(s, &off, &len, &escaped))
				return false;
			if (json_col && !escaped)
				store_plain(s, row, column, start - s->body, s->p - start);
			else if (json_col)
				store(s, row, column, SLOT_BODY, start - s->body, s->p - start);
			else if (!escaped)
				store_plain(s, row, column, off, len);
			else
			{
				int			uoff = s->unescaped.len;

				if (!unescape(s, off, len, &s->unescaped))
					return false;
				store(s, row, column, SLOT_UNESCAPED, uoff, s->unescaped.len - uoff);
			}
			return true;
		case 'n':
			if (!scan_literal(s, "null"))
				return false;
			row[column].kind = SLOT_NULL;
			row[column].set = true;
			s->result->present[column] = true;
			return true;
		case 't':
		case 'f':
			if (!scan_literal(s, *s->p == 't' ? "true" : "false"))
				return false;
			store_plain(s, row, column, start - s->body, s->p - start);
			return true;
		case '[':
			if (s->spec->column_is_array[column])
			{
				int			uoff = s->unescaped.len;

				if (!array_literal(s, &s->unescaped))
					return false;
				store(s, row, column, SLOT_UNESCAPED, uoff, s->unescaped.len - uoff);
				return true;
			}
			/* FALLTHROUGH */
		case '{':
			/* jsonb text is normalised; only jsonb columns read it again */
			if (!json_col)
				return fail(s);
			if (!scan_value(s, NULL, 0, NULL))
				return false;
			break;
		default:
			if (!scan_number(s, &exponent))
				return false;
			if (exponent && !json_col)
				return fail(s);		/* jsonb would print it without the exponent */
			if (*start == '-' && strspn(start + 1, "0.") == (size_t) (s->p - start - 1) && !json_col)
				return fail(s);		/* -0: jsonb prints 0 */
			store_plain(s, row, column, start - s->body, s->p - start);
			return true;
	}
	store(s, row, column, SLOT_BODY, start - s->body, s->p - start);
	return true;
}

static bool
key_matches(const EtlKeyPath *path, int pos, const char *key, int len)
{
	return path->lens[pos] == len && memcmp(path->keys[pos], key, len) == 0;
}

/* One record (an object): its members go to their columns. */
static bool
scan_record(Scanner *s)
{
	Slot	   *row;
	int			position = 0;
	int			ncols = s->spec->ncols;

	if (*s->p != '{')
		return fail(s);			/* not an object: the jsonb path says so */
	if (s->nrec == s->cap)
	{
		s->cap = s->cap ? s->cap * 2 : 256;
		s->slots = s->slots ? repalloc(s->slots, sizeof(Slot) * s->cap * ncols)
			: palloc(sizeof(Slot) * s->cap * ncols);
	}
	row = &s->slots[s->nrec * ncols];
	memset(row, 0, sizeof(Slot) * ncols);

	if (s->spec->use_map)
	{
		Match	   *m = palloc(sizeof(Match) * ncols);
		int			nm = 0;

		for (int c = 0; c < ncols; c++)
			if (s->spec->map[c].n >= 0)
			{
				m[nm].path = &s->spec->map[c];
				m[nm].pos = 0;
				m[nm].what = MATCH_COLUMN;
				m[nm].column = c;
				nm++;
				s->result->present[c] = true;
			}
		if (!scan_value(s, m, nm, row))
			return false;
		pfree(m);
		s->nrec++;
		return true;
	}

	s->p++;
	skip_ws(s);
	if (s->p < s->end && *s->p == '}')
	{
		s->p++;
		s->nrec++;
		return true;
	}
	for (;;)
	{
		int			off;
		int			len;
		bool		escaped;
		int			column;
		const char *key;

		skip_ws(s);
		if (s->p >= s->end || *s->p != '"' || !scan_string(s, &off, &len, &escaped))
			return fail(s);
		key = s->body + off;
		if (escaped)
		{
			StringInfoData k;

			initStringInfo(&k);
			if (!unescape(s, off, len, &k))
				return false;
			key = k.data;
			len = k.len;
		}
		skip_ws(s);
		if (s->p >= s->end || *s->p != ':')
			return fail(s);
		s->p++;
		skip_ws(s);
		if (s->p >= s->end)
			return fail(s);
		column = s->spec->column_for_key(s->spec->arg, position++, key, len);
		if (column >= 0)
		{
			if (!capture_column(s, row, column))
				return false;
		}
		else if (!scan_value(s, NULL, 0, NULL))
			return false;
		skip_ws(s);
		if (s->p < s->end && *s->p == ',')
		{
			s->p++;
			continue;
		}
		if (s->p < s->end && *s->p == '}')
		{
			s->p++;
			break;
		}
		return fail(s);
	}
	s->nrec++;
	return true;
}

/* The records array: each element, through the path's steps after [*]. */
static bool
scan_records(Scanner *s)
{
	const EtlKeyPath *after = &s->spec->records_after;

	s->result->container_seen = true;
	if (*s->p != '[')
		return fail(s);			/* lax [*] on a non-array: the jsonb path */
	s->p++;
	skip_ws(s);
	if (s->p < s->end && *s->p == ']')
	{
		s->p++;
		return true;
	}
	for (;;)
	{
		skip_ws(s);
		if (s->p >= s->end)
			return fail(s);
		if (after->n == 0)
		{
			if (!scan_record(s))
				return false;
		}
		else
		{
			Match		m = {after, 0, MATCH_RECORDS, -1};

			/* an element without the member is no record: lax mode */
			if (!scan_value(s, &m, 1, NULL))
				return false;
		}
		skip_ws(s);
		if (s->p < s->end && *s->p == ',')
		{
			s->p++;
			continue;
		}
		if (s->p < s->end && *s->p == ']')
		{
			s->p++;
			return true;
		}
		return fail(s);
	}
}

/* capture a scalar for total_path / next_path, as jsonb_value_text would */
static bool
capture_scalar(Scanner *s, char **out)
{
	const char *start = s->p;
	int			off;
	int			len;
	bool		escaped;
	bool		exponent;

	switch (*s->p)
	{
		case '"':
			if (!scan_string(s, &off, &len, &escaped))
				return false;
			if (escaped)
			{
				StringInfoData buf;

				initStringInfo(&buf);
				if (!unescape(s, off, len, &buf))
					return false;
				*out = buf.data;
			}
			else
				*out = pnstrdup(s->body + off, len);
			return true;
		case 'n':
			return scan_literal(s, "null");
		case 't':
		case 'f':
		case '{':
		case '[':
			return fail(s);		/* the jsonb path decides what these mean */
		default:
			if (!scan_number(s, &exponent) || exponent)
				return fail(s);
			*out = pnstrdup(start, s->p - start);
			return true;
	}
}

/*
 * Scan one value.  Each match has consumed `pos` steps of its path; a match
 * whose path ends here takes this value.  Without matches the value is only
 * validated and skipped.
 */
static bool
scan_value(Scanner *s, Match *matches, int nmatches, Slot *row)
{
	const char *start;
	int			ncomplete = 0;
	bool	   *seen = NULL;

	skip_ws(s);
	if (s->p >= s->end)
		return fail(s);
	start = s->p;

	/* matches whose paths end at this value take it */
	for (int i = 0; i < nmatches; i++)
		if (matches[i].pos == matches[i].path->n)
			ncomplete++;
	if (ncomplete > 0)
	{
		int			nrest = 0;

		for (int i = 0; i < nmatches; i++)
		{
			bool		ok;

			if (matches[i].pos < matches[i].path->n)
			{
				matches[nrest++] = matches[i];	/* these go on below */
				continue;
			}
			s->p = start;
			switch (matches[i].what)
			{
				case MATCH_RECORDS:
					if (nmatches > 1)
						return fail(s);		/* records_path ending where another path does */
					return matches[i].path == &s->spec->records_before ? scan_records(s) : scan_record(s);
				case MATCH_TOTAL:
					ok = capture_scalar(s, &s->result->total_text);
					break;
				case MATCH_NEXT:
					ok = capture_scalar(s, &s->result->next_text);
					break;
				default:
					ok = capture_column(s, row, matches[i].column);
					break;
			}
			if (!ok)
				return false;
		}
		if (nrest == 0)
			return true;
		/* other paths go deeper into the same value: read it again */
		s->p = start;
		nmatches = nrest;
	}

	if (++s->depth > SCAN_MAX_DEPTH)
		return fail(s);
	switch (*s->p)
	{
		case '{':
			seen = NULL;
			s->p++;
			skip_ws(s);
			if (s->p < s->end && *s->p == '}')
			{
				s->p++;
				break;
			}
			for (;;)
			{
				int			off;
				int			len;
				bool		escaped;
				Match	   *child = NULL;
				int			nchild = 0;
				const char *key;

				skip_ws(s);
				if (s->p >= s->end || *s->p != '"' || !scan_string(s, &off, &len, &escaped))
					return fail(s);
				key = s->body + off;
				if (escaped)
				{
					StringInfoData k;

					initStringInfo(&k);
					if (!unescape(s, off, len, &k))
						return false;
					key = k.data;
					len = k.len;
				}
				for (int i = 0; i < nmatches; i++)
					if (key_matches(matches[i].path, matches[i].pos, key, len))
					{
						/* a followed key twice in one object: jsonb keeps the last */
						if (seen == NULL)
							seen = palloc0(sizeof(bool) * nmatches);
						if (seen[i])
							return fail(s);
						seen[i] = true;
						if (child == NULL)
							child = palloc(sizeof(Match) * nmatches);
						child[nchild] = matches[i];
						child[nchild].pos++;
						nchild++;
					}
				skip_ws(s);
				if (s->p >= s->end || *s->p != ':')
					return fail(s);
				s->p++;
				if (!scan_value(s, child, nchild, row))
					return false;
				if (child)
					pfree(child);
				skip_ws(s);
				if (s->p < s->end && *s->p == ',')
				{
					s->p++;
					continue;
				}
				if (s->p < s->end && *s->p == '}')
				{
					s->p++;
					break;
				}
				return fail(s);
			}
			break;
		case '[':
			if (nmatches > 0)
				return fail(s);		/* lax member access through an array */
			s->p++;
			skip_ws(s);
			if (s->p < s->end && *s->p == ']')
			{
				s->p++;
				break;
			}
			for (;;)
			{
				if (!scan_value(s, NULL, 0, NULL))
					return false;
				skip_ws(s);
				if (s->p < s->end && *s->p == ',')
				{
					s->p++;
					continue;
				}
				if (s->p < s->end && *s->p == ']')
				{
					s->p++;
					break;
				}
				return fail(s);
			}
			break;
		case '"':
			{
				int			off;
				int			len;
				bool		escaped;

				if (!scan_string(s, &off, &len, &escaped))
					return false;
				if (escaped)
				{
					/* validate the escapes the way jsonb would */
					int			mark = s->unescaped.len;

					if (!unescape(s, off, len, &s->unescaped))
						return false;
					s->unescaped.len = mark;
				}
				break;
			}
		case 't':
			if (!scan_literal(s, "true"))
				return false;
			break;
		case 'f':
			if (!scan_literal(s, "false"))
				return false;
			break;
		case 'n':
			if (!scan_literal(s, "null"))
				return false;
			break;
		default:
			{
				bool		exponent;

				if (!scan_number(s, &exponent))
					return false;
			}
	}
	s->depth--;
	return true;
}

/* append s[0..len) escaped for COPY's text format */
void
etl_append_copy_text(StringInfo buf, const char *s, int len)
{
	const char *start = s;
	const char *end = s + len;

	enlargeStringInfo(buf, len + 2);
	for (; s < end; s++)
	{
		const char *esc;

		switch (*s)
		{
			case '\\':
				esc = "\\\\";
				break;
			case '\n':
				esc = "\\n";
				break;
			case '\r':
				esc = "\\r";
				break;
			case '\t':
				esc = "\\t";
				break;
			default:
				continue;
		}
		appendBinaryStringInfo(buf, start, s - start);
		appendStringInfoString(buf, esc);
		start = s + 1;
	}
	appendBinaryStringInfo(buf, start, end - start);
}

/*
 * Scan a page.  On success fills *result: the record count, which columns
 * the page mentions, the records as COPY text (those columns, in column
 * order), and the total and next link/cursor when the spec asks for them.
 * Returns false when the jsonb path must do this page.
 */
bool
etl_scan_page(const EtlScanSpec *spec, const char *body, size_t len, EtlScanResult *result)
{
	Scanner		s = {0};
	Match		matches[3];
	int			nm = 0;
	int			ncols = spec->ncols;

	memset(result, 0, sizeof(*result));
	result->present = palloc0(sizeof(bool) * ncols);
	if (GetDatabaseEncoding() != PG_UTF8)
		return false;			/* \uXXXX would need converting */
	s.spec = spec;
	s.body = body;
	s.p = body;
	s.end = body + len;
	s.result = result;
	initStringInfo(&s.unescaped);

	matches[nm++] = (Match) {&spec->records_before, 0, MATCH_RECORDS, -1};
	if (spec->total.n >= 0)
		matches[nm++] = (Match) {&spec->total, 0, MATCH_TOTAL, -1};
	if (spec->next.n >= 0)
		matches[nm++] = (Match) {&spec->next, 0, MATCH_NEXT, -1};
	if (!scan_value(&s, matches, nm, NULL))
		return false;
	skip_ws(&s);
	if (s.p != s.end || s.failed)
		return false;

	result->nrec = s.nrec;
	initStringInfo(&result->copy_text);
	enlargeStringInfo(&result->copy_text, (int) Min(len + len / 8 + 1024, (size_t) MaxAllocSize / 2));
	for (int r = 0; r < s.nrec; r++)
	{
		Slot	   *row = &s.slots[r * ncols];
		bool		first = true;

		for (int c = 0; c < ncols; c++)
		{
			if (!result->present[c])
				continue;
			if (!first)
				appendStringInfoChar(&result->copy_text, '\t');
			first = false;
			if (row[c].kind == SLOT_NULL)
				appendBinaryStringInfo(&result->copy_text, "\\N", 2);
			else if (row[c].plain)
				appendBinaryStringInfo(&result->copy_text, body + row[c].off, row[c].len);
			else
				etl_append_copy_text(&result->copy_text,
									 (row[c].kind == SLOT_BODY ? body : s.unescaped.data) + row[c].off,
									 row[c].len);
		}
		appendStringInfoChar(&result->copy_text, '\n');
	}
	return true;
}
