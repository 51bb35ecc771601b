"""Every pagination style: a full run, and a run that times out and is
resumed from its checkpoint, both ending with exactly the source's records.
Plus the stop rules, server-capped pages and loop detection."""
import json

import psycopg2
import pytest

N = 3000

STYLES = {
    # name: (url, pagination, page_size, pagination_options, records_path)
    "offset": ("/odata/Patients?n={n}", "offset", 500, {"total_path": '$."@odata.count"'}, "$.value[*]"),
    "offset_named": ("/array/Patients?n={n}", "offset", 500, {"skip_param": "offset", "limit_param": "limit"}, "$[*]"),
    "page": ("/paged/Patients?n={n}", "page", 500,
             {"page_param": "page", "limit_param": "per_page", "total_path": "$.total"}, "$.items[*]"),
    "page_zero_based": ("/paged/Patients?n={n}&first_page=0", "page", 500,
                        {"page_param": "page", "limit_param": "per_page", "first_page": 0}, "$.items[*]"),
    "next_link": ("/nextlink/Patients?n={n}&$top=500", "next_link", 500, {}, "$.value[*]"),
    "next_link_relative": ("/nextlink/Patients?n={n}&$top=500&relative=1", "next_link", 500, {}, "$.value[*]"),
    "next_link_trailing_empty": ("/nextlink/Patients?n={n}&$top=500&trailing_empty=1", "next_link", 500, {},
                                 "$.value[*]"),
    "fhir": ("/fhir/Patient?n={n}&_count=500", "next_link", 500,
             {"next_path": '$.link[*] ? (@.relation == "next").url', "total_path": "$.total"},
             "$.entry[*].resource"),
    "link_header": ("/linked/Patients?n={n}&per_page=500", "link_header", 500, {}, "$[*]"),
    "link_header_split": ("/linked/Patients?n={n}&per_page=500&split_link=1", "link_header", 500, {}, "$[*]"),
    "cursor": ("/cursor/Patients?n={n}&limit=500", "cursor", 500,
               {"next_path": "$.meta.next_cursor", "cursor_param": "cursor"}, "$.data[*]"),
    "none": ("/single/Patients?n={n}", "none", 1000, {}, "$.value[*]"),
}


def make_job(db, style, extra="", n=N, **cols):
    url, pagination, page_size, options, records_path = STYLES[style]
    table = f"s_{style}"
    db.patients_table(table)
    job = db.job(f"style_{style}", url.format(n=n) + extra, table, pagination=pagination, page_size=page_size,
                 pagination_options=options, records_path=records_path, checkpoint_interval_seconds=0, **cols)
    return job, table


@pytest.mark.parametrize("style", sorted(STYLES))
def test_full_run(db, style):
    job, table = make_job(db, style)
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = db.run_row(run_id)
    assert row["status"] == "succeeded"
    assert row["records_loaded"] == N
    db.assert_patients_exact(table, N)


@pytest.mark.parametrize("style", sorted(s for s in STYLES if s != "none"))
def test_timed_out_run_resumes_exactly(db, style):
    # one request at a time: 6 pages of 300 ms outlast the 1 s timeout
    job, table = make_job(db, style, extra="&delay_ms=300", concurrency=1)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    statuses = db.resume_until_done(run_id, timeout=1)
    assert "timed_out" in statuses, statuses
    db.assert_patients_exact(table, N)
    cp = db.q("SELECT next_url, cursor FROM etl_get_checkpoint(%s)", (run_id,))[0]
    # the last checkpoint of a finished link/cursor run has nothing left to follow
    assert cp == (None, None)


def test_checkpoint_holds_the_next_link_and_cursor(db):
    job, _ = make_job(db, "next_link", extra="&delay_ms=300")
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    assert db.wait(run_id) == "timed_out"
    next_url, page_index = db.q("SELECT next_url, page_index FROM etl_get_checkpoint(%s)", (run_id,))[0]
    assert next_url.startswith("http://127.0.0.1") and "$skiptoken=" in next_url
    assert page_index >= 1

    job, _ = make_job(db, "cursor", extra="&delay_ms=300")
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    assert db.wait(run_id) == "timed_out"
    cursor, next_url = db.q("SELECT cursor, next_url FROM etl_get_checkpoint(%s)", (run_id,))[0]
    assert cursor and next_url is None


