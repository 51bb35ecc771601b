/*-------------------------------------------------------------------------
 *
 * page_scan.c
 *	  A fast reader of one page of JSON records, straight into COPY text.
 *
 * (ndjson pages are read the same way, a record a line; csv pages through
 * csv_scan.c's reader -- see "ndjson and csv pages" below.)
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
 * It touches no PostgreSQL state (malloc, not palloc; no ereport), so it
 * can run in a thread of its own: the worker scans page N+1 there while
 * it loads page N (etl_scan_start / etl_scan_finish below).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>
#include <pthread.h>
#include <signal.h>

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/memutils.h"

#include "etl_exec.h"

#define SCAN_MAX_DEPTH 1000
#define MAX_MATCHES 64

/* a growable malloc'd buffer (thread-safe, unlike StringInfo) */
typedef struct Buf
{
	char	   *data;
	int			len;
	int			maxlen;
	bool		oom;
} Buf;

static void
buf_reserve(Buf *b, int more)
{
	if (b->oom)
		return;
	if (b->len + more + 1 > b->maxlen)
	{
		int			newlen = Max(b->maxlen * 2, b->len + more + 1);
		char	   *p = realloc(b->data, newlen);

		if (p == NULL)
		{
			b->oom = true;
			return;
		}
		b->data = p;
		b->maxlen = newlen;
	}
}

static void
buf_init(Buf *b)
{
	b->data = NULL;
	b->len = 0;
	b->maxlen = 0;
	b->oom = false;
	buf_reserve(b, 1024);
	if (!b->oom)
		b->data[0] = '\0';
}

static void
buf_append(Buf *b, const char *p, int n)
{
	buf_reserve(b, n);
	if (b->oom)
		return;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static inline void
buf_char(Buf *b, char c)
{
	buf_append(b, &c, 1);
}

static void
buf_string(Buf *b, const char *str)
{
	buf_append(b, str, strlen(str));
}

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
	Buf			unescaped;
	Buf			keybuf;
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
 * Enter the container whose opening bracket is at s->p; true when it is
 * empty, and then read up to its closing bracket.
 */
static bool
enter_container(Scanner *s, char close)
{
	s->p++;
	skip_ws(s);
	if (s->p < s->end && *s->p == close)
	{
		s->p++;
		return true;
	}
	return false;
}

/* whether the 4 bytes at p (before end) are hex digits */
static bool
is_hex4(const char *p, const char *end)
{
	if (p + 4 > end)
		return false;
	for (int i = 0; i < 4; i++)
		if (!isxdigit((unsigned char) p[i]))
			return false;
	return true;
}

/* the value of 4 hex digits (is_hex4) */
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
				int			code;

				/* (the closing quote must follow: p + 4 < end) */
				if (p + 4 >= s->end || !is_hex4(p + 1, s->end))
					return fail(s);
				code = hex4(p + 1);
				p += 4;

				/*
				 * What jsonb refuses, in a value passed on as it is (to a
				 * jsonb column) or skipped too: \u0000, and a surrogate
				 * that is not half of a pair (found by the differential
				 * test against jsonb)
				 */
				if (code == 0 || (code >= 0xDC00 && code <= 0xDFFF))
					return fail(s);
				if (code >= 0xD800 && code <= 0xDBFF)
				{
					int			low;

					if (p + 6 >= s->end || p[1] != '\\' || p[2] != 'u' || !is_hex4(p + 3, s->end))
						return fail(s);
					low = hex4(p + 3);
					if (low < 0xDC00 || low > 0xDFFF)
						return fail(s);
					p += 6;
				}
			}
			else if (*p == '\0' || !strchr("\"\\/bfnrt", *p))	/* (strchr finds the NUL) */
				return fail(s);
		}
		p++;
	}
	*start = (s->p + 1) - s->body;
	*len = p - (s->p + 1);
	s->p = p + 1;
	return true;
}

