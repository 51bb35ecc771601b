"""Parallel paging (dw_etl_jobs.concurrency): offset and page paging keep that
many requests in flight and load the pages strictly in page order, so every
record lands exactly once through timeouts, cancels and resumes (kills and
restarts: test/tap/004_parallel_paging.pl).  The stop rules hold with
requests in flight, a short offset page mid-stream makes the run go on one
request at a time, and link and cursor paging stay one request at a time."""
import json
import time
import urllib.request

import psycopg2
import pytest

from conftest import MOCK_API, run_in_session

TOTAL = {"total_path": '$."@odata.count"'}
PAGED = {"page_param": "page", "limit_param": "per_page", "total_path": "$.total"}


def stats():
    with urllib.request.urlopen(MOCK_API + "/__stats") as r:
        return json.loads(r.read())


def reset():
    urllib.request.urlopen(MOCK_API + "/__reset").read()


def run_and_wait(db, job, timeout=None):
    run_id = db.one("SELECT etl_execute_job(%s, timeout := %s)", (job, timeout))
    return run_id, db.wait(run_id)


@pytest.mark.parametrize("concurrency", [1, 8])
def test_concurrency_is_the_most_requests_in_flight(db, concurrency):
    db.patients_table("pp_inflight")
    # (slow enough pages that a worker stalled on a busy machine still has
    # all of its window in flight at once)
    delay_ms = 100 if concurrency == 1 else 400
    job = db.job("ppinflight", "/odata/Patients?n=4000&delay_ms=%d" % delay_ms, "pp_inflight", page_size=100,
                 pagination_options=TOTAL, concurrency=concurrency)
    reset()
    run_id, status = run_and_wait(db, job)
    assert status == "succeeded"
    db.assert_patients_exact("pp_inflight", 4000)
    s = stats()
    assert s["inflight_max"] == concurrency, s["inflight_max"]
    assert s["requests"] == 40               # every page asked once, none past the total
    assert s["past_end"] == 0


def test_null_concurrency_takes_the_setting(db):
    db.patients_table("pp_default")
    job = db.job("ppdefault", "/paged/Patients?n=3000&delay_ms=250", "pp_default", pagination="page",
                 page_size=100, pagination_options=PAGED, records_path="$.items[*]")
    reset()
    run_id, status = run_and_wait(db, job)
    assert status == "succeeded"
    assert stats()["inflight_max"] == 4        # etl_exec.default_concurrency's default
    assert db.run_row(run_id)["settings"]["default_concurrency"] == 4
    db.assert_patients_exact("pp_default", 3000)

    # a session's setting is the run's (stored with it)
    db.patients_table("pp_default")
    db.q("SET etl_exec.default_concurrency = 2")
    try:
        reset()
        run_id, status = run_and_wait(db, job)
    finally:
        db.q("RESET etl_exec.default_concurrency")
    assert status == "succeeded"
    assert stats()["inflight_max"] == 2
    assert db.run_row(run_id)["settings"]["default_concurrency"] == 2


@pytest.mark.parametrize("value", [0, -1, 65])
def test_concurrency_out_of_range_is_refused(db, value):
    db.patients_table("pp_bad")
    with pytest.raises(psycopg2.Error) as e:
        db.job("ppbad", "/odata/Patients?n=10", "pp_bad", concurrency=value)
    assert e.value.pgcode == "22023"
    assert f'job "ppbad": concurrency must be between 1 and 64, not {value}' in str(e.value)
    assert "NULL takes etl_exec.default_concurrency" in e.value.diag.message_hint
    assert db.one("SELECT count(*) FROM dw_etl_jobs WHERE name = 'ppbad'") == 0


def test_the_setting_is_checked_too(db):
    for bad in ("0", "65"):
        with pytest.raises(psycopg2.Error) as e:
            db.q(f"SET etl_exec.default_concurrency = {bad}")
        assert "is outside the valid range" in str(e.value)


