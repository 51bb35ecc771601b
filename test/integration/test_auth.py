"""Authentication beyond header secrets: a secret in the query string
(?api_key={secret:NAME}), the OAuth2 refresh-token grant (with rotation),
and HTTP Basic from a secret holding user and password -- each host-bound,
each never shown: not in run_context, error messages, the caller's error,
pg_stat_activity, dry-run reports or the server log."""
import base64
import hashlib
import json
import os
import threading
import time
import urllib.parse
import urllib.request

import psycopg2
import pytest

from conftest import MOCK_API, connect

TOTAL = {"total_path": '$."@odata.count"'}
ORIGIN = MOCK_API.split("://", 1)[1]                       # 127.0.0.1:PORT
PORT = ORIGIN.rsplit(":", 1)[1]
LOCALHOST_ORIGIN = "localhost:" + PORT                     # the same mock, another origin

# a key with characters that must be URL-encoded in a query string
KEY = "qs-Key/4a1e+Secret&x=Never Shown"
KEY_SHA = hashlib.sha256(KEY.encode()).hexdigest()
KEY_ENCODED = urllib.parse.quote(KEY, safe="")
PASSWORD = "b4sic-Pa55word-Never-Shown-91"
WRONG_PASSWORD = "wr0ng-Pa55word-Never-Shown-37"


def stats():
    with urllib.request.urlopen(MOCK_API + "/__stats") as r:
        return json.load(r)


def reset():
    urllib.request.urlopen(MOCK_API + "/__reset").read()


def server_log():
    log = os.path.join(os.environ.get("ETL_TEST_ROOT", "/tmp/etl_exec_test"), "server.log")
    with open(log, encoding="utf-8", errors="replace") as f:
        return f.read()


def secret(db, name, value, hosts=(ORIGIN,)):
    if not isinstance(value, str):
        value = json.dumps(value)
    db.q("DELETE FROM dw_etl_secrets WHERE name = %s", (name,))
    db.q("INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES (%s, %s, %s)", (name, value, list(hosts)))


def secret_value(db, name):
    return json.loads(db.one("SELECT value FROM dw_etl_secrets WHERE name = %s", (name,)))


def run(db, job, **kw):
    """Start a run and wait for it; its row."""
    args = ", ".join(f"{k} := %s" for k in kw)
    run_id = db.one(f"SELECT etl_execute_job(%s{', ' + args if args else ''})", (job, *kw.values()))
    db.wait(run_id)
    return db.run_row(run_id)


def assert_hidden(text, *values):
    for v in values:
        assert v not in text, f"{v!r} shows in: {text}"


# ---------------------------------------------------------------------------
# A secret in the query string
# ---------------------------------------------------------------------------

def test_query_string_secret_loads_exactly(db):
    secret(db, "qkey", KEY)
    db.patients_table("a_qs")
    job = db.job("aqs", f"/odata/Patients?n=1000&apikey_query_sha256={KEY_SHA}&api_key={{secret:qkey}}", "a_qs",
                 page_size=100, concurrency=4, pagination_options=TOTAL)
    reset()
    row = run(db, job)
    assert row["status"] == "succeeded", row["error_message"]
    db.assert_patients_exact("a_qs", 1000)
    seen = stats()["headers_seen"]
    assert len(seen) == 10
    # every request carried the key, URL-encoded, in place of the placeholder
    assert all(f"api_key={KEY_ENCODED}" in h["query"] for h in seen), seen[0]
    assert row["run_context"]["paging"]["url"].endswith("&api_key={secret:qkey}")
    assert_hidden(json.dumps(row, default=str), KEY, KEY_ENCODED)


def test_without_the_key_the_api_refuses(db):
    """The mock's check is real: the same job without the placeholder fails."""
    db.patients_table("a_qs_none")
    job = db.job("aqsnone", f"/odata/Patients?n=10&apikey_query_sha256={KEY_SHA}", "a_qs_none", page_size=10)
    row = run(db, job)
    assert row["status"] == "failed"
    assert "HTTP 401" in row["error_message"] and "bad or missing api_key" in row["error_message"]