/* Decode a (validated) string's escapes into buf, as UTF-8. */
static bool
unescape(Scanner *s, int start, int len, Buf *buf)
{
	const char *p = s->body + start;
	const char *end = p + len;

	while (p < end)
	{
		const char *bs = memchr(p, '\\', end - p);

		if (bs == NULL)
		{
			buf_append(buf, p, end - p);
			break;
		}
		buf_append(buf, p, bs - p);
		p = bs + 1;
		switch (*p)
		{
			case 'b':
				buf_char(buf, '\b');
				break;
			case 'f':
				buf_char(buf, '\f');
				break;
			case 'n':
				buf_char(buf, '\n');
				break;
			case 'r':
				buf_char(buf, '\r');
				break;
			case 't':
				buf_char(buf, '\t');
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
					buf_append(buf, (char *) utf8, pg_utf_mblen(utf8));
					break;
				}
			default:			/* " \ / */
				buf_char(buf, *p);
				break;
		}
		p++;
	}
	return true;
}

/* A number token; *exponent says whether it has one. */
static bool
scan_number(Scanner *s, bool *exponent)
{
	const char *p = s->p;
	int			exponent_digits = 0;

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
		while (p < s->end && *p == '0')
			p++;
		while (p < s->end && isdigit((unsigned char) *p))
		{
			p++;
			exponent_digits++;
		}
	}

	/*
	 * jsonb's numeric refuses a value past its range ("value overflows
	 * numeric format"), even in a member nobody maps.  Leave every number
	 * that might be -- an exponent of four digits or more, a thousand
	 * bytes -- to the jsonb path, which decides (it takes 1e1000).
	 */
	if (exponent_digits > 3 || p - s->p > 1000)
		return fail(s);
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
 * Whether the number text [start, end) is a negative zero ("-0", "-0.00"):
 * jsonb prints it as 0.  The body is not NUL-terminated, so bounded.
 */
static bool
is_negative_zero(const char *start, const char *end)
{
	const char *c;

	if (start >= end || *start != '-')
		return false;
	for (c = start + 1; c < end; c++)
		if (*c != '0' && *c != '.')
			return false;
	return true;
}

/*
 * A scalar element of an array bound for an array column, at s->p, as a
 * quoted element of the literal (strings unescaped, other scalars as their
 * JSON text), appended to buf.
 */
static bool
array_element(Scanner *s, Buf *buf)
{
	const char *start = s->p;
	Buf			text;
	int			off;
	int			len;
	bool		escaped;
	bool		exponent;
	bool		ok;

	if (*s->p == '{')
		return fail(s);			/* jsonb prints objects normalised */
	buf_init(&text);
	if (*s->p == '"')
		ok = scan_string(s, &off, &len, &escaped) && unescape(s, off, len, &text);
	else if (*s->p == 't' || *s->p == 'f')
		ok = scan_literal(s, *s->p == 't' ? "true" : "false");
	else
	{
		ok = scan_number(s, &exponent);
		/* jsonb prints these otherwise (without the exponent, -0 as 0) */
		if (ok && (exponent || is_negative_zero(start, s->p)))
			ok = fail(s);
	}
	if (ok && *start != '"')
		buf_append(&text, start, s->p - start);
	if (ok)
	{
		buf_reserve(buf, 2 * text.len + 2);
		if (!buf->oom)
		{
			buf->len += etl_quote_array_element(buf->data + buf->len, text.data, text.len);
			buf->data[buf->len] = '\0';
		}
	}
	free(text.data);			/* (on the way out of a failure too) */
	return ok;
}

/*
 * A JSON array at s->p as a PostgreSQL array literal, appended to buf:
 * ["a", 1, null, [2]] -> {"a","1",NULL,{"2"}}.  Objects make it give up:
 * jsonb prints them normalised.
 */
