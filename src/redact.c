/*-------------------------------------------------------------------------
 *
 * redact.c
 *	  Keeps the secret values a run uses out of every text it stores,
 *	  raises or logs.
 *
 * Whatever reads a secret (a header or query-string value, an OAuth2
 * client secret, refresh or access token, a Basic password) registers it
 * here; error messages, body snippets and log lines pass through
 * etl_redact() before they leave the worker, so an API that echoes a
 * request's headers or URL back in an error body does not put the secret
 * into dw_etl_runs.error_message or the server log; an error caught in the
 * worker is redacted as it is taken (etl_catch_error).  A URL the run keeps
 * (a next link that echoes a query-string secret) passes through
 * etl_redact_url(), which puts {secret:NAME} back in place of the value of
 * secret NAME: the request fills it in again, only for the origins NAME
 * lists (secrets.c).  A leaf: it calls only url.c's encoder.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "etl_exec.h"

#define REDACTED "[secret redacted]"

/* a secret value in one of its forms, and what stands for it in a URL */
typedef struct RedactEntry
{
	char	   *text;
	char	   *in_url;			/* {secret:NAME}, or REDACTED */
} RedactEntry;

/* the secret values in use, in a context of their own (they live as long as the run) */
static List *secret_values = NIL;
static MemoryContext secrets_cxt = NULL;

/* A new run in this process: the last run's secrets are not its. */
void
etl_redact_forget(void)
{
	if (secrets_cxt)
		MemoryContextReset(secrets_cxt);
	secret_values = NIL;
}