def test_query_string_secret_is_never_kept_or_shown(db):
    secret(db, "qkey", KEY)
    db.patients_table("a_qs_hidden")
    # next links echo every query parameter, the key included
    job = db.job("aqshidden", f"/nextlink/Patients?n=600&$top=100&delay_ms=250&apikey_query_sha256={KEY_SHA}"
                              f"&api_key={{secret:qkey}}", "a_qs_hidden",
                 pagination="next_link", checkpoint_interval_seconds=0)
    reset()
    activity = []
    done = threading.Event()

    def watch():
        conn = connect(db.dbname)
        while not done.is_set():
            with conn.cursor() as cur:
                cur.execute("SELECT coalesce(string_agg(coalesce(query, '') || ' ' || coalesce(application_name, ''), ' '), '') "
                            "FROM pg_stat_activity")
                activity.append(cur.fetchone()[0])
            time.sleep(0.05)
        conn.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        row = run(db, job, timeout=1)
    finally:
        done.set()
        watcher.join()
    assert row["status"] == "timed_out"
    # the checkpoint's next link holds the placeholder, not the key it echoed
    next_url = row["run_context"]["checkpoint"]["next_url"]
    assert "api_key={secret:qkey}" in next_url and "$skiptoken=" in next_url
    assert any("etl_exec run %d:" % row["run_id"] in a for a in activity)     # it was watched running
    assert_hidden(" ".join(activity), KEY, KEY_ENCODED)
    # the resume fills it in again, for every page
    assert db.resume_until_done(row["run_id"])[-1] == "succeeded"
    db.assert_patients_exact("a_qs_hidden", 600)
    assert all(f"api_key={KEY_ENCODED}" in h["query"] for h in stats()["headers_seen"])

    # an API that shows the URL in its error page
    failing = db.job("aqsecho", f"/odata/Patients?n=100&apikey_query_sha256={KEY_SHA}&echo_url=1&api_key={{secret:qkey}}",
                     "a_qs_hidden", page_size=50)
    with pytest.raises(psycopg2.Error) as exc:
        db.q("SELECT etl_execute_job(%s, wait := true)", (failing,))
    assert "HTTP 404" in exc.value.pgerror and "no such page" in exc.value.pgerror
    assert "api_key=[secret redacted]" in exc.value.pgerror
    assert_hidden(exc.value.pgerror, KEY, KEY_ENCODED)
    msg = db.one("SELECT error_message FROM dw_etl_runs WHERE job_id = %s", (failing,))
    assert msg.startswith("HTTP 404 from http://%s/odata/Patients?n=100&apikey_query_sha256=" % ORIGIN)
    assert "&echo_url=1&api_key={secret:qkey}&%24skip=0&%24top=50: " in msg   # the URL asked for
    assert "api_key=[secret redacted]" in msg                             # the URL the API shows
    # a dry run reports the URL with the placeholder
    dry = run(db, job, dry_run=True)
    assert dry["status"] == "succeeded"
    assert "api_key={secret:qkey}" in json.dumps(dry["run_context"])

    everything = db.one("SELECT string_agg(r::text, ' ') FROM dw_etl_runs r")
    assert_hidden(everything, KEY, KEY_ENCODED)
    log = server_log()
    assert "HTTP 404 from http://%s/odata/Patients" % ORIGIN in log          # the failure was logged
    assert_hidden(log, KEY, KEY_ENCODED)