@pytest.mark.parametrize("style", ["offset", "page"])
def test_timeouts_and_resumes_with_8_in_flight_are_exact(db, style):
    table = f"pp_to_{style}"
    db.patients_table(table)
    if style == "offset":
        job = db.job(f"ppto{style}", "/odata/Patients?n=20000&delay_ms=150", table, page_size=100,
                     pagination_options=TOTAL, concurrency=8, checkpoint_interval_seconds=0)
    else:
        job = db.job(f"ppto{style}", "/paged/Patients?n=20000&delay_ms=150", table, pagination="page",
                     page_size=100, pagination_options=PAGED, records_path="$.items[*]",
                     concurrency=8, checkpoint_interval_seconds=0)
    # 200 pages of 150 ms, 8 at a time: ~4 s of requests in 1 s segments
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    statuses = db.resume_until_done(run_id, timeout=1)
    assert statuses.count("timed_out") >= 2, statuses
    db.assert_patients_exact(table, 20000)
    row = db.run_row(run_id)
    assert row["records_loaded"] == 20000
    assert row["pages_fetched"] == 200


@pytest.mark.parametrize("style", ["offset", "page"])
def test_cancels_and_resumes_with_8_in_flight_are_exact(db, style):
    db.patients_table("pp_cancel")
    if style == "offset":
        job = db.job("ppcancel", "/odata/Patients?n=12000&delay_ms=150", "pp_cancel", page_size=100,
                     pagination_options=TOTAL, concurrency=8, checkpoint_interval_seconds=0)
    else:
        job = db.job("ppcancel", "/paged/Patients?n=12000&delay_ms=150", "pp_cancel", pagination="page",
                     page_size=100, pagination_options=PAGED, records_path="$.items[*]",
                     concurrency=8, checkpoint_interval_seconds=0)
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    cancels = 0
    for _ in range(40):
        time.sleep(0.6)
        if db.one("SELECT status FROM dw_etl_runs WHERE run_id = %s", (run_id,)) != "running":
            break
        if db.one("SELECT etl_cancel_run(%s)", (run_id,)):
            status = db.wait(run_id)
            if status == "succeeded":
                break
            assert status == "cancelled"
            cancels += 1
            db.q("SELECT etl_resume_run(%s)", (run_id,))
    assert db.wait(run_id) == "succeeded"
    assert cancels >= 2
    db.assert_patients_exact("pp_cancel", 12000)


def test_a_cancel_stops_every_request_in_flight_at_once(db):
    db.patients_table("pp_stop")
    job = db.job("ppstop", "/odata/Patients?n=2000&delay_ms=20000", "pp_stop", page_size=100,
                 pagination_options=TOTAL, concurrency=16)
    reset()
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    for _ in range(100):
        if stats()["inflight_max"] == 16:
            break
        time.sleep(0.1)
    assert stats()["inflight_max"] == 16
    t0 = time.time()
    assert db.one("SELECT etl_cancel_run(%s)", (run_id,))
    assert db.wait(run_id) == "cancelled"
    assert time.time() - t0 < 5              # not the 20 s the API takes to answer
    assert db.one("SELECT count(*) FROM pp_stop") == 0


def test_nothing_is_asked_past_a_reported_total(db):
    db.patients_table("pp_total")
    # 47 pages; the first 8 are asked before the total is known, all exist
    job = db.job("pptotal", "/odata/Patients?n=4650&delay_ms=30", "pp_total", page_size=100,
                 pagination_options=TOTAL, concurrency=8)
    reset()
    run_id, status = run_and_wait(db, job)
    assert status == "succeeded"
    db.assert_patients_exact("pp_total", 4650)
    assert stats()["past_end"] == 0
    assert stats()["requests"] == 47


def test_pages_after_the_first_empty_page_are_dropped_unseen(db):
    db.patients_table("pp_empty")
    # no total: the run learns of the end from the first empty page
    job = db.job("ppempty", "/odata/Patients?n=2500&no_count=1&delay_ms=30", "pp_empty", page_size=100,
                 concurrency=8)
    reset()
    run_id, status = run_and_wait(db, job)
    assert status == "succeeded"
    db.assert_patients_exact("pp_empty", 2500)
    row = db.run_row(run_id)
    assert row["pages_fetched"] == 26           # 25 full pages and the empty one
    assert 1 <= stats()["past_end"] <= 8        # at most a window's worth asked past the end