static void
register_one(const char *value, const char *in_url)
{
	ListCell   *lc;
	MemoryContext old;
	RedactEntry *entry;
	int			pos;

	foreach(lc, secret_values)
	{
		entry = (RedactEntry *) lfirst(lc);
		if (strcmp(entry->text, value) == 0)
		{
			/* a name, where there was none: the URL form gets it */
			if (strcmp(in_url, REDACTED) != 0 && strcmp(entry->in_url, REDACTED) == 0)
				entry->in_url = MemoryContextStrdup(secrets_cxt, in_url);
			return;
		}
	}
	if (secrets_cxt == NULL)
		secrets_cxt = AllocSetContextCreate(TopMemoryContext, "etl_exec redaction",
											ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(secrets_cxt);
	entry = palloc(sizeof(RedactEntry));
	entry->text = pstrdup(value);
	entry->in_url = pstrdup(in_url);
	/* longer values first: one that contains another is replaced whole */
	pos = 0;
	while (pos < list_length(secret_values) &&
		   strlen(((RedactEntry *) list_nth(secret_values, pos))->text) >= strlen(value))
		pos++;
	secret_values = list_insert_nth(secret_values, pos, entry);
	MemoryContextSwitchTo(old);
}

/*
 * Remember a secret value, as given, as it looks URL-encoded (an API may
 * echo a form or a query string) and as it looks in a JSON string (an API
 * may echo the request's headers as JSON, escaping / or ").  in_url: what
 * stands for it in a URL the run keeps.
 */
static void
register_forms(const char *value, const char *in_url)
{
	StringInfoData json;

	if (value == NULL || value[0] == '\0')
		return;
	register_one(value, in_url);
	register_one(etl_url_encode(value), in_url);
	initStringInfo(&json);
	escape_json(&json, value);
	json.data[json.len - 1] = '\0';	/* without the quotes */
	register_one(json.data + 1, in_url);
}

void
etl_redact_register(const char *value)
{
	register_forms(value, REDACTED);
}

/*
 * The value of secret name ({secret:NAME} in a header or the URL): in a
 * URL the run keeps, {secret:NAME} stands for it.
 */
void
etl_redact_register_secret(const char *value, const char *name)
{
	register_forms(value, psprintf("{secret:%s}", name));
}

/* text with every registered value replaced by its stand-in; text itself if none */
static char *
replace_values(const char *text, bool in_url)
{
	ListCell   *lc;
	char	   *result = (char *) text;

	if (text == NULL)
		return NULL;
	foreach(lc, secret_values)
	{
		RedactEntry *entry = (RedactEntry *) lfirst(lc);
		size_t		len = strlen(entry->text);
		const char *hit = strstr(result, entry->text);
		StringInfoData buf;
		const char *from = result;

		if (hit == NULL)
			continue;
		initStringInfo(&buf);
		for (; hit; hit = strstr(from, entry->text))
		{
			appendBinaryStringInfo(&buf, from, hit - from);
			appendStringInfoString(&buf, in_url ? entry->in_url : REDACTED);
			from = hit + len;
		}
		appendStringInfoString(&buf, from);
		result = buf.data;
	}
	return result;
}

/* text with every registered secret value replaced; text itself if none */
char *
etl_redact(const char *text)
{
	return replace_values(text, false);
}

/*
 * A URL fit to keep (in the checkpoint, a dry-run report, a message): each
 * {secret:NAME} value back to the placeholder, any other secret redacted.
 */
char *
etl_redact_url(const char *url)
{
	return replace_values(url, true);
}

/*
 * A JSON value with every registered secret value redacted in its strings
 * (keys and values), the document otherwise as it was: a record as the
 * API sent it, kept with its reject.  jb itself when there is nothing to
 * redact.
 */
Jsonb *
etl_redact_jsonb(Jsonb *jb)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken token;
	JsonbParseState *state = NULL;
	JsonbValue *result = NULL;
	bool		scalar = JB_ROOT_IS_SCALAR(jb);

	if (secret_values == NIL)
		return jb;
	it = JsonbIteratorInit(&jb->root);
	while ((token = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		bool		has_value = token == WJB_KEY || token == WJB_VALUE || token == WJB_ELEM;

		if (has_value && v.type == jbvString)
		{
			char	   *text = etl_redact(pnstrdup(v.val.string.val, v.val.string.len));

			v.val.string.val = text;
			v.val.string.len = strlen(text);
		}
		result = pushJsonbValue(&state, token, has_value ? &v : NULL);
	}
	if (result->type == jbvArray)
		result->val.array.rawScalar = scalar;
	return JsonbValueToJsonb(result);
}

/* JSON text (a dry run's report), redacted as etl_redact_jsonb() does */
char *
etl_redact_json_text(const char *json)
{
	Jsonb	   *jb;

	if (secret_values == NIL || json == NULL)
		return unconstify(char *, json);
	jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
	jb = etl_redact_jsonb(jb);
	return JsonbToCString(NULL, &jb->root, VARSIZE(jb));
}

/* An error's texts, redacted in place (before it is stored or logged). */
void
etl_redact_error(ErrorData *edata)
{
	if (secret_values == NIL)
		return;
	edata->message = etl_redact(edata->message);
	edata->detail = etl_redact(edata->detail);
	edata->detail_log = etl_redact(edata->detail_log);
	edata->hint = etl_redact(edata->hint);
	edata->context = etl_redact(edata->context);
}

/* emit_log_hook of the worker: nothing it logs shows a secret */
static emit_log_hook_type previous_emit_log_hook = NULL;

static void
redact_log_line(ErrorData *edata)
{
	etl_redact_error(edata);
	if (previous_emit_log_hook)
		previous_emit_log_hook(edata);
}

void
etl_redact_log(void)
{
	previous_emit_log_hook = emit_log_hook;
	emit_log_hook = redact_log_line;
}

/*
 * In a PG_CATCH block: the error being handled, copied into cxt (which
 * becomes current) and redacted, and the error state cleared, ready for
 * the caller to abort or roll back what failed.
 */
ErrorData *
etl_catch_error(MemoryContext cxt)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	/* a secret echoed back by the API goes no further */
	etl_redact_error(edata);
	return edata;
}