static bool
array_literal(Scanner *s, Buf *buf)
{
	if (++s->depth > SCAN_MAX_DEPTH)
		return fail(s);
	buf_char(buf, '{');
	if (enter_container(s, ']'))
	{
		buf_char(buf, '}');
		s->depth--;
		return true;
	}
	for (;;)
	{
		skip_ws(s);
		if (s->p >= s->end)
			return fail(s);
		if (*s->p == '[')
		{
			if (!array_literal(s, buf))
				return false;
		}
		else if (*s->p == 'n')
		{
			if (!scan_literal(s, "null"))
				return false;
			buf_string(buf, "NULL");
		}
		else if (!array_element(s, buf))
			return false;
		skip_ws(s);
		if (s->p < s->end && *s->p == ',')
		{
			s->p++;
			buf_char(buf, ',');
			continue;
		}
		if (s->p < s->end && *s->p == ']')
		{
			s->p++;
			buf_char(buf, '}');
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
			if (is_negative_zero(start, s->p) && !json_col)
				return fail(s);		/* -0: jsonb prints 0 */
			store_plain(s, row, column, start - s->body, s->p - start);
			return true;
	}
	store(s, row, column, SLOT_BODY, start - s->body, s->p - start);
	return true;
}

/*
 * After an element or member: a ',' goes on (1), the closing bracket ends
 * the container (0), anything else is bad JSON (-1).
 */
static int
next_item(Scanner *s, char close)
{
	skip_ws(s);
	if (s->p < s->end && *s->p == ',')
	{
		s->p++;
		return 1;
	}
	if (s->p < s->end && *s->p == close)
	{
		s->p++;
		return 0;
	}
	fail(s);
	return -1;
}

/*
 * A member's key at s->p and the ':' after it.  *key points into the body,
 * or into the scanner's key buffer when the key holds escapes (valid until
 * the next key).
 */
static bool
scan_key(Scanner *s, const char **key, int *len)
{
	int			off;
	bool		escaped;

	skip_ws(s);
	if (s->p >= s->end || *s->p != '"' || !scan_string(s, &off, len, &escaped))
		return fail(s);
	*key = s->body + off;
	if (escaped)
	{
		s->keybuf.len = 0;
		if (!unescape(s, off, *len, &s->keybuf) || s->keybuf.oom)
			return fail(s);
		*key = s->keybuf.data;
		*len = s->keybuf.len;
	}
	skip_ws(s);
	if (s->p >= s->end || *s->p != ':')
		return fail(s);
	s->p++;
	return true;
}

static bool
key_matches(const EtlKeyPath *path, int pos, const char *key, int len)
{
	return path->lens[pos] == len && memcmp(path->keys[pos], key, len) == 0;
}

/* room for one more record's slots; the new record's row, or NULL */
static Slot *
new_row(Scanner *s)
{
	int			ncols = s->spec->ncols;
	Slot	   *row;

	if (s->nrec == s->cap)
	{
		Slot	   *grown;

		s->cap = s->cap ? s->cap * 2 : 256;
		grown = realloc(s->slots, sizeof(Slot) * s->cap * Max(ncols, 1));
		if (grown == NULL)
			return NULL;
		s->slots = grown;
	}
	row = &s->slots[s->nrec * ncols];
	memset(row, 0, sizeof(Slot) * ncols);
	return row;
}

/* A record whose columns come from column_map's member paths. */
static bool
scan_mapped_record(Scanner *s, Slot *row)
{
	int			ncols = s->spec->ncols;
	Match	   *m = malloc(sizeof(Match) * Max(ncols, 1));
	int			nm = 0;
	bool		ok;

	if (m == NULL)
		return fail(s);
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
	ok = scan_value(s, m, nm, row);
	free(m);
	return ok;
}

/* A record whose keys name its columns (the key resolver decides). */
static bool
scan_named_record(Scanner *s, Slot *row)
{
	int			position = 0;
	int			more;

	if (enter_container(s, '}'))
		return true;
	for (;;)
	{
		int			len;
		int			column;
		const char *key;

		if (!scan_key(s, &key, &len))
			return false;
		skip_ws(s);
		if (s->p >= s->end)
			return fail(s);
		column = etl_key_resolver_column(s->spec->keys, position++, key, len);
		if (column == -2)
			return fail(s);
		if (column >= 0)
		{
			if (!capture_column(s, row, column))
				return false;
		}
		else
		{
			/* a key no column of the table names (on_new_keys: the jsonb path decides) */
			if (s->spec->table_keys &&
				etl_key_resolver_column(s->spec->table_keys, position - 1, key, len) < 0)
				s->result->new_keys = true;
			if (!scan_value(s, NULL, 0, NULL))
				return false;
		}
		if ((more = next_item(s, '}')) < 0)
			return false;
		if (more == 0)
			return true;
	}
}

/* One record (an object): its members go to their columns. */
static bool
scan_record(Scanner *s)
{
	Slot	   *row;

	if (*s->p != '{')
		return fail(s);			/* not an object: the jsonb path says so */
	if ((row = new_row(s)) == NULL)
		return fail(s);
	if (!(s->spec->use_map ? scan_mapped_record(s, row) : scan_named_record(s, row)))
		return false;
	s->nrec++;
	return true;
}

/* The records array: each element, through the path's steps after [*]. */
static bool
scan_records(Scanner *s)
{
	const EtlKeyPath *after = &s->spec->records_after;
	int			more;

	s->result->container_seen = true;
	if (*s->p != '[')
		return fail(s);			/* lax [*] on a non-array: the jsonb path */
	if (enter_container(s, ']'))
		return true;
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
		if ((more = next_item(s, ']')) < 0)
			return false;
		if (more == 0)
			return true;
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
				Buf			buf;

				buf_init(&buf);
				if (!unescape(s, off, len, &buf) || buf.oom)
				{
					free(buf.data);
					return fail(s);
				}
				*out = buf.data;
			}
			else if ((*out = strndup(s->body + off, len)) == NULL)
				return fail(s);
			return true;
		case 'n':
			return scan_literal(s, "null");
		case 't':
		case 'f':
		case '{':
		case '[':
			return fail(s);		/* the jsonb path decides what these mean */
		default:
			/* jsonb reads "-0" as 0: the jsonb path decides */
			if (!scan_number(s, &exponent) || exponent || is_negative_zero(start, s->p))
				return fail(s);
			if ((*out = strndup(start, s->p - start)) == NULL)
				return fail(s);
			return true;
	}
}

