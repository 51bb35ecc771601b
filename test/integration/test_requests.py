"""Requests beyond GET (issue 13, sections 2 and 3): POST bodies with typed
placeholders, paging values in the body (from/size, search_after, GraphQL
cursors), next links and cursors from response headers, has_more, and
response rules (ignore, retry, fail) -- every style loads the mock exactly,
through timeouts and resumes too, and 8 pages in flight when the offset
lives in the body."""
import json
import urllib.request

import psycopg2
import pytest

from conftest import MOCK_API

SEARCH = {"skip_param": "body:from", "limit_param": "body:size", "total_path": "$.hits.total.value"}
GRAPHQL_QUERY = ("query Items($first: Int, $after: String) { items(first: $first, after: $after) "
                 "{ nodes { PatientId Name } pageInfo { endCursor hasNextPage } } }")
GRAPHQL = {"cursor_param": "body:variables.after", "next_path": "$.data.items.pageInfo.endCursor",
           "has_more_path": "$.data.items.pageInfo.hasNextPage"}


def stats():
    with urllib.request.urlopen(MOCK_API + "/__stats") as r:
        return json.loads(r.read())


def reset():
    urllib.request.urlopen(MOCK_API + "/__reset").read()


def job(db, name, url, target, **cols):
    for k in ("body", "response_rules"):
        if k in cols and cols[k] is not None and not isinstance(cols[k], str):
            cols[k] = json.dumps(cols[k])
    return db.job(name, url, target, **cols)


def run(db, job_id, timeout=None, parameters=None):
    run_id = db.one("SELECT etl_execute_job(%s, timeout := %s, parameters := %s)",
                    (job_id, timeout, json.dumps(parameters) if parameters else None))
    return run_id, db.wait(run_id)


def search_job(db, name, table, url="/search/Patients?n=2000", **cols):
    cols.setdefault("pagination_options", SEARCH)
    return job(db, name, url, table, method="POST", body={"query": {"match_all": {}}},
               page_size=100, records_path="$.hits.hits[*]", **cols)


def graphql_job(db, name, table, url="/graphql?n=1500", **cols):
    return job(db, name, url, table, method="POST", pagination="cursor", page_size=100,
               body={"query": GRAPHQL_QUERY, "variables": {"first": "{first}"}},
               parameters={"first": 100}, records_path="$.data.items.nodes[*]",
               pagination_options=GRAPHQL, **cols)


def seen(path):
    return [h for h in stats()["headers_seen"] if h["path"] == path]


# ---------------------------------------------------------------- POST bodies

@pytest.mark.parametrize("concurrency", [1, 8])
def test_search_paged_in_the_body_is_exact(db, concurrency):
    table = f"rq_search_{concurrency}"
    db.patients_table(table)
    # (slow enough pages that a worker stalled on a busy machine still has
    # all of its window in flight at once)
    query = "n=2000&delay_ms=%d" % (60 if concurrency == 1 else 200)
    j = search_job(db, f"rqsearch{concurrency}", table, url="/search/Patients?" + query,
                   concurrency=concurrency)
    reset()
    run_id, status = run(db, j)
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact(table, 2000)
    s = stats()
    assert s["requests"] == 20 and s["past_end"] == 0
    assert s["inflight_max"] == concurrency
    for h in seen("/search/Patients"):
        assert h["method"] == "POST" and h["Content-Type"] == "application/json"
        assert h["query"] == query                        # nothing of the paging in the URL
        assert h["body"]["query"] == {"match_all": {}}
        assert isinstance(h["body"]["from"], int) and h["body"]["size"] == 100
    assert sorted(h["body"]["from"] for h in seen("/search/Patients"))[-1] == 1900


def test_search_after_keeps_the_cursor_a_json_array(db):
    db.patients_table("rq_after")
    j = search_job(db, "rqafter", "rq_after", url="/search/Patients?n=1234", pagination="cursor",
                   pagination_options={"cursor_param": "body:search_after", "limit_param": "body:size",
                                       "next_path": "$.next_search_after"})
    reset()
    run_id, status = run(db, j)
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("rq_after", 1234)
    bodies = [h["body"] for h in seen("/search/Patients")]
    assert len(bodies) == 13
    assert "search_after" not in bodies[0]
    assert bodies[-1]["search_after"] == [1200, "k1200"]       # an array, its number a number


