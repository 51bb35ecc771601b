"""HTTP robustness (retries, Retry-After, stalls, truncation, oversized and
compressed bodies, redirects, allowed hosts, blocked addresses) and secrets
(per-host headers, OAuth2 tokens, never leaked)."""
import json
import os
import time
import urllib.request

import psycopg2
import pytest

from conftest import MOCK_API, connect, run_in_session

TOTAL = {"total_path": '$."@odata.count"'}


def stats():
    with urllib.request.urlopen(MOCK_API + "/__stats") as r:
        return json.load(r)


def reset():
    urllib.request.urlopen(MOCK_API + "/__reset").read()


def test_5xx_then_success_is_retried(db):
    reset()                                  # fail_at counts are the mock's, across tests
    db.patients_table("h_500")
    job = db.job("h500", "/odata/Patients?n=2000&fail_at=1000&fail_status=500&fail_times=2", "h_500",
                 page_size=500, pagination_options=TOTAL)
    run_id = run_in_session(db, "SELECT etl_execute_job(%s, wait := true)", (job,),
                            ["SET etl_exec.retry_base_delay_ms = 50"])
    row = db.run_row(run_id)
    assert row["status"] == "succeeded"
    assert row["run_context"]["retries"] == 2
    db.assert_patients_exact("h_500", 2000)


def test_429_retry_after_is_honoured(db):
    reset()                                  # fail_at counts are the mock's, across tests
    db.patients_table("h_429")
    job = db.job("h429", "/odata/Patients?n=1000&fail_at=500&fail_status=429&fail_times=1&retry_after=2",
                 "h_429", page_size=500, pagination_options=TOTAL)
    t0 = time.time()
    run_id = run_in_session(db, "SELECT etl_execute_job(%s, wait := true)", (job,),
                            ["SET etl_exec.retry_base_delay_ms = 10"])
    assert time.time() - t0 >= 2.0          # waited what the server asked, not 10 ms
    assert db.run_row(run_id)["run_context"]["retries"] == 1
    db.assert_patients_exact("h_429", 1000)


def test_a_retry_wait_past_the_deadline_times_out_at_once(db):
    reset()                                  # fail_at counts are the mock's, across tests
    db.patients_table("h_ra")
    job = db.job("hra", "/odata/Patients?n=2000&fail_at=1000&fail_status=503&retry_after=60", "h_ra",
                 page_size=500, pagination_options=TOTAL, checkpoint_interval_seconds=0)
    t0 = time.time()
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 10)", (job,))
    assert db.wait(run_id) == "timed_out"
    assert time.time() - t0 < 5              # did not sleep 60 s, nor until the deadline
    row = db.run_row(run_id)
    assert row["records_loaded"] == 1000     # pages before it are kept
    assert db.one("SELECT skip FROM etl_get_checkpoint(%s)", (run_id,)) == 1000


def test_retries_are_limited(db):
    reset()                                  # fail_at counts are the mock's, across tests
    db.patients_table("h_lim")
    job = db.job("hlim", "/odata/Patients?n=1000&fail_at=0&fail_status=503&retry_after=0", "h_lim",
                 page_size=500, max_retries=2)
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    msg = db.run_row(run_id)["error_message"]
    assert "failed after 2 retries: HTTP 503" in msg and "injected failure" in msg


def test_a_stalled_transfer_is_cut(db):
    db.patients_table("h_stall")
    job = db.job("hstall", "/odata/Patients?n=100&stall_after_bytes=50&stall_ms=30000", "h_stall",
                 page_size=100, max_retries=0)
    t0 = time.time()
    run_id = run_in_session(db, "SELECT etl_execute_job(%s)", (job,),
                            ["SET etl_exec.low_speed_time_seconds = 1"])
    assert db.wait(run_id) == "failed"
    assert time.time() - t0 < 10
    assert "too slow" in db.run_row(run_id)["error_message"].lower()


