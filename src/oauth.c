/*-------------------------------------------------------------------------
 *
 * oauth.c
 *	  OAuth2 access tokens for {oauth2:NAME} header values (client
 *	  credentials or refresh-token grant), the decision to renew them after
 *	  a 401, and rotated refresh tokens saved for the next run.
 *
 * Secret NAME holds a JSON object with token_url, client_id, and either
 * client_secret (grant_type client_credentials, the default) or
 * refresh_token (grant_type refresh_token; client_secret optional), and
 * optionally scope.  Tokens are cached for the life of the run, fetched
 * anew shortly before they expire, and once more when the API answers 401
 * (etl_oauth_renew, the HTTP client's "renew after 401" callback).
 *
 * A token endpoint that rotates refresh tokens answers a refresh with a
 * new one and forgets the old: the run goes on with the new one, and
 * writes it into the secret at each of its commits (etl_oauth_save_rotated,
 * from the worker), so that the next run starts from it.  The write is
 * conditional: only while the secret still holds a value this run read or
 * wrote, so an operator's new value is never overwritten.
 *
 * Client secrets, refresh tokens and access tokens are registered for
 * redaction (redact.c) as soon as they are read or received.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "etl_exec.h"

typedef struct OAuthToken
{
	char	   *name;
	char	   *token;
	TimestampTz refresh_at;
} OAuthToken;

static uint64 tokens_generation = 0;	/* bumped whenever the cache changes */

/* a secret whose refresh token the token endpoint rotated during the run */
typedef struct OAuthRotation
{
	char	   *name;
	char	   *refresh_token;	/* the newest */
	List	   *values;			/* texts of the secret this run read or wrote */
	bool		warned;			/* the secret was changed by someone else */
} OAuthRotation;

static List *token_cache = NIL;
static List *rotations = NIL;

static MemoryContext tokens_cxt = NULL;	/* the caches' memory */

void
etl_oauth_forget_all(void)
{
	if (tokens_cxt)
		MemoryContextReset(tokens_cxt);
	token_cache = NIL;
	rotations = NIL;
}

static MemoryContext
tokens_memory(void)
{
	if (tokens_cxt == NULL)
		tokens_cxt = AllocSetContextCreate(TopMemoryContext, "etl_exec OAuth2 tokens",
										   ALLOCSET_SMALL_SIZES);
	return tokens_cxt;
}

/*
 * The value of secret name as a JSON object, or an error that says which
 * shape it should have -- never the parser's, which would quote the value.
 */
Jsonb *
etl_secret_json(const char *name, const char *value, const char *shape)
{
	MemoryContext cxt = CurrentMemoryContext;
	Jsonb	   *volatile result = NULL;

	PG_TRY();
	{
		result = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(value)));
	}
	PG_CATCH();
	{
		/* raised again below as an error of ours: nothing else runs between */
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		result = NULL;
	}
	PG_END_TRY();
	if (result == NULL || !JB_ROOT_IS_OBJECT(result))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secret \"%s\" is not a JSON object", name),
				 errhint("Its value must be %s.", shape)));
	return result;
}

/* a cached token for secret name that is not due for renewal, or NULL */
static const char *
cached_token(const char *name)
{
	ListCell   *lc;

	foreach(lc, token_cache)
	{
		OAuthToken *tok = (OAuthToken *) lfirst(lc);

		if (strcmp(tok->name, name) == 0 && GetCurrentTimestamp() < tok->refresh_at)
			return tok->token;
	}
	return NULL;
}

/* Keep a token for ttl_ms (renewed early), in place of name's old one. */
static const char *
cache_token(const char *name, const char *token, int64 ttl_ms)
{
	MemoryContext old;
	OAuthToken *tok;
	ListCell   *lc;

	old = MemoryContextSwitchTo(tokens_memory());
	tok = palloc0(sizeof(OAuthToken));

	tok->name = pstrdup(name);
	tok->token = pstrdup(token);
	/* renew before it expires: a tenth of its life early, at most a minute */
	tok->refresh_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												  ttl_ms - Min(ttl_ms / 10, (int64) 60000));
	foreach(lc, token_cache)
	{
		OAuthToken *t = (OAuthToken *) lfirst(lc);

		if (strcmp(t->name, name) == 0)
		{
			token_cache = foreach_delete_current(token_cache, lc);
			break;
		}
	}
	token_cache = lappend(token_cache, tok);
	tokens_generation++;
	MemoryContextSwitchTo(old);
	return tok->token;
}

/* the rotation of secret name's refresh token in this run, or NULL */
static OAuthRotation *
find_rotation(const char *name)
{
	ListCell   *lc;

	foreach(lc, rotations)
	{
		OAuthRotation *rot = (OAuthRotation *) lfirst(lc);

		if (strcmp(rot->name, name) == 0)
			return rot;
	}
	return NULL;
}