def test_server_capping_the_page_advances_by_rows_received(db):
    db.patients_table("capped")
    job = db.job("capped", "/odata/Patients?n=2500&max_top=300", "capped", page_size=1000,
                 pagination_options={"total_path": '$."@odata.count"'})
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["pages_fetched"] == 9        # 8 pages of 300, one of 100
    db.assert_patients_exact("capped", 2500)


def test_short_page_stops_only_when_asked(db):
    db.patients_table("shortstop")
    job = db.job("shortstop", "/odata/Patients?n=2500&max_top=300&no_count=1", "shortstop", page_size=1000,
                 pagination_options={"stop_on_short_page": True})
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["records_loaded"] == 300     # the job asked: a short page is the last


@pytest.mark.parametrize("style,switch,expect", [
    ("next_link", "&repeat_link=1", "the API returned the same next link again"),
    ("next_link", "&cycle_link=1", "the API returned a next link it already gave earlier in this run"),
    ("cursor", "&repeat_cursor=1", "the API returned the same cursor again"),
])
def test_a_repeated_link_or_cursor_is_an_error_not_a_loop(db, style, switch, expect):
    job, table = make_job(db, style, extra=switch)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 30)", (job,))
    assert db.wait(run_id, timeout_s=30) == "failed"
    row = db.run_row(run_id)
    assert expect in row["error_message"]
    assert row["pages_fetched"] <= 3


def test_a_stored_link_the_api_rejects_on_resume_says_so(db):
    job, table = make_job(db, "next_link", extra="&delay_ms=300")
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    assert db.wait(run_id) == "timed_out"
    # the API no longer knows the stored link (as when a skiptoken expires)
    db.q("""UPDATE dw_etl_runs SET run_context = jsonb_set(run_context, '{checkpoint,next_url}',
            to_jsonb(regexp_replace(run_context #>> '{checkpoint,next_url}', 'skiptoken=[^&]*', 'skiptoken=expired')))
            WHERE run_id = %s""", (run_id,))
    db.q("SELECT etl_resume_run(%s)", (run_id,))
    assert db.wait(run_id) == "failed"
    msg = db.run_row(run_id)["error_message"]
    assert "HTTP 400" in msg and "invalid skiptoken" in msg
    assert "next link stored in the run's checkpoint" in msg and "rejected it" in msg


def test_replace_swaps_in_only_on_success(db):
    db.patients_table("repl")
    db.q("INSERT INTO repl (patientid, name) VALUES (-1, 'old row')")
    db.q("CREATE INDEX repl_name_idx ON repl (name)")
    db.q("GRANT SELECT ON repl TO etl_operator")
    job = db.job("repl", "/odata/Patients?n=3000&delay_ms=300", "repl", concurrency=1, page_size=500, load_mode="replace",
                 pagination_options={"total_path": '$."@odata.count"'}, checkpoint_interval_seconds=0)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    assert db.wait(run_id) == "timed_out"
    # the target is untouched while the run is unfinished; pages wait in staging
    assert db.q("SELECT patientid, name FROM repl") == [(-1, "old row")]
    staging = db.run_row(run_id)["run_context"]["staging"]["table"]     # the run's own, recorded
    staged = db.one(f"SELECT count(*) FROM {staging}")
    assert staged == db.run_row(run_id)["records_loaded"] > 0
    statuses = db.resume_until_done(run_id, timeout=1)
    assert statuses[-1] == "succeeded"
    db.assert_patients_exact("repl", 3000)
    assert db.one("SELECT to_regclass(%s) IS NULL", (staging,))
    assert db.one("SELECT count(*) FROM pg_indexes WHERE indexname = 'repl_name_idx'") == 1
    assert db.one("SELECT has_table_privilege('etl_operator', 'repl', 'SELECT')")


def test_replace_failure_leaves_the_target_as_it_was(db):
    db.patients_table("repl_fail")
    db.q("INSERT INTO repl_fail (patientid, name) VALUES (-1, 'old row')")
    job = db.job("repl_fail", "/odata/Patients?n=3000&fail_at=2000&fail_status=404", "repl_fail", page_size=500,
                 load_mode="replace")
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    assert db.q("SELECT patientid, name FROM repl_fail") == [(-1, "old row")]