@pytest.mark.parametrize("how,status", [
    ("SELECT etl_cancel_run(%(run)s)", "cancelled"),
    ("SELECT pg_terminate_backend(%(pid)s)", "interrupted"),
])
def test_a_worker_stops_within_a_second_mid_transfer(db, how, status):
    db.patients_table("h_mid")
    job = db.job("hmid", "/odata/Patients?n=3000&stall_after_bytes=100&stall_ms=30000", "h_mid",
                 page_size=1000)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 120)", (job,))
    time.sleep(1.0)                          # it is now inside the stalled transfer
    row = db.run_row(run_id)
    assert row["status"] == "running"
    t0 = time.time()
    db.q(how, {"run": run_id, "pid": row["worker_pid"]})
    assert db.wait(run_id, timeout_s=5) == status
    elapsed = time.time() - t0
    print(f"stopped {elapsed * 1000:.0f} ms after the request")
    assert elapsed < 1.0
    assert db.one("SELECT count(*) FROM h_mid") == 0
    assert db.one("SELECT total_records FROM etl_get_checkpoint(%s)", (run_id,)) == 0


def test_a_truncated_body_is_retried_then_fails_clearly(db):
    reset()                                  # fail_at counts are the mock's, across tests
    db.patients_table("h_trunc")
    job = db.job("htrunc", "/odata/Patients?n=1000&truncate_at=500", "h_trunc", page_size=500, max_retries=1)
    run_id = run_in_session(db, "SELECT etl_execute_job(%s)", (job,), ["SET etl_exec.retry_base_delay_ms = 10"])
    assert db.wait(run_id) == "failed"
    row = db.run_row(run_id)
    assert "failed after 1 retries" in row["error_message"]
    assert row["records_loaded"] == 500      # the good first page stays, checkpointed
    assert db.one("SELECT count(*) FROM h_trunc") == 500


def test_a_body_that_does_not_decompress_fails_at_once(db):
    """Corrupt gzip ("incorrect data check") is the same on every try: not retried."""
    reset()
    db.patients_table("h_badgz")
    job = db.job("hbadgz", "/odata/Patients?n=1000&gzip=1&badgzip_at=500", "h_badgz", page_size=500,
                 max_retries=3, concurrency=1)
    run_id = run_in_session(db, "SELECT etl_execute_job(%s)", (job,), ["SET etl_exec.retry_base_delay_ms = 10"])
    assert db.wait(run_id) == "failed"
    row = db.run_row(run_id)
    assert "retries" not in row["error_message"], row["error_message"]
    assert "request to " in row["error_message"] and "failed: " in row["error_message"]
    assert row["sqlstate"] == "08P01"
    assert row["run_context"].get("retries", 0) == 0
    assert stats()["requests"] == 2          # the good page and the bad one, once each
    assert row["records_loaded"] == 500
    assert db.one("SELECT count(*) FROM h_badgz") == 500


def test_an_oversized_body_fails_instead_of_eating_memory(db):
    db.patients_table("h_big")
    job = db.job("hbig", "/odata/Patients?n=100&oversize_at=0&oversize_bytes=3000000", "h_big", page_size=100)
    run_id = run_in_session(db, "SELECT etl_execute_job(%s)", (job,),
                            ["SET etl_exec.max_response_bytes = '1MB'"])
    assert db.wait(run_id) == "failed"
    assert "larger than etl_exec.max_response_bytes (1048576 bytes)" in db.run_row(run_id)["error_message"]


def test_gzip_bodies(db):
    db.patients_table("h_gzip")
    job = db.job("hgzip", "/odata/Patients?n=2000&gzip=1", "h_gzip", page_size=1000)
    db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    db.assert_patients_exact("h_gzip", 2000)


def test_redirects_are_followed_and_checked_against_allowed_hosts(db):
    db.patients_table("h_redir")
    job = db.job("hredir", "/odata/Patients?n=500&redirect=1", "h_redir", page_size=500)
    db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    db.assert_patients_exact("h_redir", 500)
    db.q("TRUNCATE h_redir")
    with pytest.raises(psycopg2.Error) as exc:
        run_in_session(db, "SELECT etl_execute_job(%s, wait := true)", (job,),
                       ["SET etl_exec.allowed_hosts = '127.0.0.1'"])
    assert exc.value.pgcode == "ET001"
    assert 'host "localhost" is not in etl_exec.allowed_hosts' in exc.value.pgerror
    assert db.one("SELECT count(*) FROM h_redir") == 0