def test_a_next_link_to_another_origin_goes_without_the_secret(db):
    secret(db, "qkey_here", KEY)
    db.patients_table("a_qs_away")
    job = db.job("aqsaway", f"/nextlink/Patients?n=300&$top=100&link_host={LOCALHOST_ORIGIN}"
                            f"&apikey_query_sha256={KEY_SHA}&api_key={{secret:qkey_here}}", "a_qs_away",
                 pagination="next_link")
    reset()
    row = run(db, job)
    assert row["status"] == "failed"
    msg = row["error_message"]
    # the second page went to the other origin, without the key: refused there
    assert msg.startswith(f"HTTP 401 from http://{LOCALHOST_ORIGIN}/nextlink/Patients?"), msg
    # (the URL as the run keeps it: the placeholder, which that request went without)
    asked = msg.split(" ")[3].rstrip(":")
    assert "$skiptoken=" in asked and asked.endswith("&api_key={secret:qkey_here}")
    assert "bad or missing api_key" in msg
    assert_hidden(msg, KEY, KEY_ENCODED)
    seen = stats()["headers_seen"]
    assert [h["Host"] for h in seen] == [ORIGIN, LOCALHOST_ORIGIN]
    assert f"api_key={KEY_ENCODED}" in seen[0]["query"]
    assert "api_key" not in seen[1]["query"] and KEY_ENCODED not in seen[1]["query"]
    assert db.one("SELECT records_loaded FROM dw_etl_runs WHERE run_id = %s", (row["run_id"],)) == 100

    # once the secret lists that origin, the echoed key goes there too
    db.q("UPDATE dw_etl_secrets SET allowed_hosts = %s WHERE name = 'qkey_here'", ([ORIGIN, LOCALHOST_ORIGIN],))
    db.q("TRUNCATE a_qs_away")
    reset()
    row = run(db, job)
    assert row["status"] == "succeeded", row["error_message"]
    db.assert_patients_exact("a_qs_away", 300)
    assert all(f"api_key={KEY_ENCODED}" in h["query"] for h in stats()["headers_seen"])


def test_a_redirect_to_another_origin_goes_without_the_secret(db):
    """The API redirects to localhost (another origin), with the key it
    was sent in the Location: the hop goes without that parameter."""
    secret(db, "qkey_redirect", KEY)
    db.patients_table("a_qs_redirect")
    job = db.job("aqsredirect", f"/odata/Patients?n=10&apikey_query_sha256={KEY_SHA}&redirect=1"
                                f"&api_key={{secret:qkey_redirect}}", "a_qs_redirect", page_size=10, concurrency=1)
    reset()
    row = run(db, job)
    assert row["status"] == "failed"
    msg = row["error_message"]
    assert msg.startswith(f"HTTP 401 from http://{LOCALHOST_ORIGIN}/odata/Patients?") and "bad or missing api_key" in msg
    assert "api_key=[secret redacted]" in msg            # the Location held the value: redacted
    assert_hidden(msg, KEY, KEY_ENCODED)
    seen = stats()["headers_seen"]
    assert [h["Host"] for h in seen] == [ORIGIN, LOCALHOST_ORIGIN]
    assert f"api_key={KEY_ENCODED}" in seen[0]["query"] and "api_key" not in seen[1]["query"]
    assert 'secret "qkey_redirect" is left out of requests to %s' % LOCALHOST_ORIGIN in server_log()


def test_a_query_string_secret_is_refused_for_an_origin_it_does_not_list(db):
    secret(db, "qkey_elsewhere", KEY, hosts=("api.example.com",))
    db.patients_table("a_qs_refused")
    job = db.job("aqsrefused", "/odata/Patients?n=10&api_key={secret:qkey_elsewhere}", "a_qs_refused", page_size=10)
    reset()
    with pytest.raises(psycopg2.Error) as exc:
        db.q("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert (f'failed: secret "qkey_elsewhere" in the URL of job {job} may not be sent to {ORIGIN}\n'
            in exc.value.pgerror)
    assert "DETAIL:  The secret lists only: api.example.com." in exc.value.pgerror
    assert ("UPDATE dw_etl_secrets SET allowed_hosts = allowed_hosts || '%s'::text WHERE name = 'qkey_elsewhere';"
            % ORIGIN) in exc.value.pgerror
    assert stats()["requests"] == 0                                      # nothing was sent
    assert_hidden(exc.value.pgerror, KEY, KEY_ENCODED)

    db.q("UPDATE dw_etl_secrets SET allowed_hosts = '{}' WHERE name = 'qkey_elsewhere'")
    row = run(db, job)
    assert row["status"] == "failed"
    assert "The secret lists no origin: it is sent nowhere." in row["error_message"]

    missing = db.job("aqsmissing", "/odata/Patients?n=10&api_key={secret:no_such_key}", "a_qs_refused", page_size=10)
    row = run(db, missing)
    assert row["status"] == "failed"
    assert row["error_message"].startswith(f'secret "no_such_key" used in the URL of job {missing} does not exist')