/*
 * The matches whose paths end at the value at s->p take it.  On return
 * *nmatches counts the matches that go deeper into the value (moved to the
 * front, s->p back at the value) -- or *finished says the value is done
 * with (records_path's, which scans it to its end).
 */
static bool
take_value(Scanner *s, Match *matches, int *nmatches, Slot *row, bool *finished)
{
	const char *start = s->p;
	int			nrest = 0;

	*finished = false;
	for (int i = 0; i < *nmatches; i++)
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
				if (*nmatches > 1)
					return fail(s); /* records_path ending where another path does */
				*finished = true;
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
	*nmatches = nrest;
	if (nrest > 0)
		s->p = start;			/* other paths go deeper: read it again */
	return true;
}

/* An object, its members followed by the matches whose next step they are. */
static bool
scan_object(Scanner *s, Match *matches, int nmatches, Slot *row)
{
	bool		seen[MAX_MATCHES];
	int			more;

	/* matches are few (paths and mapped columns): no allocation */
	if (nmatches > MAX_MATCHES)
		return fail(s);
	memset(seen, 0, sizeof(bool) * nmatches);
	if (enter_container(s, '}'))
		return true;
	for (;;)
	{
		int			len;
		Match		child[MAX_MATCHES];
		int			nchild = 0;
		const char *key;

		if (!scan_key(s, &key, &len))
			return false;
		for (int i = 0; i < nmatches; i++)
			if (key_matches(matches[i].path, matches[i].pos, key, len))
			{
				/* a followed key twice in one object: jsonb keeps the last */
				if (seen[i])
					return fail(s);
				seen[i] = true;
				child[nchild] = matches[i];
				child[nchild].pos++;
				nchild++;
			}
		if (!scan_value(s, nchild ? child : NULL, nchild, row))
			return false;
		if ((more = next_item(s, '}')) < 0)
			return false;
		if (more == 0)
			return true;
	}
}

/* An array no path goes into: validated and skipped. */
static bool
skip_array(Scanner *s)
{
	int			more;

	if (enter_container(s, ']'))
		return true;
	for (;;)
	{
		if (!scan_value(s, NULL, 0, NULL))
			return false;
		if ((more = next_item(s, ']')) < 0)
			return false;
		if (more == 0)
			return true;
	}
}

