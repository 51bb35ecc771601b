/*-------------------------------------------------------------------------
 *
 * secrets.c
 *	  Request headers and URLs of a job, with secrets, OAuth2 tokens and
 *	  HTTP Basic credentials filled in: the authentication a run hands the
 *	  HTTP client.
 *
 * A header value may hold {secret:NAME} (the value of dw_etl_secrets NAME),
 * {oauth2:NAME} (an access token for the OAuth2 client that secret NAME
 * describes: oauth.c) or {basic:NAME} (the whole value: "Basic " and the
 * base64 of user:password, from secret NAME's {"user": ..., "password":
 * ...}).  The job's URL may hold {secret:NAME} in its query string
 * (?api_key={secret:NAME}).  Every secret is sent only to the origins it
 * lists (allowed_hosts: host or host:port, no port meaning the scheme's
 * default; an empty list means nowhere), and never over http when the job
 * itself speaks https.  For any other origin a header is left out whole,
 * and so is a query parameter that holds a secret, so a next link or a
 * redirect elsewhere never receives it; the job's own URL at an origin its
 * secret does not list is refused before the first request.
 *
 * A query-string secret is filled in per request, as the request goes out
 * (the EtlHttpAuth url callback): every URL the run keeps -- the request
 * URLs, the checkpoint's next link, dry-run reports, messages -- holds
 * {secret:NAME}, never the value, and a next link that echoes the value
 * back is turned into {secret:NAME} again as it is read (redact.c).
 *
 * Secrets are read as the extension owner (no ordinary role can read
 * dw_etl_secrets), never written to run_context, and every value in use is
 * registered for redaction from error messages and the log (redact.c)
 * as it is read, before any request or URL holds it.
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
	char	   *hosts;			/* allowed_hosts as text, for messages */
	char	   *basic;			/* {basic:NAME}: "Basic <base64>", once made */
	bool		left_out;		/* the log said it was left out of a request */
} SecretEntry;

/* what the HTTP client's callbacks get: the job, and its URL's secrets */
typedef struct JobAuth
{
	const EtlJob *job;
	List	   *url_secrets;	/* names of the {secret:NAME} in the job's URL */
} JobAuth;

#define BASIC_SHAPE "{\"user\": \"...\", \"password\": \"...\"} (a user without a colon)"

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

/*
 * Secret name, read once a run (and registered for redaction as it is
 * read); where says where the job uses it, for the error when it does not
 * exist.
 */