def test_allowed_hosts_is_superuser_only(db):
    db.q("DROP ROLE IF EXISTS h_plain")
    db.q("CREATE ROLE h_plain")
    conn = connect(db.dbname)
    cur = conn.cursor()
    cur.execute("LOAD 'etl_exec'")
    cur.execute("SET ROLE h_plain")
    with pytest.raises(psycopg2.Error, match='permission denied to set parameter "etl_exec.allowed_hosts"'):
        cur.execute("SET etl_exec.allowed_hosts = ''")
    conn.close()


def test_link_local_and_metadata_addresses_are_refused(db):
    db.patients_table("h_meta")
    db.q("DELETE FROM dw_etl_jobs WHERE name = 'hmeta'")
    job = db.one("""INSERT INTO dw_etl_jobs (name, url, target_table, page_size)
                    VALUES ('hmeta', 'http://169.254.169.254/latest/meta-data', 'h_meta', 10) RETURNING job_id""")
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    msg = db.run_row(run_id)["error_message"]
    assert "refused to connect to 169.254.169.254" in msg and "link-local" in msg


SECRET = "s3cr3t-Value-Do-Not-Leak-7f1c"
# secrets are bound to origins: the mock API's host and port
ORIGIN = MOCK_API.split("://", 1)[1]
LOCALHOST_ORIGIN = "localhost:" + ORIGIN.rsplit(":", 1)[1]


def test_secret_headers_go_only_to_their_hosts(db):
    db.q("DELETE FROM dw_etl_secrets")
    db.q("INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES ('api_token', %s, %s), ('api_key', %s, %s)",
         (SECRET, [ORIGIN], SECRET, [ORIGIN]))
    db.patients_table("h_sec")
    job = db.job("hsec", f"/odata/Patients?n=1000&token={SECRET}&apikey={SECRET}", "h_sec", page_size=500,
                 headers={"Authorization": "Bearer {secret:api_token}", "X-Api-Key": "{secret:api_key}"},
                 pagination_options=TOTAL)
    db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    db.assert_patients_exact("h_sec", 1000)

    # a redirect to another host name does not carry the secrets: the API refuses it
    reset()
    db.q("TRUNCATE h_sec")
    db.q("UPDATE dw_etl_jobs SET url = url || '&redirect=1' WHERE job_id = %s", (job,))
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    assert "HTTP 401" in db.run_row(run_id)["error_message"]
    seen = stats()["headers_seen"]
    assert any(h["Authorization"] for h in seen)                      # sent to 127.0.0.1
    redirected = [h for h in seen if "redirect" not in (h.get("query") or "")]
    assert redirected and all(not h["Authorization"] and not h["X-Api-Key"] for h in redirected)

    # listing the other host on the secrets lets them through
    db.q("UPDATE dw_etl_secrets SET allowed_hosts = %s", ([ORIGIN, LOCALHOST_ORIGIN],))
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    db.assert_patients_exact("h_sec", 1000)


def test_a_missing_secret_is_a_clear_error(db):
    db.patients_table("h_nosec")
    job = db.job("hnosec", "/odata/Patients?n=10", "h_nosec", page_size=10,
                 headers={"Authorization": "Bearer {secret:nope}"})
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    assert 'secret "nope" used in header "Authorization" of job' in db.run_row(run_id)["error_message"]


def test_oauth2_tokens_are_fetched_cached_and_refreshed(db):
    db.q("DELETE FROM dw_etl_secrets WHERE name = 'oauth'")
    db.q("INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES ('oauth', %s, %s)",
         (json.dumps({"token_url": MOCK_API + "/oauth/token?ttl=2", "client_id": "etl",
                      "client_secret": "s3cret"}), [ORIGIN]))
    db.patients_table("h_oauth")
    # 15 pages of 200 at 400 ms: 6 s, with tokens that live 2 s
    job = db.job("hoauth", "/odata/Patients?n=3000&oauth=1&delay_ms=400", "h_oauth", concurrency=1, page_size=200,
                 headers={"Authorization": "Bearer {oauth2:oauth}"}, pagination_options=TOTAL)
    reset()
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["status"] == "succeeded"
    db.assert_patients_exact("h_oauth", 3000)
    tokens = stats()["token_requests"]
    assert 3 <= tokens <= 8, tokens           # renewed before expiry, not per request