def test_graphql_cursor_in_variables_and_has_next_page(db):
    db.patients_table("rq_gql")
    j = graphql_job(db, "rqgql", "rq_gql")
    reset()
    run_id, status = run(db, j)
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("rq_gql", 1500)
    bodies = [h["body"] for h in seen("/graphql")]
    assert len(bodies) == 15                                  # hasNextPage false: no page past the end
    assert bodies[0] == {"query": GRAPHQL_QUERY, "variables": {"first": 100}}   # "{first}" became 100
    assert isinstance(bodies[1]["variables"]["after"], str)
    assert stats()["past_end"] == 0


def test_placeholders_keep_json_types_alone_and_are_text_inside_strings(db):
    db.patients_table("rq_typed")
    j = search_job(db, "rqtyped", "rq_typed",
                   pagination_options=dict(SEARCH, total_path="$.hits.total.value"))
    db.q("UPDATE dw_etl_jobs SET body = %s WHERE job_id = %s",
         (json.dumps({"query": {"range": {"PatientId": {"lte": "{max_id}"}}},
                      "label": "run {tag} up to {max_id}", "flags": ["{on}", "{ not a placeholder }"]}), j))
    reset()
    run_id, status = run(db, j, parameters={"max_id": 250, "tag": "nightly", "on": True})
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("rq_typed", 250)
    body = seen("/search/Patients")[0]["body"]
    assert body["query"]["range"]["PatientId"]["lte"] == 250
    assert body["label"] == "run nightly up to 250"
    assert body["flags"] == [True, "{ not a placeholder }"]


def test_a_body_placeholder_without_a_value_fails_clearly(db):
    db.patients_table("rq_missing")
    j = search_job(db, "rqmissing", "rq_missing")
    db.q("UPDATE dw_etl_jobs SET body = '{\"query\": {\"term\": \"{who}\"}}' WHERE job_id = %s", (j,))
    reset()
    run_id, status = run(db, j)
    assert status == "failed"
    row = db.run_row(run_id)
    assert "body placeholder {who} has no value" in row["error_message"]
    assert stats()["requests"] == 0                           # before any request
    with pytest.raises(psycopg2.Error) as e:
        db.q("SELECT etl_execute_job(%s, wait := true)", (j,))
    assert "body placeholder {who} has no value" in str(e.value)


def test_retries_send_the_body_again(db):
    db.patients_table("rq_retry_body")
    j = search_job(db, "rqretrybody", "rq_retry_body",
                   url="/search/Patients?n=500&fail_at=200&fail_status=503&fail_times=2&retry_after=0",
                   concurrency=1)
    reset()
    run_id, status = run(db, j)
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("rq_retry_body", 500)
    at_200 = [h for h in seen("/search/Patients") if h["body"]["from"] == 200]
    assert len(at_200) == 3 and all(h["method"] == "POST" and h["body"]["size"] == 100 for h in at_200)


@pytest.mark.parametrize("redirect_status", [307, 308])
def test_307_and_308_keep_the_post(db, redirect_status):
    db.patients_table("rq_redirect")
    j = search_job(db, "rqredirect", "rq_redirect",
                   url=f"/search/Patients?n=300&redirect=1&redirect_status={redirect_status}",
                   concurrency=1, max_retries=0)
    reset()
    run_id, status = run(db, j)
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("rq_redirect", 300)


@pytest.mark.parametrize("redirect_status", [301, 302, 303])
def test_301_302_303_turn_a_post_into_a_get(db, redirect_status):
    db.patients_table("rq_redirect_get")
    j = search_job(db, "rqredirectget", "rq_redirect_get",
                   url=f"/search/Patients?n=300&redirect=1&redirect_status={redirect_status}",
                   concurrency=1, max_retries=0)
    reset()
    run_id, status = run(db, j)
    assert status == "failed"
    assert "HTTP 405" in db.run_row(run_id)["error_message"]  # the mock's search takes POSTs only


# ---------------------------------------------------------- header cursors

def test_cursor_from_a_response_header(db):
    db.patients_table("rq_hcursor")
    j = job(db, "rqhcursor", "/hcursor/Patients?n=1050&limit=100", "rq_hcursor", pagination="cursor",
            pagination_options={"next_header": "X-Next-Cursor", "cursor_param": "cursor"},
            records_path="$.data[*]")
    reset()
    run_id, status = run(db, j)
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("rq_hcursor", 1050)
    assert stats()["requests"] == 11