/* A scalar no path ends at: validated (escapes as jsonb would) and skipped. */
static bool
skip_scalar(Scanner *s)
{
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
				int			mark = s->unescaped.len;

				if (!unescape(s, off, len, &s->unescaped))
					return false;
				s->unescaped.len = mark;
			}
			return true;
		case 't':
			return scan_literal(s, "true");
		case 'f':
			return scan_literal(s, "false");
		case 'n':
			return scan_literal(s, "null");
		default:
			return scan_number(s, &exponent);
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
	bool		ok;

	skip_ws(s);
	if (s->p >= s->end)
		return fail(s);
	for (int i = 0; i < nmatches; i++)
		if (matches[i].pos == matches[i].path->n)
		{
			bool		finished;

			if (!take_value(s, matches, &nmatches, row, &finished))
				return false;
			if (finished || nmatches == 0)
				return true;
			break;
		}

	if (++s->depth > SCAN_MAX_DEPTH)
		return fail(s);
	if (*s->p == '{')
		ok = scan_object(s, matches, nmatches, row);
	else if (*s->p == '[')
		ok = nmatches > 0 ? fail(s) : skip_array(s);	/* lax member access through an array */
	else
		ok = skip_scalar(s);
	if (!ok)
		return false;
	s->depth--;
	return true;
}

static void
buf_append_copy_text(Buf *b, const char *s, int len)
{
	buf_reserve(b, 2 * len);
	if (b->oom)
		return;
	b->len += etl_copy_escape(b->data + b->len, s, len);
	b->data[b->len] = '\0';
}

/* ---------- ndjson and csv pages ---------- */

/*
 * An ndjson page: each line that is not blank is one record (an object),
 * read as a record of a JSON page is; a record may not go on to the next
 * line.
 */
static bool
scan_ndjson(Scanner *s)
{
	const char *body_end = s->end;

	s->result->container_seen = true;	/* a page without lines is empty */
	if (body_end - s->p >= 3 && memcmp(s->p, "\xEF\xBB\xBF", 3) == 0)
		s->p += 3;
	while (s->p < body_end)
	{
		const char *nl = memchr(s->p, '\n', body_end - s->p);

		s->end = nl ? nl : body_end;
		skip_ws(s);
		if (s->p < s->end)
		{
			if (!scan_record(s))
				return false;
			skip_ws(s);
			if (s->p != s->end)
				return fail(s);
		}
		s->p = nl ? nl + 1 : body_end;
		s->end = body_end;
	}
	return true;
}

/*
 * Which header's field each column takes (header_of[c], -1: none): through
 * column_map, whose one-step paths name headers exactly, else by name (the
 * key resolver, as for JSON keys).  False when the jsonb path must decide:
 * a header named twice, two headers for one column.
 */
static bool
csv_columns(const EtlScanSpec *spec, const EtlCsvReader *r, int *header_of, bool *present)
{
	for (int c = 0; c < spec->ncols; c++)
		header_of[c] = -1;
	for (int h = 0; h < r->nfields; h++)
	{
		const char *name = etl_csv_field_data(r, &r->fields[h]);
		int			len = r->fields[h].len;

		for (int g = 0; g < h; g++)
			if (r->fields[g].len == len &&
				memcmp(etl_csv_field_data(r, &r->fields[g]), name, len) == 0)
				return false;
		if (spec->use_map)
		{
			for (int c = 0; c < spec->ncols; c++)
				if (spec->map[c].n == 1 && key_matches(&spec->map[c], 0, name, len))
					header_of[c] = h;
		}
		else
		{
			int			c = etl_key_resolver_column(spec->keys, h, name, len);

			if (c == -2 || (c >= 0 && header_of[c] >= 0))
				return false;
			if (c >= 0)
			{
				header_of[c] = h;
				present[c] = true;
			}
		}
	}
	if (spec->use_map)
		for (int c = 0; c < spec->ncols; c++)
			if (spec->map[c].n >= 0)
			{
				if (spec->map[c].n != 1)
					return false;	/* a csv record has no nested fields */
				present[c] = true;
			}
	return true;
}

/*
 * A csv page: the header row names the fields, each row after it is a
 * record whose fields go to their columns as COPY text (each field's text
 * as it is: the column type's input function reads it, as COPY FROM ...
 * CSV would).  A row with another number of fields than the header, or a
 * quote that does not end, makes it give up: the jsonb path says where.
 */