static SecretEntry *
lookup_secret(const EtlJob *job, const char *name, const char *where)
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
	sql = psprintf("SELECT value, array_to_string(allowed_hosts, ', ') "
				   "FROM %s WHERE name = $1", etl_qualified("dw_etl_secrets"));
	if (SPI_execute_with_args(sql, 1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "etl_exec: could not read dw_etl_secrets");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("secret \"%s\" used in %s of job %d does not exist",
						name, where, job->job_id),
				 errhint("A superuser adds it with INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES (%s, '...', ARRAY['api.example.com']).",
						 quote_literal_cstr(name))));
	entry = MemoryContextAllocZero(top, sizeof(SecretEntry));
	entry->name = MemoryContextStrdup(top, name);
	entry->value = MemoryContextStrdup(top, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	/* before anything can show it: in a URL the run keeps, {secret:NAME} */
	etl_redact_register_secret(entry->value, entry->name);
	hosts = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	entry->hosts = MemoryContextStrdup(top, hosts ? hosts : "");
	if (hosts)
	{
		char	   *save = NULL;
		MemoryContext old = MemoryContextSwitchTo(top);

		hosts = pstrdup(hosts);
		for (char *tok = strtok_r(hosts, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save))
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
 * Whether a secret may go in a request to url: to an origin it lists, and
 * not in clear text when the job itself speaks https.
 */
static bool
may_send(const EtlJob *job, SecretEntry *entry, const char *url)
{
	return secret_allowed_for(entry, url) &&
		!(pg_strncasecmp(url, "http://", 7) == 0 &&
		  pg_strncasecmp(job->url_template, "https://", 8) == 0);
}

/* A URL's origin as allowed_hosts would list it: host, and port unless the default. */
static char *
origin_of(const char *url)
{
	int			port = etl_url_port(url);
	int			default_port = pg_strncasecmp(url, "https://", 8) == 0 ? 443 : 80;

	return port == default_port ? etl_url_host(url) : psprintf("%s:%d", etl_url_host(url), port);
}

/* The base64 encoding of len bytes of data (RFC 4648, with padding). */
static char *
base64_encode(const char *data, size_t len)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *in = (const unsigned char *) data;
	char	   *out = palloc((len + 2) / 3 * 4 + 1);
	char	   *o = out;

	for (size_t i = 0; i < len; i += 3)
	{
		uint32		n = (uint32) in[i] << 16;

		if (i + 1 < len)
			n |= (uint32) in[i + 1] << 8;
		if (i + 2 < len)
			n |= in[i + 2];
		*o++ = alphabet[(n >> 18) & 63];
		*o++ = alphabet[(n >> 12) & 63];
		*o++ = i + 1 < len ? alphabet[(n >> 6) & 63] : '=';
		*o++ = i + 2 < len ? alphabet[n & 63] : '=';
	}
	*o = '\0';
	return out;
}

/*
 * {basic:NAME}: "Basic " and the base64 of user:password, from secret
 * NAME's JSON; the password, the pair and its base64 form are redacted.
 */
static const char *
basic_credentials(SecretEntry *entry)
{
	Jsonb	   *conf;
	char	   *user;
	char	   *password;
	char	   *pair;
	char	   *encoded;

	if (entry->basic)
		return entry->basic;
	conf = etl_secret_json(entry->name, entry->value, BASIC_SHAPE);
	user = etl_jsonb_str(conf, "user");
	password = etl_jsonb_str(conf, "password");
	etl_redact_register(password);
	if (user == NULL || password == NULL || strchr(user, ':') != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secret \"%s\" is not a user and password for HTTP Basic", entry->name),
				 errhint("Its value must be %s.", BASIC_SHAPE)));
	pair = psprintf("%s:%s", user, password);
	etl_redact_register(pair);
	encoded = base64_encode(pair, strlen(pair));
	etl_redact_register(encoded);
	entry->basic = MemoryContextStrdup(secrets_memory(), psprintf("Basic %s", encoded));
	return entry->basic;
}

/*
 * An OAuth2 client's token_url gets its client secret or refresh token:
 * it must be at an origin the secret lists, and not in clear text for an
 * https job, as for the secret itself.
 */
static void
check_token_url(const EtlJob *job, SecretEntry *entry)
{
	Jsonb	   *conf = etl_secret_json(entry->name, entry->value, "a JSON object with a token_url");
	char	   *token_url = etl_jsonb_str(conf, "token_url");

	if (token_url == NULL || may_send(job, entry, token_url))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("refused to send the OAuth2 client credentials of secret \"%s\" to %s",
					entry->name, origin_of(token_url)),
			 secret_allowed_for(entry, token_url) ?
			 errdetail("Its token_url is plain http, and job %d speaks https.", job->job_id) :
			 entry->hosts[0] ?
			 errdetail("Its token_url is not at an origin the secret lists; it lists only: %s.", entry->hosts) :
			 errdetail("Its token_url is not at an origin the secret lists; it lists none."),
			 errhint("A superuser lists the token endpoint's origin: UPDATE dw_etl_secrets SET allowed_hosts = allowed_hosts || %s::text WHERE name = %s; (and uses https for it).",
					 quote_literal_cstr(origin_of(token_url)), quote_literal_cstr(entry->name))));
}

/*
 * The header line "key: value" for a request to url, with its
 * {secret:NAME}, {oauth2:NAME} and {basic:NAME} references filled in.
 * *send is false when the header must not go to url (a secret not bound
 * to its origin, or clear text for an https job); the line then stops at
 * that reference.
 */