def test_next_link_from_a_response_header(db):
    db.patients_table("rq_hnext")
    j = job(db, "rqhnext", "/hcursor/Patients?n=990&limit=100", "rq_hnext", pagination="next_link",
            pagination_options={"next_header": "X-Next-Url"}, records_path="$.data[*]")
    reset()
    run_id, status = run(db, j)
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("rq_hnext", 990)
    assert stats()["requests"] == 10


def test_stripe_lists_cursor_from_the_last_record_and_has_more(db):
    db.patients_table("rq_stripe")
    j = job(db, "rqstripe", "/stripe/customers?n=1000&limit=100", "rq_stripe", pagination="cursor",
            pagination_options={"cursor_param": "starting_after", "next_path": "$.data[last].PatientId",
                                "has_more_path": "$.has_more"},
            records_path="$.data[*]")
    reset()
    run_id, status = run(db, j)
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("rq_stripe", 1000)
    s = stats()
    assert s["requests"] == 10 and s["past_end"] == 0          # has_more false: no empty page asked
    assert "starting_after=900" in seen("/stripe/customers")[-1]["query"]


# --------------------------------------------------- timeouts and resumes

@pytest.mark.parametrize("style", ["search_offset", "search_offset_8", "search_after", "graphql", "hcursor"])
def test_timeouts_and_resumes_are_exact(db, style):
    table = f"rq_to_{style}"
    db.patients_table(table)
    slow = "delay_ms=120"
    if style.startswith("search_offset"):
        n = 16000 if style.endswith("8") else 3000
        j = search_job(db, f"rqto{style}", table, url=f"/search/Patients?n={n}&{slow}",
                       concurrency=8 if style.endswith("8") else 1, checkpoint_interval_seconds=0)
    elif style == "search_after":
        j = search_job(db, f"rqto{style}", table, url=f"/search/Patients?n=2500&{slow}", pagination="cursor",
                       pagination_options={"cursor_param": "body:search_after", "limit_param": "body:size",
                                           "next_path": "$.next_search_after"},
                       checkpoint_interval_seconds=0)
        n = 2500
    elif style == "graphql":
        j = graphql_job(db, f"rqto{style}", table, url=f"/graphql?n=2500&{slow}", checkpoint_interval_seconds=0)
        n = 2500
    else:
        j = job(db, f"rqto{style}", f"/hcursor/Patients?n=2500&limit=100&{slow}", table, pagination="cursor",
                pagination_options={"next_header": "X-Next-Cursor"}, records_path="$.data[*]",
                checkpoint_interval_seconds=0)
        n = 2500
    reset()
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (j,))
    statuses = db.resume_until_done(run_id, timeout=1)
    assert statuses.count("timed_out") >= 1, statuses
    db.assert_patients_exact(table, n)
    assert db.run_row(run_id)["records_loaded"] == n


def test_a_changed_body_refuses_the_resume(db):
    db.patients_table("rq_bodychg")
    j = search_job(db, "rqbodychg", "rq_bodychg", url="/search/Patients?n=3000&delay_ms=120",
                   concurrency=1, checkpoint_interval_seconds=0)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (j,))
    assert db.wait(run_id) == "timed_out"
    body = db.one("SELECT body FROM dw_etl_jobs WHERE job_id = %s", (j,))
    db.q("UPDATE dw_etl_jobs SET body = body || %s::jsonb WHERE job_id = %s", ('{"query": "other"}', j))
    with pytest.raises(psycopg2.Error, match="body"):
        db.q("SELECT etl_resume_run(%s)", (run_id,))
    db.q("UPDATE dw_etl_jobs SET body = %s WHERE job_id = %s", (json.dumps(body), j))
    db.q("SELECT etl_resume_run(%s, wait := true)", (run_id,))
    db.assert_patients_exact("rq_bodychg", 3000)


# ------------------------------------------------------------ response rules

@pytest.mark.parametrize("concurrency", [1, 8])
def test_ignore_a_404_ends_the_run_normally(db, concurrency):
    db.patients_table("rq_gone")
    j = job(db, "rqgone", "/odata/Patients?n=3000&gone_at=1200&delay_ms=20", "rq_gone", page_size=100,
            pagination_options={"total_path": '$."@odata.count"'}, concurrency=concurrency,
            response_rules=[{"status": 404, "action": "ignore"}])
    reset()
    run_id, status = run(db, j)
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("rq_gone", 1200)
    ctx = db.run_row(run_id)["run_context"]
    assert ctx["ignored_responses"] == 1 and ctx["last_ignored_status"] == 404