static bool
scan_csv(const EtlScanSpec *spec, const char *body, size_t len, EtlScanResult *result)
{
	EtlCsvReader r;
	int		   *header_of = malloc(sizeof(int) * Max(spec->ncols, 1));
	Buf			out;
	int			nheaders;
	int			rc;
	bool		ok = false;

	result->container_seen = true;	/* a page without rows is empty */
	etl_csv_reader_init(&r, spec->csv, body, len);
	buf_init(&out);
	if (header_of == NULL || (rc = etl_csv_next(&r)) < 0)
		goto done;
	if (rc == 0)
	{
		ok = true;				/* an empty body: no header, no records */
		goto done;
	}
	if (!csv_columns(spec, &r, header_of, result->present))
		goto done;
	if (spec->table_keys)
	{
		/* a header no column of the table names (on_new_keys: the jsonb path decides) */
		for (int h = 0; h < r.nfields; h++)
			if (etl_key_resolver_column(spec->table_keys, h, etl_csv_field_data(&r, &r.fields[h]),
										r.fields[h].len) < 0)
				result->new_keys = true;
	}
	nheaders = r.nfields;
	buf_reserve(&out, (int) Min(len + len / 8 + 1024, (size_t) INT_MAX / 4));
	while ((rc = etl_csv_next(&r)) > 0)
	{
		bool		first = true;

		if (r.nfields != nheaders)
			goto done;
		for (int c = 0; c < spec->ncols; c++)
		{
			int			h = header_of[c];
			const EtlCsvField *f = h >= 0 ? &r.fields[h] : NULL;

			if (!result->present[c])
				continue;
			if (!first)
				buf_char(&out, '\t');
			first = false;
			if (f == NULL || f->isnull)
				buf_append(&out, "\\N", 2);
			else if (f->plain)
				buf_append(&out, etl_csv_field_data(&r, f), f->len);
			else
				buf_append_copy_text(&out, etl_csv_field_data(&r, f), f->len);
		}
		buf_char(&out, '\n');
		result->nrec++;
	}
	ok = rc == 0 && !out.oom;
done:
	if (ok)
	{
		result->copy_text = out.data;
		result->copy_len = out.len;
	}
	else
		free(out.data);
	free(header_of);
	etl_csv_reader_free(&r);
	return ok;
}

/* Free what etl_scan_page allocated for a result. */
void
etl_scan_result_free(EtlScanResult *result)
{
	free(result->present);
	free(result->copy_text);
	free(result->total_text);
	free(result->next_text);
	memset(result, 0, sizeof(*result));
}

/*
 * Scan a page.  On success fills *result: the record count, which columns
 * the page mentions, the records as COPY text (those columns, in column
 * order), and the total and next link/cursor when the spec asks for them.
 * Returns false when the jsonb path must do this page.  Everything in
 * *result is malloc'd: free it with etl_scan_result_free(), either way.
 */