def test_a_short_page_ends_the_run_with_stop_on_short_page(db):
    db.patients_table("pp_short_end")
    job = db.job("ppshortend", "/odata/Patients?n=2550&no_count=1&delay_ms=30", "pp_short_end",
                 page_size=100, pagination_options={"stop_on_short_page": True}, concurrency=8)
    reset()
    run_id, status = run_and_wait(db, job)
    assert status == "succeeded"
    db.assert_patients_exact("pp_short_end", 2550)
    assert db.run_row(run_id)["pages_fetched"] == 26


def test_fewer_rows_than_asked_mid_stream_skips_and_repeats_nothing(db):
    db.patients_table("pp_short_mid")
    # the page at offset 1000 holds 70 records of 100 and is not the last:
    # the pages in flight after it asked from offsets 1100, 1200, ... which
    # would skip records 1071..1100; the run goes on one request at a time
    job = db.job("ppshortmid", "/odata/Patients?n=5000&short_at=1000&short_by=30&delay_ms=20",
                 "pp_short_mid", page_size=100, pagination_options=TOTAL, concurrency=8)
    reset()
    run_id, status = run_and_wait(db, job)
    assert status == "succeeded"
    db.assert_patients_exact("pp_short_mid", 5000)
    cp = db.run_row(run_id)["run_context"]["checkpoint"]
    assert cp["sequential_from_page"] == 11      # pages 1..11 went in the window
    assert cp["skip"] == 5000


def test_one_request_at_a_time_lasts_through_a_resume(db):
    db.patients_table("pp_short_resume")
    job = db.job("ppshortres", "/odata/Patients?n=3000&short_at=500&short_by=10&delay_ms=150",
                 "pp_short_resume", page_size=100, pagination_options=TOTAL, concurrency=8,
                 checkpoint_interval_seconds=0)
    reset()
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 2)", (job,))
    assert db.wait(run_id) == "timed_out"
    assert db.run_row(run_id)["run_context"]["checkpoint"]["sequential_from_page"] == 6
    reset()
    db.q("SELECT etl_resume_run(%s)", (run_id,))
    assert db.wait(run_id) == "succeeded"
    assert stats()["inflight_max"] == 1
    db.assert_patients_exact("pp_short_resume", 3000)


@pytest.mark.parametrize("style", ["next_link", "cursor"])
def test_link_and_cursor_paging_stay_one_request_at_a_time(db, style):
    table = f"pp_{style}"
    db.patients_table(table)
    if style == "next_link":
        job = db.job("ppnext", "/nextlink/Patients?n=2000&$top=100&delay_ms=30", table, pagination="next_link",
                     page_size=100, concurrency=8)
    else:
        job = db.job("ppcursor", "/cursor/Patients?n=2000&limit=100&delay_ms=30", table, pagination="cursor",
                     page_size=100, records_path="$.data[*]", concurrency=8,
                     pagination_options={"next_path": "$.meta.next_cursor", "cursor_param": "cursor"})
    reset()
    run_id, status = run_and_wait(db, job)
    assert status == "succeeded"
    assert stats()["inflight_max"] == 1
    db.assert_patients_exact(table, 2000)


def test_an_error_past_the_end_never_fails_the_run(db):
    db.patients_table("pp_err_end")
    # no total; offset 2500 (past the end, asked while the window is ahead)
    # would answer 400 -- it is never read, so the run succeeds
    job = db.job("pperrend", "/odata/Patients?n=2000&no_count=1&fail_at=2500&fail_status=400&delay_ms=30",
                 "pp_err_end", page_size=100, concurrency=8)
    reset()
    run_id, status = run_and_wait(db, job)
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("pp_err_end", 2000)