def test_a_parameter_cannot_name_a_secret(db):
    """Parameters fill {name} URL-encoded: a value that looks like a
    placeholder stays text, and {secret:NAME} takes no parameter."""
    secret(db, "qkey", KEY)
    db.patients_table("a_qs_param")
    job = db.job("aqsparam", "/odata/Patients?n=10&q={q}", "a_qs_param", page_size=10)
    reset()
    row = run(db, job, parameters=json.dumps({"q": "{secret:qkey}"}))
    assert row["status"] == "succeeded"
    assert stats()["headers_seen"][0]["query"].startswith("n=10&q=%7Bsecret%3Aqkey%7D&")


# ---------------------------------------------------------------------------
# OAuth2 refresh-token grant
# ---------------------------------------------------------------------------

def refresh_secret(db, name, refresh_token, rotate=False, ttl=None, client_secret=None):
    query = "&".join(x for x in (f"ttl={ttl}" if ttl else "", "rotate=1" if rotate else "") if x)
    value = {"token_url": MOCK_API + "/oauth/token" + ("?" + query if query else ""),
             "grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "etl"}
    if client_secret:
        value["client_secret"] = client_secret
    secret(db, name, value)


def refresh_job(db, name, table, secret_name, n=3000, extra=""):
    db.patients_table(table)
    # 200 a page at 400 ms a page: 15 pages take 6 s
    return db.job(name, f"/odata/Patients?n={n}&oauth=1&delay_ms=400{extra}", table, concurrency=1, page_size=200,
                  headers={"Authorization": "Bearer {oauth2:%s}" % secret_name}, pagination_options=TOTAL)


def test_refresh_token_grant_fetches_caches_and_renews(db):
    refresh_secret(db, "refresh", "rt-initial-7c1f", ttl=2, client_secret="s3cret")
    job = refresh_job(db, "arefresh", "a_refresh", "refresh")
    reset()
    row = run(db, job)
    assert row["status"] == "succeeded", row["error_message"]
    db.assert_patients_exact("a_refresh", 3000)
    grants = stats()["refresh_grants"]
    assert 3 <= grants <= 8, grants            # renewed before expiry, not per request
    assert stats()["token_requests"] == grants
    assert secret_value(db, "refresh")["refresh_token"] == "rt-initial-7c1f"   # not rotated: unchanged


def test_rotated_refresh_tokens_are_used_and_saved_for_the_next_run(db):
    refresh_secret(db, "rotating", "rt-first-2b8d", rotate=True, ttl=2)
    job = refresh_job(db, "arotate", "a_rotate", "rotating")
    reset()
    row = run(db, job)
    assert row["status"] == "succeeded", row["error_message"]
    db.assert_patients_exact("a_rotate", 3000)
    issued = stats()["refresh_tokens_issued"]
    # every renewal used the token the one before rotated to (the mock refuses the old ones)
    assert 3 <= len(issued) <= 8 and stats()["refresh_grants"] == len(issued)
    saved = secret_value(db, "rotating")
    assert saved["refresh_token"] == issued[-1]
    assert saved["token_url"].endswith("/oauth/token?ttl=2&rotate=1") and saved["client_id"] == "etl"

    # the first token is void now: a next run that had not saved the new one would fail
    form = urllib.parse.urlencode({"grant_type": "refresh_token", "refresh_token": "rt-first-2b8d",
                                   "client_id": "etl"}).encode()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(MOCK_API + "/oauth/token", data=form))
    assert err.value.code == 400

    # the next run starts from the saved token, and saves the one it rotates to
    db.q("TRUNCATE a_rotate")
    reset()
    row = run(db, job)
    assert row["status"] == "succeeded", row["error_message"]
    db.assert_patients_exact("a_rotate", 3000)
    issued_again = stats()["refresh_tokens_issued"]
    assert issued_again and secret_value(db, "rotating")["refresh_token"] == issued_again[-1]

    everything = db.one("SELECT string_agg(r::text, ' ') FROM dw_etl_runs r")
    log = server_log()
    for tok in issued + issued_again + ["rt-first-2b8d"]:
        assert_hidden(everything, tok)
        assert_hidden(log, tok)


