/*-------------------------------------------------------------------------
 *
 * redact.c
 *	  Keeps the secret values a run uses out of every text it stores,
 *	  raises or logs.
 *
 * Whatever reads a secret (a header value, an OAuth2 client secret or
 * access token) registers it here; error messages, body snippets and log
 * lines pass through etl_redact() before they leave the worker, so an API
 * that echoes a request's headers back in an error body does not put the
 * secret into dw_etl_runs.error_message or the server log; an error caught
 * in the worker is redacted as it is taken (etl_catch_error).  A leaf: it
 * calls only url.c's encoder.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/json.h"
#include "utils/memutils.h"

#include "etl_exec.h"

#define REDACTED "[secret redacted]"

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
register_one(const char *value)
{
	ListCell   *lc;
	MemoryContext old;

	foreach(lc, secret_values)
		if (strcmp((char *) lfirst(lc), value) == 0)
			return;
	if (secrets_cxt == NULL)
		secrets_cxt = AllocSetContextCreate(TopMemoryContext, "etl_exec redaction",
											ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(secrets_cxt);
	secret_values = lappend(secret_values, pstrdup(value));
	MemoryContextSwitchTo(old);
}

/*
 * Remember a secret value, as given, as it looks URL-encoded (an API may
 * echo a form or a query string) and as it looks in a JSON string (an API
 * may echo the request's headers as JSON, escaping / or ").
 */
void
etl_redact_register(const char *value)
{
	StringInfoData json;

	if (value == NULL || value[0] == '\0')
		return;
	register_one(value);
	register_one(etl_url_encode(value));
	initStringInfo(&json);
	escape_json(&json, value);
	json.data[json.len - 1] = '\0';	/* without the quotes */
	register_one(json.data + 1);
}

/* text with every registered secret value replaced; text itself if none */
char *
etl_redact(const char *text)
{
	ListCell   *lc;
	char	   *result = (char *) text;

	if (text == NULL)
		return NULL;
	foreach(lc, secret_values)
	{
		const char *secret = (const char *) lfirst(lc);
		size_t		len = strlen(secret);
		const char *hit = strstr(result, secret);
		StringInfoData buf;
		const char *from = result;

		if (hit == NULL)
			continue;
		initStringInfo(&buf);
		for (; hit; hit = strstr(from, secret))
		{
			appendBinaryStringInfo(&buf, from, hit - from);
			appendStringInfoString(&buf, REDACTED);
			from = hit + len;
		}
		appendStringInfoString(&buf, from);
		result = buf.data;
	}
	return result;
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