def test_a_failing_page_keeps_every_page_before_it(db):
    db.patients_table("pp_err_mid")
    job = db.job("pperrmid", "/odata/Patients?n=5000&fail_at=1500&fail_status=404&delay_ms=30",
                 "pp_err_mid", page_size=100, pagination_options=TOTAL, concurrency=8,
                 checkpoint_interval_seconds=0)
    reset()
    run_id, status = run_and_wait(db, job)
    assert status == "failed"
    row = db.run_row(run_id)
    assert "HTTP 404" in row["error_message"] and "skip=1500" in row["error_message"].replace("%24", "$")
    assert row["records_loaded"] == 1500
    assert db.one("SELECT count(*) FROM pp_err_mid") == 1500
    assert db.one("SELECT skip FROM etl_get_checkpoint(%s)", (run_id,)) == 1500


def test_retries_in_flight_are_per_page(db):
    db.patients_table("pp_retry")
    # offsets 300 and 700 fail twice each with 503 while others are in flight
    job = db.job("ppretry", "/odata/Patients?n=3000&fail_every=7&fail_status=503&retry_after=0&delay_ms=20",
                 "pp_retry", page_size=100, pagination_options=TOTAL, concurrency=8, max_retries=3)
    reset()
    run_id, status = run_and_wait(db, job)
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("pp_retry", 3000)
    assert db.run_row(run_id)["run_context"]["retries"] >= 3


def test_32_in_flight_is_exact(db):
    db.patients_table("pp_32")
    job = db.job("pp32", "/odata/Patients?n=20000&delay_ms=250", "pp_32", page_size=100,
                 pagination_options=TOTAL, concurrency=32)
    reset()
    # above etl_exec.max_concurrency (16): a superuser raises the ceiling
    run_id = run_in_session(db, "SELECT etl_execute_job(%s)", (job,), ["SET etl_exec.max_concurrency = 64"])
    status = db.wait(run_id)
    assert status == "succeeded"
    assert stats()["inflight_max"] == 32
    db.assert_patients_exact("pp_32", 20000)


# ---- found in review: each failed before its fix

@pytest.mark.parametrize("concurrency", [1, 4])
def test_allowed_hosts_applies_to_the_first_url_at_any_concurrency(db, concurrency):
    db.patients_table("pp_allow")
    job = db.job("ppallow", "/odata/Patients?n=500", "pp_allow", page_size=100,
                 pagination_options=TOTAL, concurrency=concurrency)
    reset()
    run_id = run_in_session(db, "SELECT etl_execute_job(%s)", (job,),
                            ["SET etl_exec.allowed_hosts = 'api.example.com'"])
    assert db.wait(run_id) == "failed"
    assert 'host "127.0.0.1" is not in etl_exec.allowed_hosts' in db.run_row(run_id)["error_message"]
    assert stats()["requests"] == 0
    assert db.one("SELECT count(*) FROM pp_allow") == 0


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_load_slower_than_the_request_timeout_spends_no_retry(db, concurrency):
    # pages in flight are not driven while a page loads: their timers run
    # out with the answer waiting in the socket; they are sent again free
    db.patients_table("pp_slow")
    db.q("""CREATE OR REPLACE FUNCTION pp_slow_trg() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.patientid % 100 = 1 THEN PERFORM pg_sleep(1.2); END IF; RETURN NEW; END $$""")
    db.q("CREATE TRIGGER pp_slow BEFORE INSERT ON pp_slow FOR EACH ROW EXECUTE FUNCTION pp_slow_trg()")
    job = db.job("ppslow", "/odata/Patients?n=600", "pp_slow", page_size=100, pagination_options=TOTAL,
                 concurrency=concurrency, request_timeout_ms=500, max_retries=0)
    run_id, status = run_and_wait(db, job, timeout=60)
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("pp_slow", 600)