def test_a_run_that_fails_after_a_rotation_still_saves_the_new_token(db):
    refresh_secret(db, "rotating_fail", "rt-before-failure-5e0a", rotate=True, ttl=2)
    # pages of 200 at 400 ms: tokens renewed twice or more before the page at 2000 fails
    job = refresh_job(db, "arotatefail", "a_rotate_fail", "rotating_fail",
                      extra="&fail_at=2000&fail_status=404")
    reset()
    row = run(db, job)
    assert row["status"] == "failed"
    assert "HTTP 404" in row["error_message"]
    issued = stats()["refresh_tokens_issued"]
    assert len(issued) >= 2
    assert secret_value(db, "rotating_fail")["refresh_token"] == issued[-1]

    good = refresh_job(db, "arotategood", "a_rotate_good", "rotating_fail", n=400)
    row = run(db, good)
    assert row["status"] == "succeeded", row["error_message"]
    db.assert_patients_exact("a_rotate_good", 400)


def test_a_refused_refresh_token_fails_clearly(db):
    refresh_secret(db, "refresh_void", "void-refresh-token-Never-Shown")
    job = refresh_job(db, "arefreshvoid", "a_refresh_void", "refresh_void", n=10)
    with pytest.raises(psycopg2.Error) as exc:
        db.q("SELECT etl_execute_job(%s, wait := true)", (job,))
    err = exc.value.pgerror
    assert 'OAuth2 token for secret "refresh_void": HTTP 400 from' in err and "invalid_grant" in err
    assert "HINT:  A token endpoint refuses a refresh token that expired, was revoked, or was rotated" in err
    assert "WHERE name = 'refresh_void';" in err
    msg = db.one("SELECT error_message FROM dw_etl_runs WHERE job_id = %s", (job,))
    assert "invalid_grant" in msg and "Store a new one" in msg
    assert_hidden(err + msg + server_log(), "void-refresh-token-Never-Shown")


# ---------------------------------------------------------------------------
# HTTP Basic from a secret
# ---------------------------------------------------------------------------

def basic_job(db, name, table, secret_name, n=500):
    db.patients_table(table)
    sha = hashlib.sha256(f"etl:{PASSWORD}".encode()).hexdigest()
    return db.job(name, f"/odata/Patients?n={n}&basic_sha256={sha}", table, page_size=100,
                  headers={"Authorization": "{basic:%s}" % secret_name}, pagination_options=TOTAL)


def test_basic_auth_from_a_secret(db):
    secret(db, "login", {"user": "etl", "password": PASSWORD})
    job = basic_job(db, "abasic", "a_basic", "login")
    reset()
    row = run(db, job)
    assert row["status"] == "succeeded", row["error_message"]
    db.assert_patients_exact("a_basic", 500)
    expected = "Basic " + base64.b64encode(f"etl:{PASSWORD}".encode()).decode()
    assert [h["Authorization"] for h in stats()["headers_seen"]] == [expected] * 5


def test_basic_auth_with_a_wrong_password_fails_clearly(db):
    secret(db, "login_wrong", {"user": "etl", "password": WRONG_PASSWORD})
    job = basic_job(db, "abasicwrong", "a_basic_wrong", "login_wrong", n=10)
    wrong_b64 = base64.b64encode(f"etl:{WRONG_PASSWORD}".encode()).decode()
    with pytest.raises(psycopg2.Error) as exc:
        db.q("SELECT etl_execute_job(%s, wait := true)", (job,))
    err = exc.value.pgerror
    assert f"HTTP 401 from http://{ORIGIN}/odata/Patients?n=10&basic_sha256=" in err
    assert "bad or missing basic credentials" in err
    msg = db.one("SELECT error_message FROM dw_etl_runs WHERE job_id = %s", (job,))
    assert "bad or missing basic credentials" in msg
    # an API that echoes the request's headers shows only the redaction
    db.q("UPDATE dw_etl_jobs SET url = url || '&echo_headers=1' WHERE job_id = %s", (job,))
    row = run(db, job)
    assert row["status"] == "failed" and "[secret redacted]" in row["error_message"]
    assert "Basic [secret redacted]" in row["error_message"]
    everything = db.one("SELECT string_agg(r::text, ' ') FROM dw_etl_runs r")
    for text in (err, msg, everything, server_log()):
        assert_hidden(text, WRONG_PASSWORD, wrong_b64)