def test_a_revoked_oauth_token_is_fetched_again_once(db):
    db.q("DELETE FROM dw_etl_secrets WHERE name = 'oauth_rev'")
    db.q("INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES ('oauth_rev', %s, %s)",
         (json.dumps({"token_url": MOCK_API + "/oauth/token", "client_id": "etl", "client_secret": "s3cret"}),
          [ORIGIN]))
    db.patients_table("h_oauth_rev")
    job = db.job("hoauthrev", "/odata/Patients?n=2000&oauth=1&delay_ms=300", "h_oauth_rev", concurrency=1, page_size=200,
                 headers={"Authorization": "Bearer {oauth2:oauth_rev}"}, pagination_options=TOTAL)
    reset()
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    time.sleep(1.2)
    urllib.request.urlopen(MOCK_API + "/__revoke_tokens").read()    # the API forgets the token
    assert db.wait(run_id) == "succeeded"
    assert stats()["token_requests"] == 2       # the first, and one after the 401
    assert db.run_row(run_id)["run_context"]["retries"] == 0
    db.assert_patients_exact("h_oauth_rev", 2000)


def test_bad_oauth_client_fails_clearly(db):
    db.q("DELETE FROM dw_etl_secrets WHERE name = 'oauth_bad'")
    db.q("INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES ('oauth_bad', %s, %s)",
         (json.dumps({"token_url": MOCK_API + "/oauth/token", "client_id": "etl", "client_secret": "wrong"}),
          [ORIGIN]))
    db.patients_table("h_oauth_bad")
    job = db.job("hoauthbad", "/odata/Patients?n=10&oauth=1", "h_oauth_bad", page_size=10,
                 headers={"Authorization": "Bearer {oauth2:oauth_bad}"})
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    msg = db.run_row(run_id)["error_message"]
    assert 'OAuth2 token for secret "oauth_bad": HTTP 401' in msg
    assert "wrong" not in msg


def test_secrets_never_leak_into_runs_or_the_log(db):
    """A secret sent in headers, in runs that succeed and fail, shows up
    nowhere but in the request itself (runs after the secret tests above)."""
    hidden = "hidden-Secret-4b9e-Never-Logged"
    db.q("DELETE FROM dw_etl_secrets WHERE name = 'hidden'")
    db.q("INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES ('hidden', %s, %s)", (hidden, [ORIGIN]))
    db.patients_table("h_leak")
    headers = {"X-Api-Key": "{secret:hidden}", "Authorization": "Basic {secret:hidden}"}
    reset()
    ok = db.job("hleak", "/odata/Patients?n=300", "h_leak", page_size=100, headers=headers)
    db.one("SELECT etl_execute_job(%s, wait := true)", (ok,))
    bad = db.job("hleak404", "/odata/Patients?n=300&fail_at=100&fail_status=404", "h_leak", page_size=100,
                 headers=headers)
    with pytest.raises(psycopg2.Error) as exc:
        db.q("SELECT etl_execute_job(%s, wait := true)", (bad,))
    assert hidden not in exc.value.pgerror
    assert any(h["X-Api-Key"] == hidden for h in stats()["headers_seen"])     # it was really sent

    everything = db.one("SELECT string_agg(r::text, ' ') FROM dw_etl_runs r")
    assert hidden not in everything and '"s3cret"' not in everything
    activity = db.one("SELECT string_agg(coalesce(query, ''), ' ') FROM pg_stat_activity")
    assert hidden not in activity
    log = os.path.join(os.environ.get("ETL_TEST_ROOT", "/tmp/etl_exec_test"), "server.log")
    with open(log, encoding="utf-8", errors="replace") as f:
        text = f.read()
    assert "etl_exec run" in text
    assert hidden not in text and "s3cret" not in text
