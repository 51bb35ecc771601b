/*-------------------------------------------------------------------------
 *
 * secrets.c
 *	  Request headers of a job, with secrets and OAuth2 tokens filled in:
 *	  the authentication a run hands the HTTP client.
 *
 * A header value may hold {secret:NAME} (the value of dw_etl_secrets NAME)
 * or {oauth2:NAME} (an access token for the OAuth2 client that
 * dw_etl_secrets NAME describes: oauth.c).  A header is
 * sent only to the origins its secret lists (allowed_hosts: host or
 * host:port, no port meaning the scheme's default; an empty list means
 * nowhere): for any other origin the whole header is left out, so a next
 * link or a redirect elsewhere never receives it.
 * Secrets are read as the extension
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

static List *secret_cache = NIL;
static MemoryContext secrets_cxt = NULL;	/* the cache's memory */

static MemoryContext
secrets_memory(void)
{
	if (secrets_cxt == NULL)
		secrets_cxt = AllocSetContextCreate(TopMemoryContext, "etl_exec secrets",
											ALLOCSET_SMALL_SIZES);
	return secrets_cxt;
}

/* A new run in this process: secrets are read again (they may have changed). */
void
etl_secrets_forget(void)
{
	if (secrets_cxt)
		MemoryContextReset(secrets_cxt);
	secret_cache = NIL;
	etl_oauth_forget_all();
}

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
	MemoryContext top = secrets_memory();
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

/*
 * The header line "key: value" for a request to url, with its
 * {secret:NAME} and {oauth2:NAME} references filled in.  *send is false
 * when the header must not go to url (a secret not bound to its origin,
 * or clear text for an https job); the line then stops at that reference.
 */
static char *
render_header(const EtlJob *job, const char *key, const char *value, const char *url,
			  bool *send)
{
	StringInfoData line;
	const char *p = value;

	*send = true;
	initStringInfo(&line);
	appendStringInfo(&line, "%s: ", key);
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
				*send = false;
				break;
			}
			appendStringInfoString(&line, is_secret ? entry->value : etl_oauth_token(entry->name, entry->value));
			p = close + 1;
		}
		else
			appendStringInfoChar(&line, *p++);
	}
	return line.data;
}

/*
 * The job's headers for a request to url, as "Name: value" strings.
 * (An EtlHttpAuth headers callback: arg is the EtlJob.)
 */
static List *
request_headers(void *arg, const char *url)
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
		char	   *line;
		bool		send;

		if (tok == WJB_KEY)
		{
			key = pnstrdup(v.val.string.val, v.val.string.len);
			continue;
		}
		if (tok != WJB_VALUE || v.type != jbvString)
			continue;
		line = render_header(job, key, pnstrdup(v.val.string.val, v.val.string.len), url, &send);
		if (!etl_header_value_is_safe(line))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("header \"%s\" of job %d would hold a line break or another control character", key, job->job_id),
					 errhint("Check the secrets it uses: a header value must be one line of printable text.")));
		if (send)
			result = lappend(result, line);
	}
	return result;
}

/*
 * How the HTTP client authenticates the job's requests: the job's headers
 * for each hop, and OAuth2 tokens renewed once after a 401.
 */
void
etl_job_http_auth(EtlJob *job, EtlHttpAuth *auth)
{
	auth->headers = request_headers;
	auth->renew = etl_oauth_renew;
	auth->generation = etl_oauth_generation;
	auth->arg = job;
}