def test_basic_auth_is_bound_to_its_origins(db):
    secret(db, "login_elsewhere", {"user": "etl", "password": PASSWORD}, hosts=("api.example.com",))
    job = basic_job(db, "abasicaway", "a_basic_away", "login_elsewhere", n=10)
    reset()
    row = run(db, job)
    assert row["status"] == "failed" and "HTTP 401" in row["error_message"]
    assert stats()["headers_seen"][0]["Authorization"] is None           # left out, not sent


def test_basic_auth_needs_a_user_and_password_secret(db):
    secret(db, "login_plain", "just-a-token-Never-Shown")
    job = basic_job(db, "abasicplain", "a_basic_plain", "login_plain", n=10)
    row = run(db, job)
    assert row["status"] == "failed"
    assert row["error_message"] == (
        'secret "login_plain" is not a JSON object\n'
        'HINT: Its value must be {"user": "...", "password": "..."} (a user without a colon).')


# ---------------------------------------------------------------------------
# Validation when written
# ---------------------------------------------------------------------------

def refused(db, sql, args=()):
    with pytest.raises(psycopg2.Error) as exc:
        db.q(sql, args)
    return exc.value


@pytest.mark.parametrize("url, message, hint", [
    ("/odata/Patients?token={oauth2:api}", 'job "aval": {oauth2:api} cannot be used in the URL',
     'headers = \'{"Authorization": "Bearer {oauth2:NAME}"}\''),
    ("/odata/Patients?login={basic:api}", 'job "aval": {basic:api} cannot be used in the URL', "{basic:NAME}"),
    ("/odata/{secret:api}/Patients", 'job "aval": {secret:api} must be in the URL\'s query string, not in its path',
     "https://api.example.com/v1/items?api_key={secret:api}"),
    ("/odata/Patients?n=1#{secret:api}", 'job "aval": {secret:api} must be in the URL\'s query string, not in its path',
     None),
    ("/odata/Patients?api_key={secret:}", 'job "aval": {secret:} in the URL needs a secret name',
     "api_key={secret:my_api_key}"),
])
def test_jobs_use_url_secrets_only_in_the_query_string(db, url, message, hint):
    db.patients_table("a_val")
    err = refused(db, "INSERT INTO dw_etl_jobs (name, url, target_table) VALUES ('aval', %s, 'a_val')",
                  (MOCK_API + url,))
    assert err.pgcode == "22023"
    assert err.diag.message_primary == message
    if hint:
        assert hint in err.diag.message_hint


@pytest.mark.parametrize("headers, message, hint", [
    ({"Authorization": "Basic {basic:login}"}, 'job "aval": header "Authorization" must be {basic:NAME} alone',
     '{"Authorization": "{basic:my_login}"}'),
    ({"Authorization": "{basic:}"}, 'job "aval": header "Authorization" has {basic:} without a secret name',
     '{"Authorization": "{basic:my_login}"}'),
    ({"X-Api-Key": "{secret:}"}, 'job "aval": header "X-Api-Key" has {secret:} without a secret name',
     '{"Authorization": "Bearer {secret:my_api}"}'),
])
def test_jobs_use_header_secrets_well_formed(db, headers, message, hint):
    db.patients_table("a_val")
    err = refused(db, "INSERT INTO dw_etl_jobs (name, url, target_table, headers) VALUES ('aval', %s, 'a_val', %s)",
                  (MOCK_API + "/odata/Patients", json.dumps(headers)))
    assert err.pgcode == "22023"
    assert err.diag.message_primary == message
    assert hint in err.diag.message_hint


