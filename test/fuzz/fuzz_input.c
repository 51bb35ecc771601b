/*-------------------------------------------------------------------------
 *
 * fuzz_input.c
 *	  Reading a fuzz input: option lines first, then the bytes the code
 *	  under test parses.
 *
 * Inputs are text with a few lines of harness options on top so that the
 * seed corpus stays readable and a finding can be read (and minimised)
 * by eye; the fuzzer mutates the options as freely as the rest.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <stdarg.h>

#include "fuzz.h"

void
fuzz_input_init(FuzzInput *in, const uint8_t *data, size_t size)
{
	in->p = (const char *) data;
	in->end = (const char *) data + size;
}

char *
fuzz_take_line(FuzzInput *in)
{
	const char *nl = memchr(in->p, '\n', in->end - in->p);
	const char *line_end = nl ? nl : in->end;
	const char *nul = memchr(in->p, '\0', line_end - in->p);
	char	   *line = pnstrdup(in->p, (nul ? nul : line_end) - in->p);

	in->p = nl ? nl + 1 : in->end;
	return line;
}

char *
fuzz_take_rest(FuzzInput *in, size_t *len)
{
	char	   *copy;

	*len = in->end - in->p;
	/* exactly len bytes: ASan reports a read past the body's end */
	copy = malloc(*len);
	if (copy == NULL)
		abort();
	memcpy(copy, in->p, *len);
	in->p = in->end;
	return copy;
}

char *
fuzz_option(const char *line, const char *name)
{
	size_t		n = strlen(name);
	const char *p = line;

	while (*p)
	{
		const char *word_end;

		while (*p == ' ')
			p++;
		word_end = p + strcspn(p, " ");
		if ((size_t) (word_end - p) > n && strncmp(p, name, n) == 0 && p[n] == '=')
			return pnstrdup(p + n + 1, word_end - (p + n + 1));
		p = word_end;
	}
	return NULL;
}

bool
fuzz_flag(const char *line, const char *word)
{
	size_t		n = strlen(word);

	for (const char *p = line; (p = strstr(p, word)) != NULL; p += n)
		if ((p == line || p[-1] == ' ') && (p[n] == '\0' || p[n] == ' '))
			return true;
	return false;
}

void
fuzz_fail(const char *fmt,...)
{
	va_list		ap;

	fprintf(stderr, "==fuzz== invariant broken: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	abort();
}

void
fuzz_debug(const char *fmt,...)
{
	static int	debug = -1;
	va_list		ap;

	if (debug < 0)
		debug = getenv("FUZZ_DEBUG") != NULL;
	if (!debug)
		return;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
}