static char *
render_header(const EtlJob *job, const char *key, const char *value, const char *url,
			  bool *send)
{
	StringInfoData line;
	const char *p = value;
	char	   *where = psprintf("header \"%s\"", key);

	*send = true;
	initStringInfo(&line);
	appendStringInfo(&line, "%s: ", key);
	while (*p)
	{
		const char *close;
		bool		is_secret = strncmp(p, "{secret:", 8) == 0;
		bool		is_oauth = strncmp(p, "{oauth2:", 8) == 0;
		bool		is_basic = strncmp(p, "{basic:", 7) == 0;

		if ((is_secret || is_oauth || is_basic) && (close = strchr(p, '}')) != NULL)
		{
			int			prefix = is_basic ? 7 : 8;
			char	   *name = pnstrdup(p + prefix, close - p - prefix);
			SecretEntry *entry = lookup_secret(job, name, where);

			if (!may_send(job, entry, url))
			{
				*send = false;
				break;
			}
			if (is_secret)
				appendStringInfoString(&line, entry->value);
			else if (is_oauth)
			{
				check_token_url(job, entry);
				appendStringInfoString(&line, etl_oauth_token(entry->name, entry->value));
			}
			else
				appendStringInfoString(&line, basic_credentials(entry));
			p = close + 1;
		}
		else
			appendStringInfoChar(&line, *p++);
	}
	return line.data;
}

/*
 * The job's headers for a request to url, as "Name: value" strings.
 * (An EtlHttpAuth headers callback: arg is the JobAuth.)
 */
static List *
request_headers(void *arg, const char *url)
{
	const EtlJob *job = ((const JobAuth *) arg)->job;
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
 * Whether a query parameter ("name=value") holds needle in its value: a
 * short needle only as the whole value (a secret "42" is not in "page=142").
 */
static bool
param_holds(const char *pair, size_t len, const char *needle)
{
	const char *eq = memchr(pair, '=', len);
	char	   *value = eq ? pnstrdup(eq + 1, len - (eq + 1 - pair)) : pnstrdup(pair, len);

	return strlen(needle) >= 8 ? strstr(value, needle) != NULL : strcmp(value, needle) == 0;
}

/*
 * url without the query parameters that hold needle (a secret's value, or
 * its {secret:NAME}), for an origin the secret may not go to (url itself
 * when none does).  A
 * placeholder anywhere else -- in a link's path -- cannot be left out: the
 * request is refused.
 */
static char *
without_secret(const char *url, const char *needle, bool placeholder,
			   const SecretEntry *entry)
{
	const char *query = strchr(url, '?');
	const char *end;
	StringInfoData buf;
	int			kept = 0;
	int			dropped = 0;

	if (placeholder && (query == NULL || strstr(url, needle) < query))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("refused to send secret \"%s\" to %s", entry->name, origin_of(url)),
				 errdetail("A link or redirect from the API holds it outside the query string, and the secret lists only: %s.",
						   entry->hosts[0] ? entry->hosts : "(nothing)")));
	if (query == NULL)
		return (char *) url;
	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, url, query - url);
	end = query + strcspn(query, "#");
	for (const char *p = query + 1; p < end;)
	{
		size_t		len = strcspn(p, "&#");

		if (len > 0 && param_holds(p, len, needle))
			dropped++;
		else if (len > 0)
		{
			appendStringInfoChar(&buf, kept++ ? '&' : '?');
			appendBinaryStringInfo(&buf, p, len);
		}
		p += len;
		if (*p != '&')
			break;
		p++;
	}
	/* (a fragment is never sent) */
	return dropped ? buf.data : (char *) url;
}

/* Say once a run that a secret's query parameter was left out of a request. */
static void
note_left_out(SecretEntry *entry, const char *url)
{
	if (entry->left_out)
		return;
	entry->left_out = true;
	ereport(LOG,
			(errmsg("etl_exec: the query parameter holding secret \"%s\" is left out of requests to %s: the secret may not go there",
					entry->name, origin_of(url))));
}