/* The token endpoint gave secret name a new refresh token: use it from now on. */
static void
note_rotation(const char *name, const char *client_json, const char *refresh_token)
{
	OAuthRotation *rot = find_rotation(name);
	MemoryContext old = MemoryContextSwitchTo(tokens_memory());

	if (rot == NULL)
	{
		rot = palloc0(sizeof(OAuthRotation));
		rot->name = pstrdup(name);
		rot->values = list_make1(pstrdup(client_json));
		rotations = lappend(rotations, rot);
	}
	rot->refresh_token = pstrdup(refresh_token);
	MemoryContextSwitchTo(old);
}

#define OAUTH_SHAPE "{\"token_url\": ..., \"client_id\": ..., \"client_secret\": ...} " \
	"or {\"token_url\": ..., \"grant_type\": \"refresh_token\", \"refresh_token\": ..., \"client_id\": ...}"

/*
 * The token endpoint's request form for the OAuth2 client secret name
 * describes (client_json); its token_url in *token_url, and whether it is
 * a refresh-token grant in *refresh.
 */
static char *
token_request_form(const char *name, const char *client_json, char **token_url, bool *refresh)
{
	Jsonb	   *conf = etl_secret_json(name, client_json, "a JSON object " OAUTH_SHAPE);
	char	   *grant_type = etl_jsonb_str(conf, "grant_type");
	char	   *client_id = etl_jsonb_str(conf, "client_id");
	char	   *client_secret = etl_jsonb_str(conf, "client_secret");
	char	   *scope = etl_jsonb_str(conf, "scope");
	char	   *refresh_token = etl_jsonb_str(conf, "refresh_token");
	OAuthRotation *rot = find_rotation(name);
	StringInfoData form;

	etl_redact_register(client_secret);
	etl_redact_register(refresh_token);
	*token_url = etl_jsonb_str(conf, "token_url");
	*refresh = grant_type && strcmp(grant_type, "refresh_token") == 0;
	if (grant_type && !*refresh && strcmp(grant_type, "client_credentials") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secret \"%s\" asks for OAuth2 grant_type \"%s\"", name, grant_type),
				 errhint("etl_exec supports client_credentials (the default) and refresh_token.")));
	if (*token_url == NULL || client_id == NULL ||
		(*refresh ? refresh_token == NULL : client_secret == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secret \"%s\" is not an OAuth2 client description", name),
				 errhint("Its value must be %s (and optionally scope).", OAUTH_SHAPE)));

	initStringInfo(&form);
	if (*refresh)
		appendStringInfo(&form, "grant_type=refresh_token&refresh_token=%s",
						 etl_url_encode(rot ? rot->refresh_token : refresh_token));
	else
		appendStringInfoString(&form, "grant_type=client_credentials");
	appendStringInfo(&form, "&client_id=%s", etl_url_encode(client_id));
	if (client_secret)
		appendStringInfo(&form, "&client_secret=%s", etl_url_encode(client_secret));
	if (scope)
		appendStringInfo(&form, "&scope=%s", etl_url_encode(scope));
	return form.data;
}

/*
 * The token endpoint's answer to a token request; a refused refresh token
 * says what to do about it.
 */
static Jsonb *
post_token_request(const char *name, const char *token_url, const char *form,
				   bool refresh, const char *what)
{
	MemoryContext cxt = CurrentMemoryContext;
	char	   *volatile answer = NULL;

	PG_TRY();
	{
		answer = etl_http_post_form(token_url, form, what);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		if (!refresh)
			PG_RE_THROW();
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION)
			PG_RE_THROW();
		FlushErrorState();
		edata->hint = psprintf("A token endpoint refuses a refresh token that expired, was revoked, "
							   "or was rotated without the new one being saved.  Store a new one: "
							   "UPDATE dw_etl_secrets SET value = jsonb_set(value::jsonb, '{refresh_token}', "
							   "to_jsonb('...'::text))::text WHERE name = %s;",
							   quote_literal_cstr(name));
		ReThrowError(edata);
	}
	PG_END_TRY();
	return etl_jsonb_from_cstring(cxt, answer);
}

/*
 * An access token for the OAuth2 client described by secret name (whose
 * value is client_json): the cached one, or a new one from its endpoint.
 */