bool
etl_scan_page(const EtlScanSpec *spec, const char *body, size_t len, EtlScanResult *result)
{
	Scanner		s = {0};
	Match		matches[3];
	int			nm = 0;
	int			ncols = spec->ncols;
	Buf			out;
	bool		ok;

	memset(result, 0, sizeof(*result));
	result->present = calloc(Max(ncols, 1), sizeof(bool));
	if (result->present == NULL)
		return false;
	if (spec->format == ETL_FORMAT_CSV)
		return scan_csv(spec, body, len, result);
	s.spec = spec;
	s.body = body;
	s.p = body;
	s.end = body + len;
	s.result = result;
	buf_init(&s.unescaped);
	buf_init(&s.keybuf);

	if (spec->format == ETL_FORMAT_NDJSON)
		ok = scan_ndjson(&s);
	else
	{
		matches[nm++] = (Match) {&spec->records_before, 0, MATCH_RECORDS, -1};
		if (spec->total.n >= 0)
			matches[nm++] = (Match) {&spec->total, 0, MATCH_TOTAL, -1};
		if (spec->next.n >= 0)
			matches[nm++] = (Match) {&spec->next, 0, MATCH_NEXT, -1};
		ok = scan_value(&s, matches, nm, NULL);
	}
	if (ok)
	{
		skip_ws(&s);
		ok = s.p == s.end && !s.failed && !s.unescaped.oom && !s.keybuf.oom;
	}

	if (ok)
	{
		result->nrec = s.nrec;
		buf_init(&out);
		buf_reserve(&out, (int) Min(len + len / 8 + 1024, (size_t) INT_MAX / 4));
		for (int r = 0; r < s.nrec; r++)
		{
			Slot	   *row = &s.slots[r * ncols];
			bool		first = true;

			for (int c = 0; c < ncols; c++)
			{
				if (!result->present[c])
					continue;
				if (!first)
					buf_char(&out, '\t');
				first = false;
				if (row[c].kind == SLOT_NULL)
					buf_append(&out, "\\N", 2);
				else if (row[c].plain)
					buf_append(&out, body + row[c].off, row[c].len);
				else
					buf_append_copy_text(&out,
										 (row[c].kind == SLOT_BODY ? body : s.unescaped.data) + row[c].off,
										 row[c].len);
			}
			buf_char(&out, '\n');
		}
		ok = !out.oom;
		result->copy_text = out.data;
		result->copy_len = out.len;
	}
	free(s.slots);
	free(s.unescaped.data);
	free(s.keybuf.data);
	return ok;
}

/* ---------- scanning in a thread of its own ---------- */

/*
 * One helper thread scans the next page while the worker loads the current
 * one.  It runs only etl_scan_page, which touches no PostgreSQL state; all
 * signals are blocked in it, so the worker's handlers run where they expect.
 */
static pthread_t scan_thread;
static bool scan_thread_started = false;
static pthread_mutex_t scan_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t scan_cond = PTHREAD_COND_INITIALIZER;
static struct
{
	bool		posted;			/* a page waits to be scanned, or is being */
	bool		done;
	const EtlScanSpec *spec;
	const char *body;
	size_t		len;
	EtlScanResult *result;
	bool		ok;
} scan_job;

static void *
scan_thread_main(void *arg)
{
	pthread_mutex_lock(&scan_mutex);
	for (;;)
	{
		while (!scan_job.posted || scan_job.done)
			pthread_cond_wait(&scan_cond, &scan_mutex);
		pthread_mutex_unlock(&scan_mutex);
		scan_job.ok = etl_scan_page(scan_job.spec, scan_job.body, scan_job.len, scan_job.result);
		pthread_mutex_lock(&scan_mutex);
		scan_job.done = true;
		pthread_cond_broadcast(&scan_cond);
	}
	return NULL;
}

/* Start scanning a page in the background; false if no thread can run. */
bool
etl_scan_start(const EtlScanSpec *spec, const char *body, size_t len, EtlScanResult *result)
{
	if (!scan_thread_started)
	{
		sigset_t	all;
		sigset_t	old;
		int			rc;

		sigfillset(&all);
		pthread_sigmask(SIG_BLOCK, &all, &old);
		rc = pthread_create(&scan_thread, NULL, scan_thread_main, NULL);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (rc != 0)
			return false;
		scan_thread_started = true;
	}
	pthread_mutex_lock(&scan_mutex);
	Assert(!scan_job.posted);
	scan_job.spec = spec;
	scan_job.body = body;
	scan_job.len = len;
	scan_job.result = result;
	scan_job.done = false;
	scan_job.posted = true;
	pthread_cond_broadcast(&scan_cond);
	pthread_mutex_unlock(&scan_mutex);
	return true;
}

/*
 * Wait for the background scan (a page's worth of work: milliseconds) and
 * return what etl_scan_page returned; false when none was started.
 */
bool
etl_scan_finish(void)
{
	bool		ok;

	pthread_mutex_lock(&scan_mutex);
	if (!scan_job.posted)
	{
		pthread_mutex_unlock(&scan_mutex);
		return false;
	}
	while (!scan_job.done)
		pthread_cond_wait(&scan_cond, &scan_mutex);
	scan_job.posted = false;
	ok = scan_job.ok;
	pthread_mutex_unlock(&scan_mutex);
	return ok;
}