def test_a_resume_asks_nothing_past_the_total_it_knows(db):
    db.patients_table("pp_past")
    job = db.job("pppast", "/odata/Patients?n=1000&fail_at=700&fail_status=400&fail_times=1", "pp_past",
                 page_size=100, pagination_options=TOTAL, concurrency=8, checkpoint_interval_seconds=0)
    reset()
    run_id, status = run_and_wait(db, job)
    assert status == "failed"
    before = stats()
    db.q("SELECT etl_resume_run(%s)", (run_id,))
    assert db.wait(run_id) == "succeeded"
    assert stats()["past_end"] - before["past_end"] == 0
    assert stats()["requests"] - before["requests"] == 3       # offsets 700, 800, 900
    db.assert_patients_exact("pp_past", 1000)


def test_a_revoked_oauth_token_is_fetched_again_once_with_8_in_flight(db):
    origin = "127.0.0.1:" + MOCK_API.rsplit(":", 1)[1]
    db.q("DELETE FROM dw_etl_secrets WHERE name = 'oauth_pp'")
    db.q("INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES ('oauth_pp', %s, %s)",
         (json.dumps({"token_url": MOCK_API + "/oauth/token", "client_id": "etl", "client_secret": "s3cret"}),
          [origin]))
    db.patients_table("pp_oauth")
    job = db.job("ppoauth", "/odata/Patients?n=8000&oauth=1&delay_ms=300", "pp_oauth", concurrency=8,
                 page_size=100, headers={"Authorization": "Bearer {oauth2:oauth_pp}"}, pagination_options=TOTAL)
    reset()
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    time.sleep(1.2)
    urllib.request.urlopen(MOCK_API + "/__revoke_tokens").read()
    assert db.wait(run_id) == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("pp_oauth", 8000)
    assert stats()["token_requests"] == 2       # the first, and one after the 401s
    assert db.run_row(run_id)["run_context"]["retries"] == 0


def test_pages_longer_than_asked_go_on_one_request_at_a_time(db):
    # the server ignores the limit parameter: 100 records where 50 were asked
    db.patients_table("pp_long")
    job = db.job("pplong", "/odata/Patients?n=2000", "pp_long", page_size=50,
                 pagination_options=dict(TOTAL, limit_param="bogus"), concurrency=4)
    reset()
    run_id, status = run_and_wait(db, job)
    assert status == "succeeded"
    db.assert_patients_exact("pp_long", 2000)
    assert stats()["requests"] <= 20 + 4       # not a window asked again for every page
    assert db.run_row(run_id)["run_context"]["checkpoint"]["sequential_from_page"] == 1


def test_redirected_pages_stay_in_flight_together(db):
    db.patients_table("pp_redir")
    job = db.job("ppredir", "/odata/Patients?n=3000&delay_ms=300&redirect=1&rate_key=ppredir", "pp_redir",
                 page_size=100, pagination_options=TOTAL, concurrency=8)
    reset()
    run_id, status = run_and_wait(db, job)
    assert status == "succeeded"
    db.assert_patients_exact("pp_redir", 3000)
    # the second hops (200s) arrive together, not one per 300 ms answer
    arrivals = sorted(t for t, st in stats()["rate"]["ppredir"]["events"] if st == 200)
    assert len(arrivals) == 30
    together = max(sum(1 for u in arrivals if t <= u < t + 0.15) for t in arrivals)
    assert together >= 4, arrivals


def test_retries_are_counted_once_when_a_fetch_ahead_is_stopped(db):
    db.patients_table("pp_retries")
    job = db.job("ppretries", "/nextlink/Patients?n=20000&delay_ms=100&fail_at=300&fail_status=500&fail_times=2",
                 "pp_retries", pagination="next_link", page_size=100, concurrency=1,
                 checkpoint_interval_seconds=0)
    reset()
    run_id = run_in_session(db, "SELECT etl_execute_job(%s, timeout := 2)", (job,),
                            ["SET etl_exec.retry_base_delay_ms = 10"])
    assert db.wait(run_id) == "timed_out"
    assert db.run_row(run_id)["run_context"]["retries"] == 2
