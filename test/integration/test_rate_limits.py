"""A rate budget per host, shared by every run (issue 12 section 2):
dw_etl_hosts (requests per second, requests in flight), the API's own
rate-limit headers, 429 pauses for every run, resume_after, and the wait in
etl_run_progress.

The module runs its own mock API (on a port of its own), so that the pauses
and quotas it sets up -- which every run of the server shares -- never reach
another module's requests; each test names its own rate bucket."""
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone

import psycopg2
import pytest

from conftest import connect

HERE = os.path.dirname(os.path.abspath(__file__))
MOCK_SCRIPT = os.path.join(HERE, "..", "mock_api.py")
TOTAL = {"total_path": '$."@odata.count"'}


@pytest.fixture(scope="module")
def api():
    """A private mock API: (base URL, host key as etl_exec names it)."""
    proc = subprocess.Popen([os.environ.get("PYTHON", sys.executable), MOCK_SCRIPT, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    assert "listening on" in line, line
    port = int(line.rsplit(":", 1)[1])
    yield "http://127.0.0.1:%d" % port, "127.0.0.1:%d" % port
    proc.terminate()
    proc.wait(10)


def stats(api, key):
    with urllib.request.urlopen(api[0] + "/__stats") as r:
        return json.load(r)["rate"].get(key, {"events": [], "per_window": {}, "throttled": 0,
                                              "max_in_flight": 0})


def job(db, api, name, query, target, **cols):
    """A job against the private mock: /odata/Patients?<query>."""
    db.patients_table(target)
    db.q("DELETE FROM dw_etl_runs WHERE job_id IN (SELECT job_id FROM dw_etl_jobs WHERE name = %s)", (name,))
    db.q("DELETE FROM dw_etl_jobs WHERE name = %s", (name,))
    cols.setdefault("pagination_options", json.dumps(TOTAL))
    names = ["name", "url", "target_table"] + list(cols)
    values = [name, api[0] + "/odata/Patients?" + query, target] + list(cols.values())
    return db.one(f"INSERT INTO dw_etl_jobs ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(values))}) "
                  "RETURNING job_id", values)


def hosts(db, *rows):
    db.q("DELETE FROM dw_etl_hosts")
    for r in rows:
        db.q("INSERT INTO dw_etl_hosts VALUES (%s, %s, %s)", r)


def no_pause_left(db, api, timeout=40):
    """Wait until the private host is neither paused nor waiting for a quota."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not db.one("SELECT count(*) FROM etl_host_budgets() WHERE host = %s AND "
                      "(paused_until > now() OR (quota_remaining = 0 AND quota_reset_at > now()))", (api[1],)):
            return
        time.sleep(0.2)
    raise AssertionError("the host stays paused")


@pytest.fixture(autouse=True)
def clean(db, api):
    hosts(db)
    no_pause_left(db, api)
    yield
    hosts(db)


# ---------- the header parser ----------

def parsed(db, *lines):
    return db.one("SELECT _etl_rate_headers(%s)", ("\r\n".join(lines) + "\r\n",))


def test_header_forms(db):
    now = time.time()
    # Retry-After: seconds, an HTTP date (capped at a day), nonsense
    assert parsed(db, "HTTP/1.1 429 Too Many Requests", "Retry-After: 7")["retry_after_ms"] == 7000
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert 25000 <= parsed(db, "Retry-After: " + when)["retry_after_ms"] <= 31000
    assert parsed(db, "Retry-After: soon")["retry_after_ms"] == -1
    # X-RateLimit-*: the reset as seconds to go, epoch seconds, epoch ms
    h = parsed(db, "X-RateLimit-Limit: 100", "X-RateLimit-Remaining: 42", "X-RateLimit-Reset: 20")
    assert (h["remaining"], h["reset_ms"]) == (42, 20000)
    h = parsed(db, "x-ratelimit-remaining: 3", "x-ratelimit-reset: %d" % (now + 10))
    assert h["remaining"] == 3 and 8000 <= h["reset_ms"] <= 11000
    h = parsed(db, "X-RateLimit-Remaining: 3", "X-RateLimit-Reset: %d" % ((now + 10) * 1000))
    assert h["remaining"] == 3 and 8000 <= h["reset_ms"] <= 11000
    assert parsed(db, "X-Rate-Limit-Remaining: 9", "X-Rate-Limit-Reset: 1.5")["reset_ms"] == 1500
    # IETF: the separate fields, the dictionary, the list of policies
    h = parsed(db, "RateLimit-Limit: 10", "RateLimit-Remaining: 4", "RateLimit-Reset: 2",
               "RateLimit-Policy: 10;w=1")
    assert (h["remaining"], h["reset_ms"]) == (4, 2000)
    h = parsed(db, "RateLimit: limit=100, remaining=5, reset=9")
    assert (h["remaining"], h["reset_ms"]) == (5, 9000)
    h = parsed(db, 'RateLimit: "default";r=50;t=30, "burst";r=0;t=2', 'RateLimit-Policy: "default";q=100;w=60')
    assert (h["remaining"], h["reset_ms"]) == (0, 2000)     # the most restrictive policy
    h = parsed(db, "RateLimit: day;r=900;t=40000, minute;r=7;t=12")
    assert (h["remaining"], h["reset_ms"]) == (7, 12000)
    # families together: the fewest remaining wins
    h = parsed(db, "X-RateLimit-Remaining: 10", "X-RateLimit-Reset: 5", "RateLimit-Remaining: 2",
               "RateLimit-Reset: 8")
    assert (h["remaining"], h["reset_ms"]) == (2, 8000)
    # nothing said; and a new status line (after 100 Continue) starts over
    assert parsed(db, "Content-Type: application/json") == {"retry_after_ms": -1, "remaining": -1, "reset_ms": -1}
    assert parsed(db, "Retry-After: 3", "HTTP/1.1 200 OK", "X-RateLimit-Remaining: 1")["retry_after_ms"] == -1


# ---------- dw_etl_hosts ----------

def test_hosts_are_validated(db):
    db.q("INSERT INTO dw_etl_hosts VALUES ('API.Example.COM', 2.5, 4), ('10.0.0.5:8443', NULL, 1), "
         "('[2001:db8::1]:8080', 0.5, NULL)")
    assert [r[0] for r in db.q("SELECT host FROM dw_etl_hosts ORDER BY host")] == \
        ["10.0.0.5:8443", "[2001:db8::1]:8080", "api.example.com"]
    bad = [
        (("https://api.example.com/v1", 1, 1), "must be a host name, not a URL"),
        (("api.example.com:0", 1, 1), "is not a host or host:port"),
        (("api.example.com:70000", 1, 1), "is not a host or host:port"),
        (("api example.com", 1, 1), "is not a host or host:port"),
        (("ok.example.com", 0, 1), "max_requests_per_second of host \"ok.example.com\" must be more than 0"),
        (("ok.example.com", -3, 1), "must be more than 0"),
        (("ok.example.com", "NaN", 1), "must be more than 0"),
        (("ok.example.com", 1, 0), "max_concurrency of host \"ok.example.com\" must be 1 or more"),
    ]
    for row, message in bad:
        with pytest.raises(psycopg2.errors.InvalidParameterValue) as e:
            db.q("INSERT INTO dw_etl_hosts VALUES (%s, %s, %s)", row)
        assert message in str(e.value), str(e.value)
        assert e.value.diag.message_hint
    with pytest.raises(psycopg2.errors.InvalidParameterValue):
        db.q("UPDATE dw_etl_hosts SET max_concurrency = -1 WHERE host = 'api.example.com'")
    # kept by pg_dump, like the jobs
    assert db.one("SELECT 'dw_etl_hosts'::regclass = ANY (extconfig) FROM pg_extension WHERE extname = 'etl_exec'")


def test_hosts_privileges(db):
    for r in ("rl_operator", "rl_admin"):
        db.q(f"DROP ROLE IF EXISTS {r}")
    db.q("CREATE ROLE rl_operator IN ROLE etl_operator")
    db.q("CREATE ROLE rl_admin")
    db.q("GRANT INSERT, UPDATE, DELETE ON dw_etl_jobs, dw_etl_hosts TO rl_admin")
    db.q("INSERT INTO dw_etl_hosts VALUES ('api.example.com', 5, 2)")
    try:
        db.q("SET ROLE rl_operator")
        assert db.one("SELECT max_concurrency FROM dw_etl_hosts") == 2     # operators read it
        db.q("SELECT * FROM etl_host_budgets()")                            # and see the shared state
        db.q("SELECT waiting_for_rate_limit, rate_limited_until FROM etl_run_progress")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            db.q("UPDATE dw_etl_hosts SET max_concurrency = 100")           # but do not change it
        db.q("RESET ROLE")
        db.q("SET ROLE rl_admin")
        db.q("UPDATE dw_etl_hosts SET max_concurrency = 3")                 # who writes jobs writes hosts
        db.q("RESET ROLE")
        db.q("SET ROLE rl_operator")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            db.q("SELECT _etl_rate_headers('Retry-After: 1')")              # internal
    finally:
        db.q("RESET ROLE")
    assert db.one("SELECT max_concurrency FROM dw_etl_hosts") == 3


def test_progress_view_ends_with_the_rate_limit_columns(db):
    # new columns go at the end: the rate limit's after 0.3.0's, the partitions' after them
    cols = [r[0] for r in db.q("SELECT attname FROM pg_attribute WHERE attrelid = 'etl_run_progress'::regclass "
                               "AND attnum > 0 ORDER BY attnum")]
    assert cols[-5:] == ["queue_position", "waiting_for_rate_limit", "rate_limited_until",
                         "partitions_done", "partitions_total"]


# ---------- runs against a rate-limited API ----------

def start(db, job_id, timeout=120):
    return db.one("SELECT etl_execute_job(%s, timeout := %s)", (job_id, timeout))


@pytest.mark.parametrize("headers", ["x", "x_delta", "x_epoch_ms", "ietf", "ietf_dict", "ietf_list"])
def test_two_jobs_share_the_apis_quota(db, api, headers):
    """Two jobs at once against a host allowing 10 requests a second, told
    only by its headers: both tables exact, few or no 429s."""
    key = "quota_" + headers
    q = f"n=300&rate_limit=10&rate_headers={headers}&rate_key={key}"
    a = job(db, api, "rq_a", q, "rq_a", page_size=20)
    b = job(db, api, "rq_b", q, "rq_b", page_size=20)
    runs = [start(db, a), start(db, b)]
    assert [db.wait(r) for r in runs] == ["succeeded", "succeeded"], [db.run_row(r) for r in runs]
    db.assert_patients_exact("rq_a", 300)
    db.assert_patients_exact("rq_b", 300)
    st = stats(api, key)
    assert st["throttled"] <= 2, st
    accepted = {}
    for t, status in st["events"]:
        if status == 200:
            accepted[int(t)] = accepted.get(int(t), 0) + 1
    assert sum(accepted.values()) == 2 * 15            # 15 pages each (the total says when to stop)
    assert max(accepted.values()) <= 10


def test_two_jobs_at_concurrency_8_stay_within_20_a_second(db, api):
    """The issue's scenario: an API allowing 20 requests a second (fixed
    windows, X-RateLimit-* headers, 429 beyond), two jobs with 8 requests in
    flight each: the API never accepts more than its limit in a second, few
    or no requests run into a 429, and both tables are exact."""
    q = "n=2000&rate_limit=20&rate_headers=x&delay_ms=40&rate_key=c8"
    a = job(db, api, "r8_a", q, "r8_a", page_size=20, concurrency=8)
    b = job(db, api, "r8_b", q, "r8_b", page_size=20, concurrency=8)
    runs = [start(db, a), start(db, b)]
    assert [db.wait(r) for r in runs] == ["succeeded", "succeeded"], [db.run_row(r) for r in runs]
    db.assert_patients_exact("r8_a", 2000)
    db.assert_patients_exact("r8_b", 2000)
    st = stats(api, "c8")
    accepted = {}
    for t, status in st["events"]:
        if status == 200:
            accepted[int(t)] = accepted.get(int(t), 0) + 1
    assert sum(accepted.values()) == 2 * 100
    assert max(accepted.values()) <= 20, accepted
    assert st["throttled"] <= 2, st["throttled"]
    assert st["max_in_flight"] > 1                     # the requests did overlap


def test_requests_per_second_across_runs_at_concurrency_8(db, api):
    """dw_etl_hosts at 10 requests a second: two runs with 8 requests in
    flight each stay within it in every second of the API's clock."""
    hosts(db, (api[1], 10, None))
    q = "n=1000&delay_ms=100&rate_key=spaced8"
    a = job(db, api, "rs8_a", q, "rs8_a", page_size=50, concurrency=8)
    b = job(db, api, "rs8_b", q, "rs8_b", page_size=50, concurrency=8)
    runs = [start(db, a), start(db, b)]
    assert [db.wait(r) for r in runs] == ["succeeded", "succeeded"]
    db.assert_patients_exact("rs8_a", 1000)
    db.assert_patients_exact("rs8_b", 1000)
    st = stats(api, "spaced8")
    assert sum(st["per_window"].values()) == 40            # 20 pages each
    assert max(st["per_window"].values()) <= 10, st["per_window"]


def test_requests_per_second_across_runs(db, api):
    """dw_etl_hosts spaces two runs' requests: never more than 4 in a second
    of the API's clock."""
    hosts(db, (api[1], 4, None))
    q = "n=180&rate_key=spaced"
    a = job(db, api, "rs_a", q, "rs_a", page_size=20)
    b = job(db, api, "rs_b", q, "rs_b", page_size=20)
    runs = [start(db, a), start(db, b)]
    assert [db.wait(r) for r in runs] == ["succeeded", "succeeded"]
    db.assert_patients_exact("rs_a", 180)
    db.assert_patients_exact("rs_b", 180)
    st = stats(api, "spaced")
    assert sum(st["per_window"].values()) == 18           # 9 pages each
    assert max(st["per_window"].values()) <= 4, st["per_window"]
    assert db.one("SELECT requests FROM etl_host_budgets() WHERE host = %s", (api[1],)) >= 18


def test_max_concurrency_across_runs(db, api):
    """max_concurrency 1: three runs' slow requests never overlap."""
    hosts(db, (api[1], None, 1))
    q = "n=100&delay_ms=150&rate_key=conc"
    ids = [job(db, api, f"rc_{i}", q, f"rc_{i}", page_size=25) for i in range(3)]
    runs = [start(db, j) for j in ids]
    assert [db.wait(r) for r in runs] == ["succeeded"] * 3
    for i in range(3):
        db.assert_patients_exact(f"rc_{i}", 100)
    st = stats(api, "conc")
    assert len(st["events"]) == 12                       # 4 pages each
    assert st["max_in_flight"] == 1
    assert db.one("SELECT in_flight FROM etl_host_budgets() WHERE host = %s", (api[1],)) == 0


def test_a_429_storm_pauses_every_run(db, api):
    """The first 4 requests get 429 with Retry-After: 1; every run waits out
    each pause (no request in the middle of one), no retry is spent, and
    both runs succeed."""
    q = "n=200&storm=4&storm_retry_after=1&rate_key=storm"
    a = job(db, api, "rst_a", q, "rst_a", page_size=50, max_retries=1)
    b = job(db, api, "rst_b", q, "rst_b", page_size=50, max_retries=1)
    runs = [start(db, a), start(db, b)]
    assert [db.wait(r) for r in runs] == ["succeeded", "succeeded"], [db.run_row(r) for r in runs]
    db.assert_patients_exact("rst_a", 200)
    db.assert_patients_exact("rst_b", 200)
    st = stats(api, "storm")
    assert st["throttled"] == 4
    times = [t for t, _ in st["events"]]
    for t, status in st["events"]:
        if status == 429:
            inside = [u for u in times if t + 0.3 <= u <= t + 0.7]
            assert not inside, (t, inside, st["events"])
    assert db.one("SELECT throttled FROM etl_host_budgets() WHERE host = %s", (api[1],)) >= 4


def test_progress_shows_the_wait(db, api):
    """A run paused by a 429 says so in etl_run_progress: which host, until when."""
    q = "n=100&storm=1&storm_retry_after=4&rate_key=progress"
    j = job(db, api, "rp", q, "rp", page_size=50)
    run_id = start(db, j)
    seen = None
    deadline = time.time() + 10
    while time.time() < deadline and seen is None:
        rows = db.q("SELECT waiting_for_rate_limit, rate_limited_until, now() FROM etl_run_progress "
                    "WHERE run_id = %s AND waiting_for_rate_limit IS NOT NULL", (run_id,))
        seen = rows[0] if rows else None
        time.sleep(0.1)
    assert seen is not None, "the wait never showed"
    host, until, now = seen
    assert host == api[1]
    assert 0 < (until - now).total_seconds() <= 5
    assert db.wait(run_id) == "succeeded"
    db.assert_patients_exact("rp", 100)
    assert db.q("SELECT 1 FROM etl_run_progress WHERE run_id = %s", (run_id,)) == []


def test_a_retry_after_past_the_deadline_ends_the_run_until_then(db, api):
    """A 429 whose Retry-After lies past the deadline ends the run timed_out
    at once, with its checkpoint and run_context.resume_after;
    etl_resume_pending leaves it alone until then, and resumes it after."""
    db.q("DELETE FROM dw_etl_runs WHERE status <> 'succeeded'")
    q = "n=400&storm=1&storm_retry_after=8&rate_key=deadline"
    j = job(db, api, "rd", q, "rd", page_size=100, checkpoint_interval_seconds=0)
    t0 = time.time()
    run_id = start(db, j, timeout=6)
    assert db.wait(run_id) == "timed_out"
    assert time.time() - t0 < 5                                   # at once, not at the deadline
    row = db.run_row(run_id)
    resume_after = datetime.fromisoformat(row["run_context"]["resume_after"])
    assert 2 < (resume_after - datetime.now(timezone.utc)).total_seconds() <= 9
    assert api[1] in row["error_message"] and "accepts requests again" in row["error_message"]
    assert "etl_resume_run(%d)" % run_id in row["error_message"]
    assert [r[0] for r in db.q("SELECT etl_resume_pending()")] == []   # not before resume_after
    assert db.run_row(run_id)["status"] == "timed_out"
    time.sleep(max(0.0, (resume_after - datetime.now(timezone.utc)).total_seconds()) + 0.3)
    assert [r[0] for r in db.q("SELECT etl_resume_pending()")] == [run_id]
    assert db.wait(run_id) == "succeeded"
    db.assert_patients_exact("rd", 400)
    row = db.run_row(run_id)
    assert "resume_after" not in row["run_context"] and row["resume_count"] == 1


def test_a_quota_spent_waits_for_its_reset(db, api):
    """3 requests per 2-second window and one run: it waits for each reset
    instead of running into 429s."""
    q = "n=200&rate_limit=3&rate_window=2&rate_headers=x&rate_key=window"
    j = job(db, api, "rw", q, "rw", page_size=25)
    run_id = start(db, j)
    assert db.wait(run_id) == "succeeded"
    db.assert_patients_exact("rw", 200)
    st = stats(api, "window")
    assert st["throttled"] == 0, st
    assert len(st["events"]) == 8


def test_a_terminated_worker_gives_its_requests_back(db, api):
    """max_concurrency 1: a worker terminated mid-request leaves nothing
    counted, and the next run goes ahead."""
    hosts(db, (api[1], None, 1))
    j = job(db, api, "rk", "n=60&delay_ms=5000&rate_key=kill", "rk", page_size=20)
    run_id = start(db, j)
    deadline = time.time() + 10
    while db.one("SELECT coalesce(max(in_flight), 0) FROM etl_host_budgets() WHERE host = %s", (api[1],)) != 1:
        assert time.time() < deadline
        time.sleep(0.05)
    pid = db.one("SELECT worker_pid FROM dw_etl_runs WHERE run_id = %s", (run_id,))
    db.q("SELECT pg_terminate_backend(%s)", (pid,))
    assert db.wait(run_id) == "interrupted"
    assert db.one("SELECT in_flight FROM etl_host_budgets() WHERE host = %s", (api[1],)) == 0
    db.q("UPDATE dw_etl_jobs SET url = replace(url, 'delay_ms=5000', 'delay_ms=0') WHERE job_id = %s", (j,))
    db.q("DELETE FROM dw_etl_runs WHERE run_id = %s", (run_id,))
    assert db.wait(start(db, j)) == "succeeded"
    db.assert_patients_exact("rk", 60)


def test_a_dry_run_stopped_by_a_retry_after_offers_no_resume(db, api):
    """A dry run (or etl_infer_table's sample run) is never resumed: its
    message says to start a new one once the API accepts requests again."""
    q = "n=400&storm=1&storm_retry_after=8&rate_key=dry_deadline"
    j = job(db, api, "rdry", q, "rdry", page_size=100)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 6, dry_run := true)", (j,))
    assert db.wait(run_id) == "timed_out"
    message = db.run_row(run_id)["error_message"]
    assert message.startswith("etl_exec dry run %d stopped before its timeout of 6 s: %s accepts requests again at "
                              % (run_id, api[1])), message
    assert message.endswith(", after the run's deadline. Start a new one then."), message
    assert "etl_resume_run" not in message
