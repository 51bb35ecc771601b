/*-------------------------------------------------------------------------
 *
 * secrets.c
 *	  Request headers of a job, with secrets and OAuth2 tokens filled in.
 *
 * A header value may hold {secret:NAME} (the value of dw_etl_secrets NAME)
 * or {oauth2:NAME} (an access token fetched with the OAuth2 client
 * credentials grant; dw_etl_secrets NAME holds a JSON object with
 * token_url, client_id, client_secret and optionally scope).  A header is
 * sent only to the origins its secret lists (allowed_hosts: host or
 * host:port, no port meaning the scheme's default; an empty list means
 * nowhere): for any other origin the whole header is left out, so a next
 * link or a redirect elsewhere never receives it.
 * Tokens are cached, fetched anew shortly before they expire, and once
 * more when the API answers 401.  Secrets are read as the extension
 * owner (no ordinary role can read dw_etl_secrets), never written to
 * run_context, and every value in use is redacted from error messages and
 * the log (redact.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "etl_exec.h"

/* an origin a secret may go to: host, and port (0: the scheme's default) */
typedef struct SecretOrigin
{
	char	   *host;
	int			port;
} SecretOrigin;

typedef struct SecretEntry
{
	char	   *name;
	char	   *value;
	List	   *origins;		/* of SecretOrigin; empty or NULL list: nowhere */
} SecretEntry;

typedef struct OAuthToken
{
	char	   *name;
	char	   *token;
	TimestampTz refresh_at;
} OAuthToken;

static List *secret_cache = NIL;
static List *token_cache = NIL;

/* "host", "host:port", "[v6]" or "[v6]:port" (validated when written) */
static SecretOrigin *
parse_origin(const char *entry)
{
	SecretOrigin *o = palloc0(sizeof(SecretOrigin));
	const char *colon;

	if (entry[0] == '[')
	{
		const char *close = strchr(entry, ']');

		o->host = pnstrdup(entry, close ? (Size) (close - entry + 1) : strlen(entry));
		colon = close ? strchr(close, ':') : NULL;
	}
	else
	{
		colon = strchr(entry, ':');
		o->host = colon ? pnstrdup(entry, colon - entry) : pstrdup(entry);
	}
	if (colon)
		o->port = atoi(colon + 1);
	return o;
}

static SecretEntry *
lookup_secret(const EtlJob *job, const char *name, const char *header)
{
	ListCell   *lc;
	SecretEntry *entry;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	char	   *sql;
	MemoryContext top = TopMemoryContext;
	char	   *hosts;

	foreach(lc, secret_cache)
	{
		entry = (SecretEntry *) lfirst(lc);
		if (strcmp(entry->name, name) == 0)
			return entry;
	}

	SPI_connect();
	values[0] = CStringGetTextDatum(name);
	sql = psprintf("SELECT value, array_to_string(allowed_hosts, ',') "
				   "FROM %s WHERE name = $1", etl_qualified("dw_etl_secrets"));
	if (SPI_execute_with_args(sql, 1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "etl_exec: could not read dw_etl_secrets");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("secret \"%s\" used in header \"%s\" of job %d does not exist",
						name, header, job->job_id),
				 errhint("A superuser adds it with INSERT INTO dw_etl_secrets (name, value) VALUES ('%s', '...').",
						 name)));
	entry = MemoryContextAllocZero(top, sizeof(SecretEntry));
	entry->name = MemoryContextStrdup(top, name);
	entry->value = MemoryContextStrdup(top, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	etl_redact_register(entry->value);
	hosts = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (hosts)
	{
		char	   *save = NULL;
		MemoryContext old = MemoryContextSwitchTo(top);

		hosts = pstrdup(hosts);
		for (char *tok = strtok_r(hosts, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
			entry->origins = lappend(entry->origins, parse_origin(tok));
		MemoryContextSwitchTo(old);
	}
	SPI_finish();

	{
		MemoryContext old = MemoryContextSwitchTo(top);

		secret_cache = lappend(secret_cache, entry);
		MemoryContextSwitchTo(old);
	}
	return entry;
}

/*
 * Whether a secret may go to url: its host and port must be an origin the
 * secret lists (an entry without a port means the scheme's default one).
 */
static bool
secret_allowed_for(SecretEntry *entry, const char *url)
{
	ListCell   *lc;
	char	   *host;
	int			port;
	int			default_port;

	if (entry->origins == NIL)
		return false;
	host = etl_url_host(url);
	port = etl_url_port(url);
	default_port = pg_strncasecmp(url, "https://", 8) == 0 ? 443 : 80;
	foreach(lc, entry->origins)
	{
		SecretOrigin *o = (SecretOrigin *) lfirst(lc);

		if (pg_strcasecmp(o->host, host) == 0 && (o->port ? o->port : default_port) == port)
			return true;
	}
	return false;
}

static char *
json_string_member(Jsonb *jb, const char *key)
{
	JsonbValue *v = getKeyJsonValueFromContainer(&jb->root, key, strlen(key), NULL);

	if (v == NULL || v->type != jbvString)
		return NULL;
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* An access token for the OAuth2 client described by secret NAME. */
static const char *
oauth_token(const EtlJob *job, SecretEntry *secret)
{
	ListCell   *lc;
	OAuthToken *tok;
	Jsonb	   *conf;
	Jsonb	   *answer;
	char	   *token_url;
	char	   *client_id;
	char	   *client_secret;
	char	   *scope;
	char	   *what = psprintf("OAuth2 token for secret \"%s\"", secret->name);
	StringInfoData form;
	JsonbValue *expires;
	int64		ttl_ms = 3600 * 1000;
	char	   *access_token;
	MemoryContext old;

	foreach(lc, token_cache)
	{
		tok = (OAuthToken *) lfirst(lc);
		if (strcmp(tok->name, secret->name) == 0 && GetCurrentTimestamp() < tok->refresh_at)
			return tok->token;
	}

	conf = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(secret->value)));
	token_url = JB_ROOT_IS_OBJECT(conf) ? json_string_member(conf, "token_url") : NULL;
	client_id = token_url ? json_string_member(conf, "client_id") : NULL;
	client_secret = token_url ? json_string_member(conf, "client_secret") : NULL;
	scope = token_url ? json_string_member(conf, "scope") : NULL;
	etl_redact_register(client_secret);
	if (token_url == NULL || client_id == NULL || client_secret == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secret \"%s\" is not an OAuth2 client description", secret->name),
				 errhint("Its value must be a JSON object with token_url, client_id and client_secret (and optionally scope).")));

	initStringInfo(&form);
	appendStringInfo(&form, "grant_type=client_credentials&client_id=%s&client_secret=%s",
					 etl_url_encode(client_id), etl_url_encode(client_secret));
	if (scope)
		appendStringInfo(&form, "&scope=%s", etl_url_encode(scope));
	answer = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
												CStringGetDatum(etl_http_post_form(token_url, form.data, what))));
	access_token = JB_ROOT_IS_OBJECT(answer) ? json_string_member(answer, "access_token") : NULL;
	etl_redact_register(access_token);
	if (access_token == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("%s: the token endpoint's answer has no access_token", what)));
	expires = JB_ROOT_IS_OBJECT(answer) ?
		getKeyJsonValueFromContainer(&answer->root, "expires_in", strlen("expires_in"), NULL) : NULL;
	if (expires && expires->type == jbvNumeric)
		ttl_ms = (int64) (DatumGetFloat8(DirectFunctionCall1(numeric_float8,
															 NumericGetDatum(expires->val.numeric))) * 1000);

	old = MemoryContextSwitchTo(TopMemoryContext);
	tok = palloc0(sizeof(OAuthToken));
	tok->name = pstrdup(secret->name);
	tok->token = pstrdup(access_token);
	/* renew before it expires: a tenth of its life early, at most a minute */
	tok->refresh_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												  ttl_ms - Min(ttl_ms / 10, (int64) 60000));
	foreach(lc, token_cache)
	{
		OAuthToken *t = (OAuthToken *) lfirst(lc);

		if (strcmp(t->name, secret->name) == 0)
		{
			token_cache = foreach_delete_current(token_cache, lc);
			break;
		}
	}
	token_cache = lappend(token_cache, tok);
	MemoryContextSwitchTo(old);
	return tok->token;
}