/*
 * The URL a request to url goes out with (an EtlHttpAuth url callback: arg
 * is the JobAuth): the {secret:NAME} of the job's URL filled in for the
 * origins NAME lists, and left out -- the whole query parameter -- for any
 * other; a secret's value that a link or redirect from the API echoes is
 * left out the same way.
 */
static char *
request_url(void *arg, const char *url)
{
	const JobAuth *ja = (const JobAuth *) arg;
	char	   *result = pstrdup(url);
	ListCell   *lc;

	foreach(lc, ja->url_secrets)
	{
		const char *name = (const char *) lfirst(lc);
		SecretEntry *entry = lookup_secret(ja->job, name, "the URL");
		char	   *placeholder = psprintf("{secret:%s}", name);
		char	   *hit;

		if (strstr(result, placeholder) == NULL)
			continue;
		if (!may_send(ja->job, entry, result))
		{
			result = without_secret(result, placeholder, true, entry);
			note_left_out(entry, url);
			continue;
		}
		while ((hit = strstr(result, placeholder)) != NULL)
		{
			StringInfoData buf;

			initStringInfo(&buf);
			appendBinaryStringInfo(&buf, result, hit - result);
			appendStringInfoString(&buf, etl_url_encode(entry->value));
			appendStringInfoString(&buf, hit + strlen(placeholder));
			result = buf.data;
		}
	}
	/* its value, in the query of a link or a redirect that echoes it */
	foreach(lc, ja->url_secrets)
	{
		SecretEntry *entry = lookup_secret(ja->job, (const char *) lfirst(lc), "the URL");
		const char *forms[2] = {entry->value, etl_url_encode(entry->value)};

		if (entry->value[0] == '\0' || may_send(ja->job, entry, result))
			continue;
		for (int i = 0; i < 2; i++)
		{
			char	   *without = without_secret(result, forms[i], false, entry);

			if (without != result)
				note_left_out(entry, url);
			result = without;
		}
	}
	return result;
}

static bool
list_member_name(List *names, const char *name)
{
	ListCell   *lc;

	foreach(lc, names)
		if (strcmp((const char *) lfirst(lc), name) == 0)
			return true;
	return false;
}

/*
 * The secrets of the job's URL: each must exist and list the URL's origin
 * (else the run fails before its first request), and is registered for
 * redaction now.
 */
static List *
url_secrets(const EtlJob *job)
{
	List	   *names = NIL;
	const char *p = job->url;

	while ((p = strstr(p, "{secret:")) != NULL)
	{
		const char *close = strchr(p, '}');
		char	   *name;
		SecretEntry *entry;

		if (close == NULL)
			break;
		name = pnstrdup(p + 8, close - p - 8);
		entry = lookup_secret(job, name, "the URL");
		if (!may_send(job, entry, job->url))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("secret \"%s\" in the URL of job %d may not be sent to %s",
							name, job->job_id, origin_of(job->url)),
					 entry->hosts[0] ?
					 errdetail("The secret lists only: %s.", entry->hosts) :
					 errdetail("The secret lists no origin: it is sent nowhere."),
					 errhint("A superuser adds the origin: UPDATE dw_etl_secrets SET allowed_hosts = allowed_hosts || %s::text WHERE name = %s;",
							 quote_literal_cstr(origin_of(job->url)), quote_literal_cstr(name))));
		if (!list_member_name(names, name))
			names = lappend(names, name);
		p = close + 1;
	}
	return names;
}

/*
 * How the HTTP client authenticates the job's requests: the job's headers
 * and URL for each hop, and OAuth2 tokens renewed once after a 401.  The
 * secrets of the job's URL are checked (and registered) now.
 */
void
etl_job_http_auth(EtlJob *job, EtlHttpAuth *auth)
{
	JobAuth    *ja = palloc0(sizeof(JobAuth));

	ja->job = job;
	ja->url_secrets = url_secrets(job);
	auth->headers = request_headers;
	auth->url = request_url;
	auth->renew = etl_oauth_renew;
	auth->generation = etl_oauth_generation;
	auth->arg = ja;
}