const char *
etl_oauth_token(const char *name, const char *client_json)
{
	const char *cached = cached_token(name);
	char	   *what = psprintf("OAuth2 token for secret \"%s\"", name);
	char	   *token_url;
	char	   *form;
	bool		refresh;
	Jsonb	   *answer;
	JsonbValue *expires;
	int64		ttl_ms = 3600 * 1000;
	char	   *access_token;
	char	   *new_refresh_token;

	if (cached)
		return cached;
	form = token_request_form(name, client_json, &token_url, &refresh);
	answer = post_token_request(name, token_url, form, refresh, what);
	access_token = JB_ROOT_IS_OBJECT(answer) ? etl_jsonb_str(answer, "access_token") : NULL;
	new_refresh_token = JB_ROOT_IS_OBJECT(answer) ? etl_jsonb_str(answer, "refresh_token") : NULL;
	etl_redact_register(access_token);
	etl_redact_register(new_refresh_token);
	if (access_token == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("%s: the token endpoint's answer has no access_token", what)));
	/* rotation: the old refresh token is void now, the new one goes on */
	if (refresh && new_refresh_token && new_refresh_token[0])
		note_rotation(name, client_json, new_refresh_token);
	expires = getKeyJsonValueFromContainer(&answer->root, "expires_in", strlen("expires_in"), NULL);
	if (expires && expires->type == jbvNumeric)
		ttl_ms = (int64) (DatumGetFloat8(DirectFunctionCall1(numeric_float8,
															 NumericGetDatum(expires->val.numeric))) * 1000);
	return cache_token(name, access_token, ttl_ms);
}

/*
 * After a 401 (an EtlHttpAuth renew callback): drop the cached tokens so
 * that the next request fetches new ones.  True when there were any, so
 * that one more try may help.
 */
bool
etl_oauth_renew(void *arg)
{
	if (token_cache == NIL)
		return false;
	list_free(token_cache);
	token_cache = NIL;
	tokens_generation++;
	return true;
}

/*
 * Which tokens a request went with (an EtlHttpAuth generation callback):
 * a 401 to a request sent before the tokens changed -- renewed after
 * another page's 401 -- is sent again with the new ones, not renewed again.
 */
uint64
etl_oauth_generation(void *arg)
{
	return tokens_generation;
}

/*
 * Write a rotated refresh token into its secret (in the current
 * transaction), unless the secret holds it already, or holds a value this
 * run never saw: an operator changed it meanwhile, and that stands.
 */
static void
write_refresh_token(OAuthRotation *rot)
{
	StringInfoData known;
	ListCell   *lc;
	const char *args[3];
	char	   *sql;

	initStringInfo(&known);
	appendStringInfoChar(&known, '[');
	foreach(lc, rot->values)
	{
		if (foreach_current_index(lc) > 0)
			appendStringInfoString(&known, ", ");
		escape_json(&known, (const char *) lfirst(lc));
	}
	appendStringInfoChar(&known, ']');
	args[0] = rot->name;
	args[1] = rot->refresh_token;
	args[2] = known.data;

	SPI_connect();
	/* (CASE: the value is cast only once it is known to be JSON of ours) */
	sql = psprintf("UPDATE %s SET value = pg_catalog.jsonb_set(value::pg_catalog.jsonb, '{refresh_token}', "
				   "    pg_catalog.to_jsonb($2::pg_catalog.text))::pg_catalog.text "
				   "WHERE name = $1 AND CASE WHEN value IN (SELECT pg_catalog.jsonb_array_elements_text($3::pg_catalog.jsonb)) "
				   "    THEN (value::pg_catalog.jsonb ->> 'refresh_token') IS DISTINCT FROM $2 ELSE false END "
				   "RETURNING value", etl_qualified("dw_etl_secrets"));
	if (etl_spi_run(sql, 3, args, SPI_OK_UPDATE_RETURNING) == 1)
		rot->values = lappend(rot->values, etl_spi_value(tokens_memory(), 1));
	else if (!rot->warned)
	{
		sql = psprintf("SELECT value IN (SELECT pg_catalog.jsonb_array_elements_text($2::pg_catalog.jsonb)) "
					   "FROM %s WHERE name = $1", etl_qualified("dw_etl_secrets"));
		args[1] = known.data;
		if (etl_spi_run(sql, 2, args, SPI_OK_SELECT) == 0 ||
			strcmp(etl_spi_value(CurrentMemoryContext, 1), "t") != 0)
		{
			rot->warned = true;
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("etl_exec: secret \"%s\" was changed or removed while a run used it; "
							"the refresh token the token endpoint rotated to is not saved", rot->name),
					 errhint("If the next run's token request is refused, store a new refresh token in the secret.")));
		}
	}
	SPI_finish();
}

static bool
write_refresh_token_step(void *arg)
{
	write_refresh_token((OAuthRotation *) arg);
	return true;
}

/*
 * Save the refresh tokens the token endpoint rotated to in this run into
 * their secrets, with the transaction about to commit (the worker calls
 * this before each commit).  A failure to save is a warning: it must not
 * cost the pages the commit holds.
 */
void
etl_oauth_save_rotated(void)
{
	ListCell   *lc;

	foreach(lc, rotations)
	{
		OAuthRotation *rot = (OAuthRotation *) lfirst(lc);
		ErrorData  *edata = etl_subxact_try(write_refresh_token_step, rot,
											CurrentMemoryContext, NULL);

		if (edata != NULL)
			ereport(WARNING,
					(errcode(edata->sqlerrcode),
					 errmsg("etl_exec: could not save the rotated refresh token of secret \"%s\": %s",
							rot->name, edata->message)));
	}
}