def test_jobs_with_good_secret_placeholders_are_accepted(db):
    db.patients_table("a_val")
    db.q("DELETE FROM dw_etl_jobs WHERE name = 'aval'")
    db.q("INSERT INTO dw_etl_jobs (name, url, target_table, headers) VALUES ('aval', %s, 'a_val', %s)",
         (MOCK_API + "/odata/Patients?day={day}&api_key={secret:k}",
          json.dumps({"Authorization": "{basic:login}", "X-Token": "Bearer {oauth2:o} {secret:s}"})))
    db.q("DELETE FROM dw_etl_jobs WHERE name = 'aval'")


TOKEN_URL = "https://auth.example.com/oauth/token"


@pytest.mark.parametrize("value, message, hint", [
    ({"token_url": TOKEN_URL, "grant_type": "refresh_token", "client_id": "etl"},
     'secret "aval": an OAuth2 refresh_token client needs refresh_token', '"grant_type": "refresh_token"'),
    ({"token_url": TOKEN_URL, "grant_type": "refresh_token", "refresh_token": "rt-Never-Shown-1"},
     'secret "aval": an OAuth2 refresh_token client needs client_id', None),
    ({"token_url": TOKEN_URL, "grant_type": "password", "client_id": "etl", "client_secret": "Never-Shown-2"},
     'secret "aval": unknown OAuth2 grant_type "password"', '"client_credentials" (the default'),
    ({"token_url": TOKEN_URL, "refresh_token": "rt-Never-Shown-3", "client_id": "etl"},
     'secret "aval" has a refresh_token but no grant_type', 'Add "grant_type": "refresh_token"'),
    ({"token_url": TOKEN_URL, "client_id": "etl"},
     'secret "aval": an OAuth2 client_credentials client needs client_secret', '"client_secret": "..."'),
    ({"token_url": "ftp://auth.example.com/token", "grant_type": "refresh_token", "refresh_token": "rt-Never-Shown-4",
      "client_id": "etl"},
     'secret "aval": token_url must be an http:// or https:// URL', None),
    ({"token_url": TOKEN_URL, "client_id": "etl", "client_secret": "Never-Shown-5", "scope": ["a", "b"]},
     'secret "aval": scope must be a JSON string', None),
    ({"user": "etl:admin", "password": "Never-Shown-6"},
     'secret "aval": an HTTP Basic user must not contain a colon', None),
    ({"user": "etl", "password": 12345678},
     'secret "aval": an HTTP Basic login needs user and password as JSON strings (a non-empty user)',
     '{"user": "etl", "password": "..."}'),
    ({"user": "etl"},
     'secret "aval": an HTTP Basic login needs user and password as JSON strings (a non-empty user)', None),
    ('{"user": "etl", "password": "Never-Shown-7"',
     'secret "aval" starts like a JSON object but is not valid JSON', "check the quotes and commas"),
])
def test_json_secrets_are_validated_when_written(db, value, message, hint):
    text = value if isinstance(value, str) else json.dumps(value)
    err = refused(db, "INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES ('aval', %s, %s)",
                  (text, [ORIGIN]))
    assert err.pgcode == "22023"
    assert err.diag.message_primary == message
    if hint:
        assert hint in err.diag.message_hint
    assert "Never-Shown" not in err.pgerror


def test_plain_and_good_json_secrets_are_accepted(db):
    for value in ("plain-api-key", json.dumps({"user": "etl", "password": ""}),
                  json.dumps({"token_url": TOKEN_URL, "client_id": "etl", "client_secret": "x"}),
                  json.dumps({"token_url": TOKEN_URL, "grant_type": "refresh_token", "refresh_token": "rt-1",
                              "client_id": "etl", "scope": "read"}),
                  json.dumps({"something": "else"})):
        secret(db, "aval", value)
    db.q("DELETE FROM dw_etl_secrets WHERE name = 'aval'")
