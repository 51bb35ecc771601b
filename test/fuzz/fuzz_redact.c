/*-------------------------------------------------------------------------
 *
 * fuzz_redact.c
 *	  libFuzzer harness: redaction (src/redact.c) of error texts, URLs and
 *	  JSON documents an API sent back, with the secrets of a run.
 *
 * Input: secret lines, a line "--", then the text to redact.
 *
 *	  NAME=value	a secret named NAME ({secret:NAME} stands for it in URLs)
 *	  value			a secret without a name (a header value, a token)
 *
 * What redaction must never do is let a secret through: no secret value
 * may be left in etl_redact's or etl_redact_url's result, nor in a string
 * (key or value) of etl_redact_jsonb's.  (A secret that holds a bracket or
 * brace, or that is part of a stand-in's own text, can show up where a
 * stand-in meets the text around it: those are not checked.)
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"

#include "etl_exec.h"
#include "fuzz.h"

/* redact.c's stand-in for a secret (its REDACTED) */
#define REDACTED "[secret redacted]"
#define MAX_SECRETS 16

typedef struct RedactCase
{
	char	   *values[MAX_SECRETS];
	char	   *names[MAX_SECRETS]; /* NULL: no name */
	int			n;
	const char *text;
	Jsonb	   *doc;
	Jsonb	   *redacted;
} RedactCase;

static void
register_secrets(void *arg)
{
	RedactCase *c = arg;

	for (int i = 0; i < c->n; i++)
	{
		if (c->names[i])
			etl_redact_register_secret(c->values[i], c->names[i]);
		else
			etl_redact_register(c->values[i]);
	}
}

static void
redact_doc(void *arg)
{
	RedactCase *c = arg;

	c->doc = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(c->text)));
	c->redacted = etl_redact_jsonb(c->doc);
	(void) etl_redact_json_text(c->text);
}

/* whether a stand-in can make secret i appear where it meets its neighbours */
static bool
unchecked(const RedactCase *c, int i)
{
	const char *v = c->values[i];

	if (v[0] == '\0' || strpbrk(v, "[]{}") || strstr(REDACTED, v))
		return true;
	for (int j = 0; j < c->n; j++)
		if (c->names[j] && strstr(psprintf("{secret:%s}", c->names[j]), v))
			return true;
	return false;
}

static void
check(const RedactCase *c, const char *what, const char *result)
{
	for (int i = 0; i < c->n; i++)
		if (!unchecked(c, i) && strstr(result, c->values[i]))
			fuzz_fail("%s of \"%s\" keeps the secret \"%s\": \"%s\"", what, c->text,
					  c->values[i], result);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FuzzInput	in;
	RedactCase	c = {0};

	fuzz_begin();
	fuzz_input_init(&in, data, size);
	while (in.p < in.end)
	{
		char	   *line = fuzz_take_line(&in);
		char	   *eq = strchr(line, '=');

		if (strcmp(line, "--") == 0)
			break;
		if (c.n == MAX_SECRETS)
			continue;
		c.names[c.n] = NULL;
		if (eq && eq > line)
		{
			*eq = '\0';
			c.names[c.n] = line;
			line = eq + 1;
		}
		c.values[c.n++] = line;
	}
	c.text = pnstrdup(in.p, in.end - in.p);

	/* a new run: none of the last input's secrets */
	etl_redact_forget();
	if (fuzz_call(register_secrets, &c))
	{
		check(&c, "etl_redact", etl_redact(c.text));
		check(&c, "etl_redact_url", etl_redact_url(c.text));
		if (fuzz_call(redact_doc, &c))
		{
			JsonbIterator *it = JsonbIteratorInit(&c.redacted->root);
			JsonbValue	v;
			JsonbIteratorToken tok;

			while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
				if ((tok == WJB_KEY || tok == WJB_VALUE || tok == WJB_ELEM) && v.type == jbvString)
					check(&c, "etl_redact_jsonb",
						  pnstrdup(v.val.string.val, v.val.string.len));
		}
	}
	fuzz_end();
	return 0;
}