/* After a 401: drop cached tokens so the next request fetches new ones. */
bool
etl_oauth_forget_tokens(void)
{
	if (token_cache == NIL)
		return false;
	list_free(token_cache);
	token_cache = NIL;
	return true;
}

/*
 * The job's headers for a request to url, as "Name: value" strings.
 * (An EtlHeaderBuilder: arg is the EtlJob.)
 */
List *
etl_request_headers(void *arg, const char *url)
{
	const EtlJob *job = (const EtlJob *) arg;
	List	   *result = NIL;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;
	if (job->headers == NULL || !JB_ROOT_IS_OBJECT(job->headers))
		return NIL;
	it = JsonbIteratorInit(&job->headers->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		StringInfoData line;
		const char *p;
		bool		send = true;

		if (tok == WJB_KEY)
		{
			key = pnstrdup(v.val.string.val, v.val.string.len);
			continue;
		}
		if (tok != WJB_VALUE || v.type != jbvString)
			continue;
		initStringInfo(&line);
		appendStringInfo(&line, "%s: ", key);
		p = pnstrdup(v.val.string.val, v.val.string.len);
		while (*p)
		{
			const char *close;
			bool		is_secret = strncmp(p, "{secret:", 8) == 0;
			bool		is_oauth = strncmp(p, "{oauth2:", 8) == 0;

			if ((is_secret || is_oauth) && (close = strchr(p, '}')) != NULL)
			{
				char	   *name = pnstrdup(p + 8, close - p - 8);
				SecretEntry *entry = lookup_secret(job, name, key);

				/* nor in clear text when the job itself speaks https */
				if (!secret_allowed_for(entry, url) ||
					(pg_strncasecmp(url, "http://", 7) == 0 &&
					 pg_strncasecmp(job->url_template, "https://", 8) == 0))
				{
					send = false;
					break;
				}
				appendStringInfoString(&line, is_secret ? entry->value : oauth_token(job, entry));
				p = close + 1;
			}
			else
				appendStringInfoChar(&line, *p++);
		}
		if (!etl_header_value_is_safe(line.data))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("header \"%s\" of job %d would hold a line break or another control character", key, job->job_id),
					 errhint("Check the secrets it uses: a header value must be one line of printable text.")));
		if (send)
			result = lappend(result, line.data);
	}
	return result;
}
