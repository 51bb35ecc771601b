/*-------------------------------------------------------------------------
 *
 * oauth.c
 *	  OAuth2 access tokens (client credentials grant) for {oauth2:NAME}
 *	  header values, and the decision to renew them after a 401.
 *
 * Secret NAME holds a JSON object with token_url, client_id,
 * client_secret and optionally scope.  Tokens are cached for the life of
 * the worker, fetched anew shortly before they expire, and once more when
 * the API answers 401 (etl_oauth_renew, the HTTP client's "renew after
 * 401" callback).  The client secret and every token are registered for
 * redaction (redact.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "etl_exec.h"

typedef struct OAuthToken
{
	char	   *name;
	char	   *token;
	TimestampTz refresh_at;
} OAuthToken;

static List *token_cache = NIL;
static uint64 tokens_generation = 0;	/* bumped whenever the cache changes */

static MemoryContext tokens_cxt = NULL;	/* the cache's memory */

void
etl_oauth_forget_all(void)
{
	if (tokens_cxt)
		MemoryContextReset(tokens_cxt);
	token_cache = NIL;
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

	if (tokens_cxt == NULL)
		tokens_cxt = AllocSetContextCreate(TopMemoryContext, "etl_exec OAuth2 tokens",
										   ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(tokens_cxt);
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

/*
 * The token endpoint's request form for the client secret name describes
 * (client_json); its token_url in *token_url.
 */
static char *
token_request_form(const char *name, const char *client_json, char **token_url)
{
	Jsonb	   *conf = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(client_json)));
	char	   *client_id;
	char	   *client_secret;
	char	   *scope;
	StringInfoData form;

	*token_url = JB_ROOT_IS_OBJECT(conf) ? etl_jsonb_str(conf, "token_url") : NULL;
	client_id = *token_url ? etl_jsonb_str(conf, "client_id") : NULL;
	client_secret = *token_url ? etl_jsonb_str(conf, "client_secret") : NULL;
	scope = *token_url ? etl_jsonb_str(conf, "scope") : NULL;
	etl_redact_register(client_secret);
	if (*token_url == NULL || client_id == NULL || client_secret == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secret \"%s\" is not an OAuth2 client description", name),
				 errhint("Its value must be a JSON object with token_url, client_id and client_secret (and optionally scope).")));

	initStringInfo(&form);
	appendStringInfo(&form, "grant_type=client_credentials&client_id=%s&client_secret=%s",
					 etl_url_encode(client_id), etl_url_encode(client_secret));
	if (scope)
		appendStringInfo(&form, "&scope=%s", etl_url_encode(scope));
	return form.data;
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
	Jsonb	   *answer;
	JsonbValue *expires;
	int64		ttl_ms = 3600 * 1000;
	char	   *access_token;

	if (cached)
		return cached;
	form = token_request_form(name, client_json, &token_url);
	answer = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
												CStringGetDatum(etl_http_post_form(token_url, form, what))));
	access_token = JB_ROOT_IS_OBJECT(answer) ? etl_jsonb_str(answer, "access_token") : NULL;
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