def test_without_a_rule_a_404_fails_as_before(db):
    db.patients_table("rq_gone_default")
    j = job(db, "rqgonedefault", "/odata/Patients?n=3000&gone_at=1200", "rq_gone_default", page_size=100,
            concurrency=1)
    reset()
    run_id, status = run(db, j)
    assert status == "failed"
    assert "HTTP 404" in db.run_row(run_id)["error_message"]
    db.assert_patients_exact("rq_gone_default", 1200)


def test_the_first_matching_rule_decides(db):
    db.patients_table("rq_first")
    j = job(db, "rqfirst", "/odata/Patients?n=1000&gone_at=500", "rq_first", page_size=100, concurrency=1,
            response_rules=[{"status": 404, "body_contains": "no such text", "action": "fail"},
                            {"status": "4xx", "action": "ignore"},
                            {"status": [400, 499], "action": "fail"}])
    reset()
    run_id, status = run(db, j)
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("rq_first", 500)


@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_200_with_an_error_marker_can_fail_the_run(db, concurrency):
    db.patients_table("rq_marker")
    j = job(db, "rqmarker", "/odata/Patients?n=3000&errorbody_at=1500&delay_ms=20", "rq_marker",
            page_size=100, pagination_options={"total_path": '$."@odata.count"'}, concurrency=concurrency,
            response_rules=[{"status": 200, "body_contains": '"status": "error"', "action": "fail"}])
    reset()
    run_id, status = run(db, j)
    assert status == "failed"
    msg = db.run_row(run_id)["error_message"]
    assert "HTTP 200" in msg and "backend unavailable" in msg, msg
    db.assert_patients_exact("rq_marker", 1500)              # the pages before it are in


def test_retry_rule_retries_a_200_with_an_error_marker(db):
    db.patients_table("rq_retry_marker")
    j = search_job(db, "rqretrymarker", "rq_retry_marker",
                   url="/search/Patients?n=800&errorbody_at=300&errorbody_times=2",
                   response_rules=[{"body_contains": "backend unavailable", "action": "retry"}])
    reset()
    run_id, status = run(db, j)
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("rq_retry_marker", 800)
    assert db.run_row(run_id)["run_context"]["retries"] == 2


def test_retry_rule_spends_retries_then_fails(db):
    db.patients_table("rq_retry_spent")
    j = job(db, "rqretryspent", "/odata/Patients?n=800&fail_at=300&fail_status=409", "rq_retry_spent",
            page_size=100, concurrency=1, max_retries=2,
            response_rules=[{"status": 409, "action": "retry"}])
    reset()
    run_id, status = run(db, j)
    assert status == "failed"
    assert "failed after 2 retries: HTTP 409" in db.run_row(run_id)["error_message"]
    assert stats()["fail_at"]["/odata/Patients@300"] == 3
    db.assert_patients_exact("rq_retry_spent", 300)


def test_retry_rule_makes_a_4xx_retryable(db):
    db.patients_table("rq_retry_409")
    j = job(db, "rqretry409", "/odata/Patients?n=800&fail_at=300&fail_status=409&fail_times=2",
            "rq_retry_409", page_size=100, concurrency=8,
            response_rules=[{"status": [409, 409], "action": "retry"}])
    reset()
    run_id, status = run(db, j)
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("rq_retry_409", 800)


def test_an_ignored_response_past_the_end_in_flight_is_not_counted(db):
    # pages in flight past the last one are dropped unseen: their 404 never counts
    db.patients_table("rq_past")
    j = job(db, "rqpast", "/odata/Patients?n=1000&no_count=1&gone_at=1300", "rq_past", page_size=100,
            concurrency=8, response_rules=[{"status": 404, "action": "ignore"}])
    reset()
    run_id, status = run(db, j)
    assert status == "succeeded", db.run_row(run_id)["error_message"]
    db.assert_patients_exact("rq_past", 1000)
    assert "ignored_responses" not in db.run_row(run_id)["run_context"]


# ---------------------------------------------------------------- validation

BAD = [
    (dict(method="PUT"), 'unknown method "PUT"', "Use GET (the default) or POST"),
    (dict(method="post"), 'unknown method "post"', "in capitals"),
    (dict(body={"q": 1}), "a GET sends no body", "Set method to 'POST'"),
    (dict(method="POST", body=5), "body must be a JSON object or array, not number", "{name}"),
    (dict(method="POST", body={"auth": "{secret:token}"}), "body placeholder {secret:token} would put a secret in the body",
     "Secrets go in headers"),
    (dict(method="POST", content_type="json"), 'content_type "json" is not a media type', "application/json"),
    (dict(pagination_options={"skip_param": "body:from"}), "puts the value in the body", "Set method to 'POST'"),
    (dict(method="POST", pagination_options={"skip_param": "body:a..b"}), 'is not a body path: "body:a..b"',
     "body:variables.after"),
    (dict(method="POST", body={"variables": "x"}, pagination="cursor",
          pagination_options={"cursor_param": "body:variables.after", "next_path": "$.c"}),
     'goes through member "variables" of the body, which is not an object', "Name a path of objects"),
    (dict(method="POST", body=[1], pagination_options={"skip_param": "body:from"}),
     "sets a member of the body, which is not a JSON object", "Make the body an object"),
    (dict(pagination="offset", pagination_options={"next_header": "X-Next"}),
     "next_header applies to next_link and cursor paging, not offset", "link_header"),
    (dict(pagination="cursor", pagination_options={"next_header": "X Next"}),
     'next_header is not a header name: "X Next"', "X-Next-Cursor"),
    (dict(pagination="cursor", pagination_options={"next_header": "X-Next", "next_path": "$.c"}),
     "next_header and next_path both say where the next cursor is", "Keep one"),
    (dict(pagination="cursor", pagination_options={}), "needs the pagination option next_path", "next_header"),
    (dict(pagination="cursor", pagination_options={"next_path": "$.data[-1].id"}),
     "counts an array from its end with a negative index", "$.data[last].id"),
    (dict(pagination="none", pagination_options={"has_more_path": "$.more"}),
     "has_more_path needs paging", "Remove has_more_path"),
    (dict(pagination_options={"has_more_path": "$.more["}), "has_more_path is not a valid jsonpath", None),
    (dict(response_rules={"status": 404}), "response_rules must be a JSON array of rules", "For example"),
    (dict(response_rules=[404]), "response rule 1 must be a JSON object", None),
    (dict(response_rules=[{"status": 404, "action": "skip"}]), 'response rule 1 has an unknown action "skip"',
     "ignore (an empty page"),
    (dict(response_rules=[{"status": 404}]), "response rule 1 has an unknown action (none)", "Use one of"),
    (dict(response_rules=[{"status": 404, "action": "ignore"}, {"status": "4x", "action": "fail"}]),
     'response rule 2 has a bad status "4x"', '"4xx"'),
    (dict(response_rules=[{"status": [599, 500], "action": "fail"}]), "response rule 1 has a bad status [599, 500]",
     "[500, 599]"),
    (dict(response_rules=[{"status": 700, "action": "fail"}]), "response rule 1 has a bad status 700", "100-599"),
    (dict(response_rules=[{"action": "fail"}]), "response rule 1 matches every response", "body_contains"),
    (dict(response_rules=[{"status": 404, "action": "ignore", "when": "always"}]),
     'response rule 1 has an unknown key "when"', None),
    (dict(response_rules=[{"body_contains": "", "action": "fail"}]), "body_contains that is not a non-empty string",
     None),
]


@pytest.mark.parametrize("cols,message,hint", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_requests_are_refused_when_written(db, cols, message, hint):
    db.patients_table("rq_bad")
    with pytest.raises(psycopg2.Error) as e:
        job(db, "rqbad", "/search/Patients", "rq_bad", **cols)
    assert e.value.pgcode == "22023", str(e.value)
    assert message in str(e.value), str(e.value)
    if hint:
        assert hint in (e.value.diag.message_hint or ""), e.value.diag.message_hint
    assert db.one("SELECT count(*) FROM dw_etl_jobs WHERE name = 'rqbad'") == 0


def test_good_requests_are_accepted(db):
    db.patients_table("rq_good")
    job(db, "rqgood", "/graphql", "rq_good", method="POST", pagination="cursor",
        body={"query": "{ items { nodes { id } } }", "variables": {"first": "{first}", "after": None}},
        content_type="application/json; charset=utf-8",
        pagination_options={"cursor_param": "body:variables.after", "next_header": "X-Next-Cursor",
                            "has_more_path": "$.data.items.pageInfo.hasNextPage"},
        response_rules=[{"status": 404, "action": "ignore"}, {"status": [500, 599], "action": "retry"},
                        {"status": "2xx", "body_contains": "\"errors\"", "action": "fail"}])
    row = db.one("SELECT method || ' ' || content_type FROM dw_etl_jobs WHERE name = 'rqgood'")
    assert row == "POST application/json; charset=utf-8"
