"""Partitions (dw_etl_jobs.partitions): one run over many parameter sets --
the rows of a query (parent -> child fan-out), date windows, a literal list
-- frozen when the run starts, each paged to its end, with one checkpoint
that says which partition the run is in.  Exactly once through timeouts,
cancels and resumes (kills and restarts: test/tap/005_partitions.pl); a
resume asks the frozen partitions even after the parent table changed."""
import json
import time
import urllib.request

import psycopg2
import pytest

import mock_api
from conftest import MOCK_API

TOTAL = {"total_path": '$."@odata.count"'}
ORDERS = "/parents/Customers/{customer_id}/Orders?per_parent=%d"


def stats():
    with urllib.request.urlopen(MOCK_API + "/__stats") as r:
        return json.loads(r.read())


def reset():
    urllib.request.urlopen(MOCK_API + "/__reset").read()


def customers(db, n, table="pt_customers"):
    db.q(f"DROP TABLE IF EXISTS {table}")
    db.q(f"CREATE TABLE {table} (id int PRIMARY KEY, active boolean NOT NULL DEFAULT true)")
    db.q(f"INSERT INTO {table} (id) SELECT generate_series(1, %s)", (n,))


def fan_out_job(db, name, table, per_parent, extra="", **cols):
    db.patients_table(table)
    cols.setdefault("partitions", {"query": "SELECT id AS customer_id FROM pt_customers WHERE active ORDER BY id"})
    cols["partitions"] = json.dumps(cols["partitions"])
    return db.job(name, (ORDERS % per_parent) + extra, table, page_size=10, pagination_options=TOTAL, **cols)


def test_a_300_parent_fan_out_loads_every_child_once(db):
    customers(db, 300)
    job = fan_out_job(db, "ptfan", "pt_fan", 20, extra="&delay_ms=60", concurrency=8)
    reset()
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = db.run_row(run_id)
    assert row["status"] == "succeeded", row["error_message"]
    db.assert_patients_exact("pt_fan", 6000)
    assert row["records_loaded"] == 6000
    assert row["pages_fetched"] == 600                     # 2 pages of 10 for each parent
    assert row["run_context"]["partitions_total"] == 300
    assert db.one("SELECT count(*) FROM dw_etl_run_partitions WHERE run_id = %s", (run_id,)) == 300
    assert db.one("SELECT parameters FROM dw_etl_run_partitions WHERE run_id = %s AND partition_index = 41",
                  (run_id,)) == {"customer_id": 42}
    cp = db.q("SELECT partition_index, partitions_total FROM etl_get_checkpoint(%s)", (run_id,))[0]
    assert cp == (299, 300)
    s = stats()
    assert s["by_path"]["/parents/Customers/*/Orders"] == 600   # nothing asked twice or past an end
    assert s["inflight_max"] == 8                               # different parents at once


def test_timeouts_and_resumes_of_a_fan_out_are_exact(db):
    customers(db, 300)
    job = fan_out_job(db, "ptto", "pt_to", 20, extra="&delay_ms=40", concurrency=4,
                      checkpoint_interval_seconds=0)
    # 600 pages of 40 ms, 4 at a time: ~6 s of requests in 1 s segments
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    statuses = db.resume_until_done(run_id, timeout=1)
    assert statuses.count("timed_out") >= 3, statuses
    db.assert_patients_exact("pt_to", 6000)
    assert db.run_row(run_id)["records_loaded"] == 6000


def test_cancels_and_resumes_of_a_fan_out_are_exact(db):
    customers(db, 200)
    job = fan_out_job(db, "ptcancel", "pt_cancel", 20, extra="&delay_ms=40", concurrency=4,
                      checkpoint_interval_seconds=0)
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    cancels = 0
    for _ in range(40):
        time.sleep(0.7)
        if db.one("SELECT etl_cancel_run(%s)", (run_id,)):
            status = db.wait(run_id)
            if status == "succeeded":
                break
            assert status == "cancelled"
            cancels += 1
            db.q("SELECT etl_resume_run(%s)", (run_id,))
        else:
            break
    assert db.wait(run_id) == "succeeded"
    assert cancels >= 2
    db.assert_patients_exact("pt_cancel", 4000)


def test_a_resume_asks_the_frozen_partitions_after_the_parents_changed(db):
    customers(db, 100)
    job = fan_out_job(db, "ptfrozen", "pt_frozen", 10, extra="&delay_ms=60", concurrency=2,
                      checkpoint_interval_seconds=0)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    assert db.wait(run_id) == "timed_out"
    done = db.one("SELECT partition_index FROM etl_get_checkpoint(%s)", (run_id,))
    assert 0 < done < 99
    # the parents change: half of them go, new ones come
    db.q("UPDATE pt_customers SET active = false WHERE id % 2 = 0")
    db.q("INSERT INTO pt_customers (id) SELECT generate_series(101, 150)")
    reset()
    db.q("SELECT etl_resume_run(%s)", (run_id,))
    assert db.wait(run_id) == "succeeded"
    db.assert_patients_exact("pt_frozen", 1000)                  # customers 1..100, as frozen
    asked = {h["path"] for h in stats()["headers_seen"]}
    assert all("/Orders" in p or p == "/parents/Customers/*/Orders" for p in asked)
    # a new run freezes the parents as they are now
    db.patients_table("pt_frozen")
    run2 = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run2)["run_context"]["partitions_total"] == 100    # 50 odd + 50 new
    assert db.one("SELECT count(*) FROM pt_frozen WHERE patientid > 1000") == 500


def test_the_parent_job_s_table_is_the_child_job_s_partitions(db):
    db.q("DROP TABLE IF EXISTS pt_parents")
    db.q('CREATE TABLE pt_parents ("customerid" int PRIMARY KEY, name text)')
    parent = db.job("ptparent", "/parents/Customers?n=25", "pt_parents", page_size=10, pagination_options=TOTAL)
    assert db.wait(db.one("SELECT etl_execute_job(%s)", (parent,))) == "succeeded"
    assert db.one("SELECT count(*) FROM pt_parents") == 25
    child = fan_out_job(db, "ptchild", "pt_child", 7,
                        partitions={"query": "SELECT customerid AS customer_id FROM pt_parents ORDER BY 1"})
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (child,))
    assert db.run_row(run_id)["status"] == "succeeded"
    db.assert_patients_exact("pt_child", 175)


def test_no_partitions_is_a_run_that_asks_nothing(db):
    customers(db, 5)
    db.q("UPDATE pt_customers SET active = false")
    job = fan_out_job(db, "ptnone", "pt_none", 10)
    reset()
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = db.run_row(run_id)
    assert row["status"] == "succeeded"
    assert row["records_loaded"] == 0 and row["pages_fetched"] == 0
    assert row["run_context"]["partitions_total"] == 0
    assert stats()["requests"] == 0


def test_a_literal_list_of_values_and_their_combinations(db):
    db.patients_table("pt_values")
    job = db.job("ptvalues", "/parents/Customers/{customer_id}/Orders?per_parent={per}", "pt_values",
                 page_size=10, pagination_options=TOTAL,
                 partitions=json.dumps({"values": {"customer_id": [1, 2, 3, 4], "per": [15]}}))
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["status"] == "succeeded"
    db.assert_patients_exact("pt_values", 60)
    assert [r[0] for r in db.q("SELECT parameters FROM dw_etl_run_partitions WHERE run_id = %s "
                               "ORDER BY partition_index", (run_id,))] == \
        [{"customer_id": i, "per": 15} for i in (1, 2, 3, 4)]


def test_date_windows_load_each_window_and_follow_on_from_the_last_success(db):
    db.patients_table("pt_dates")
    job = db.job("ptdates", "/events/Patients?from={from}&to={to}", "pt_dates", page_size=50,
                 pagination_options=TOTAL, load_mode="upsert", key_columns=["patientid"], concurrency=4,
                 parameters=json.dumps({"last_success_started_at": "2024-01-01T00:00:00Z"}),
                 partitions=json.dumps({"dates": {"start": "{last_success_started_at}", "end": "2024-01-06T00:00:00Z",
                                                   "step": "1 day", "lookback": "2 hours"}}))
    run1 = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run1)["status"] == "succeeded"
    # the first run has no success before it: it starts at the parameter's value, minus the lookback
    windows = [r[0] for r in db.q("SELECT parameters FROM dw_etl_run_partitions WHERE run_id = %s "
                                  "ORDER BY partition_index", (run1,))]
    assert windows[0] == {"from": "2023-12-31T22:00:00Z", "to": "2024-01-01T22:00:00Z"}
    assert windows[-1]["to"] == "2024-01-06T00:00:00Z"
    assert len(windows) == 6
    db.assert_patients_exact("pt_dates", 119)                 # hours 1..119
    # the next run starts where this one ended, minus the lookback
    db.q("""UPDATE dw_etl_jobs SET partitions = jsonb_set(partitions, '{dates,end}', '"2024-01-11T00:00:00Z"')
            WHERE job_id = %s""", (job,))
    run2 = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run2)["status"] == "succeeded"
    first = db.one("SELECT parameters FROM dw_etl_run_partitions WHERE run_id = %s AND partition_index = 0", (run2,))
    assert first == {"from": "2024-01-05T22:00:00Z", "to": "2024-01-06T22:00:00Z"}
    db.assert_patients_exact("pt_dates", 239)                 # overlap absorbed by the upsert


def test_a_failing_partition_keeps_every_partition_before_it(db):
    customers(db, 10)
    job = fan_out_job(db, "ptgone", "pt_gone", 10, extra="&gone=6", checkpoint_interval_seconds=0)
    run_id = db.one("SELECT etl_execute_job(%s, wait := false)", (job,))
    assert db.wait(run_id) == "failed"
    row = db.run_row(run_id)
    assert "HTTP 404" in row["error_message"] and "customer 6 is gone" in row["error_message"]
    assert "partition 6 of 10 of the run" in row["error_message"]
    assert db.one("SELECT count(*) FROM pt_gone") == 50
    assert db.one("SELECT partition_index FROM etl_get_checkpoint(%s)", (run_id,)) == 5


def test_a_gone_parent_is_skipped_by_a_response_rule(db):
    customers(db, 10)
    job = fan_out_job(db, "ptskip", "pt_skip", 10, extra="&gone=3,6", concurrency=4,
                      response_rules=json.dumps([{"status": 404, "action": "ignore"}]))
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = db.run_row(run_id)
    assert row["status"] == "succeeded", row["error_message"]
    assert row["run_context"]["ignored_responses"] == 2
    assert db.one("SELECT count(*) FROM pt_skip") == 80
    assert db.one("SELECT count(*) FROM pt_skip WHERE patientid BETWEEN 21 AND 30 OR patientid BETWEEN 51 AND 60") == 0


def test_progress_shows_partitions_done_of_all(db):
    customers(db, 40)
    job = fan_out_job(db, "ptprog", "pt_prog", 10, extra="&delay_ms=100", concurrency=1,
                      checkpoint_interval_seconds=0)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 60)", (job,))
    seen = None
    for _ in range(100):
        row = db.q("SELECT partitions_done, partitions_total FROM etl_run_progress WHERE run_id = %s", (run_id,))
        if row and row[0][0] and row[0][0] >= 2:
            seen = row[0]
            break
        time.sleep(0.1)
    assert seen is not None and seen[1] == 40 and 2 <= seen[0] < 40, seen
    db.q("SELECT etl_cancel_run(%s)", (run_id,))
    db.wait(run_id)


@pytest.mark.parametrize("partitions,message", [
    ({"query": "SELEC id FROM x"}, 'partitions query is not one SELECT'),
    ({"query": ""}, 'partitions query must be a non-empty string'),
    ({"query": "SELECT 1", "values": {"a": [1]}}, 'exactly one of the keys query, dates or values'),
    ({"rows": "x"}, 'exactly one of the keys query, dates or values'),
    ([1, 2], 'partitions must be a JSON object'),
    ({"values": {"region": []}}, 'partitions values "region" must be a non-empty array'),
    ({"values": {"region": [{"a": 1}]}}, 'partitions values "region" must be a non-empty array'),
    ({"dates": {"start": "2024-01-01T00:00:00Z"}}, 'partitions dates needs start and step'),
    ({"dates": {"start": "yesterday-ish", "step": "1 day"}}, 'partitions dates start "yesterday-ish" is not a timestamp'),
    ({"dates": {"start": "2024-01-01T00:00:00Z", "step": "soon"}}, 'partitions dates step "soon" is not an interval'),
    ({"dates": {"start": "2024-01-01T00:00:00Z", "step": "0 days"}}, 'partitions dates step must be at least 1 second'),
    ({"dates": {"start": "2024-01-01T00:00:00Z", "step": "1 day", "lookback": "-1 hour"}},
     'partitions dates lookback must be 0 or more'),
    ({"dates": {"start": "2024-01-01T00:00:00Z", "step": "1 day", "every": "x"}}, 'unknown partitions dates option "every"'),
])
def test_partitions_are_validated_when_written(db, partitions, message):
    db.patients_table("pt_bad")
    with pytest.raises(psycopg2.Error) as e:
        db.job("ptbad", "/odata/Patients", "pt_bad", partitions=json.dumps(partitions))
    assert e.value.pgcode == "22023"
    assert message in str(e.value), str(e.value)
    assert db.one("SELECT count(*) FROM dw_etl_jobs WHERE name = 'ptbad'") == 0


def test_a_query_that_fails_at_run_start_says_so(db):
    db.patients_table("pt_qfail")
    job = db.job("ptqfail", ORDERS % 5, "pt_qfail", partitions=json.dumps({"query": "SELECT id AS customer_id FROM pt_nowhere"}))
    with pytest.raises(psycopg2.Error) as e:
        db.q("SELECT etl_execute_job(%s)", (job,))
    assert 'relation "pt_nowhere" does not exist' in str(e.value)
    assert db.one("SELECT count(*) FROM dw_etl_runs WHERE job_id = %s", (job,)) == 0


# ---------- column_map "{param:NAME}": a parameter written into a column ----------

def orders_table(db, table, extra=""):
    db.patients_table(table)
    db.q(f"ALTER TABLE {table} ADD COLUMN customer_id int{extra}")


def assert_customers(db, table, n_rows, per_parent):
    """Every row carries the customer whose orders it came from."""
    assert db.one(f"SELECT count(*) FROM {table}") == n_rows
    assert db.one(f"SELECT count(*) FROM {table} WHERE customer_id = (patientid - 1) / {per_parent} + 1") == n_rows


def test_a_child_row_takes_its_parent_s_key_from_a_parameter(db):
    customers(db, 30)
    orders_table(db, "pt_param")
    job = fan_out_job(db, "ptparam", "pt_param", 20, concurrency=4,
                      column_map={"customer_id": "{param:customer_id}"})
    orders_table(db, "pt_param")
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = db.run_row(run_id)
    assert row["status"] == "succeeded", row["error_message"]
    assert_customers(db, "pt_param", 600, 20)
    # the other columns still map by name, every value intact
    db.q("ALTER TABLE pt_param DROP COLUMN customer_id")
    db.assert_patients_exact("pt_param", 600)


def test_parameter_columns_stay_right_through_timeouts_and_resumes(db):
    customers(db, 60)
    job = fan_out_job(db, "ptparamto", "pt_param_to", 20, extra="&delay_ms=40", concurrency=4,
                      checkpoint_interval_seconds=0, column_map={"customer_id": "{param:customer_id}"})
    orders_table(db, "pt_param_to")
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    statuses = db.resume_until_done(run_id, timeout=1)
    assert "timed_out" in statuses, statuses
    assert_customers(db, "pt_param_to", 1200, 20)
    assert db.one("SELECT count(DISTINCT patientid) FROM pt_param_to") == 1200


def test_parameters_beside_jsonpaths_and_as_an_upsert_key(db):
    customers(db, 12)
    job = fan_out_job(db, "ptparamup", "pt_param_up", 10, concurrency=4, load_mode="upsert",
                      key_columns="{customer_id,patientid}",
                      column_map={"patientid": "$.PatientId", "name": "$.Name",
                                  "customer_id": "{param:customer_id}"})
    db.q("DROP TABLE pt_param_up")
    db.q("""CREATE TABLE pt_param_up (customer_id int NOT NULL, patientid int NOT NULL, name text, visits int,
                                      PRIMARY KEY (customer_id, patientid))""")
    for _ in range(2):                              # the second run updates every row, inserts none
        run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
        assert db.run_row(run_id)["status"] == "succeeded", db.run_row(run_id)["error_message"]
    assert_customers(db, "pt_param_up", 120, 10)
    rows = db.q("SELECT patientid, name, visits FROM pt_param_up ORDER BY patientid")
    assert rows == [(i, mock_api.record(i)["Name"], None) for i in range(1, 121)]


def test_parameters_through_the_jsonb_path_and_csv_pages(db):
    customers(db, 5)
    # a json (not jsonb) column sends pages through the jsonb path
    job = fan_out_job(db, "ptparamjs", "pt_param_js", 10, column_map={"customer_id": "{param:customer_id}"})
    orders_table(db, "pt_param_js", ", ADD COLUMN raw json")
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["status"] == "succeeded", db.run_row(run_id)["error_message"]
    assert_customers(db, "pt_param_js", 50, 10)
    job = db.job("ptparamcsv", "/odata/Patients?n=30&format=csv&region={region}", "pt_param_csv",
                 page_size=10, format="csv",
                 partitions=json.dumps({"values": {"region": ["eu", "us"]}}),
                 column_map=json.dumps({"patientid": "$.PatientId", "region": "{param:region}"}))
    db.q("DROP TABLE IF EXISTS pt_param_csv")
    db.q("CREATE TABLE pt_param_csv (region text, patientid int)")
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["status"] == "succeeded", db.run_row(run_id)["error_message"]
    assert db.q("SELECT region, count(*), min(patientid), max(patientid) FROM pt_param_csv GROUP BY 1 ORDER BY 1") == \
        [("eu", 30, 1, 30), ("us", 30, 1, 30)]


def test_a_run_parameter_fills_a_column_and_types_are_kept(db):
    db.q("DROP TABLE IF EXISTS pt_param_run")
    db.q("CREATE TABLE pt_param_run (patientid int, site text, batch int, tags jsonb, note text)")
    job = db.job("ptparamrun", "/odata/Patients?n=25&site={site}", "pt_param_run", page_size=10,
                 column_map={"patientid": "$.PatientId", "site": "{param:site}", "batch": "{param:batch}",
                             "tags": "{param:tags}", "note": "{param:note}"})
    run_id = db.one("""SELECT etl_execute_job(%s, wait := true,
                           parameters := '{"site": "north\\tside", "batch": 7, "tags": {"a": [1, 2]}, "note": null}')""",
                    (job,))
    assert db.run_row(run_id)["status"] == "succeeded", db.run_row(run_id)["error_message"]
    assert db.q("SELECT site, batch, tags, note, count(*) FROM pt_param_run GROUP BY 1, 2, 3, 4") == \
        [("north\tside", 7, {"a": [1, 2]}, None, 25)]
    # a dry run says which column takes which parameter, and checks the value fits
    dry = db.one("SELECT etl_execute_job(%s, dry_run := true, wait := true, parameters := %s)",
                 (job, json.dumps({"site": "s", "batch": 7, "tags": [], "note": "n"})))
    report = db.run_row(dry)["run_context"]["dry_run"]
    assert report["columns"]["batch"] == "{param:batch}"
    with pytest.raises(psycopg2.Error, match='invalid input syntax for type integer: "seven"') as e:
        db.one("SELECT etl_execute_job(%s, dry_run := true, wait := true, parameters := %s)",
               (job, json.dumps({"site": "s", "batch": "seven", "tags": [], "note": "n"})))
    assert 'column "batch", value "seven"' in e.value.diag.message_detail


def test_a_json_column_of_a_csv_job_takes_a_parameter(db):
    # csv pages with a json or jsonb column go through the jsonb path; a
    # "{param:NAME}" there is a value of the run's, not a jsonpath
    db.q("DROP TABLE IF EXISTS pt_param_csvjs")
    db.q("CREATE TABLE pt_param_csvjs (patientid int, name text, tags jsonb, raw json)")
    job = db.job("ptparamcsvjs", "/odata/Patients?n=25&format=csv", "pt_param_csvjs", page_size=10, format="csv",
                 column_map=json.dumps({"patientid": "$.PatientId", "name": "$.Name",
                                        "tags": "{param:tags}", "raw": "{param:raw}"}))
    run_id = db.one("""SELECT etl_execute_job(%s, wait := true,
                           parameters := '{"tags": {"a": [1, 2]}, "raw": [3]}')""", (job,))
    row = db.run_row(run_id)
    assert row["status"] == "succeeded", row["error_message"]
    assert row["records_loaded"] == 25
    assert db.q("SELECT tags, raw::text, count(*), count(DISTINCT patientid) FROM pt_param_csvjs GROUP BY 1, 2") == \
        [({"a": [1, 2]}, "[3]", 25, 25)]
    assert db.q("SELECT patientid, name FROM pt_param_csvjs ORDER BY patientid") == \
        [(i, mock_api.record(i)["Name"]) for i in range(1, 26)]


def test_a_parameter_the_run_does_not_have_fails_before_any_row(db):
    customers(db, 3)
    job = fan_out_job(db, "ptparammiss", "pt_param_miss", 10,
                      column_map={"customer_id": "{param:customer}"})
    orders_table(db, "pt_param_miss")
    with pytest.raises(psycopg2.Error, match="failed: column_map of job %d gives column \"customer_id\" "
                                             "the parameter \"customer\", which the run does not have" % job) as e:
        db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert "partition 1 of 3 of the run" in e.value.diag.message_detail
    assert db.one("SELECT status FROM dw_etl_runs WHERE job_id = %s", (job,)) == "failed"
    assert db.one("SELECT count(*) FROM pt_param_miss") == 0


@pytest.mark.parametrize("value, message", [
    ("{param:}", 'column_map entry "customer_id" is not a valid parameter reference: {param:}'),
    ("{param:customer_id", 'column_map entry "customer_id" is not a valid parameter reference: {param:customer_id'),
    ("{params:customer_id}", 'column_map entry "customer_id" is not a valid jsonpath: {params:customer_id}'),
])
def test_parameter_references_are_validated_when_written(db, value, message):
    orders_table(db, "pt_param_bad")
    with pytest.raises(psycopg2.Error, match=message.replace("{", r"\{").replace("}", r"\}")):
        db.job("ptparambad", "/odata/Patients", "pt_param_bad", column_map={"customer_id": value})


def test_parameter_columns_stay_when_a_new_key_adds_a_column(db):
    db.patients_table("pt_param_drift")
    db.q("ALTER TABLE pt_param_drift DROP CONSTRAINT pt_param_drift_pkey, ADD COLUMN tags jsonb, "
         "ADD COLUMN codes jsonb, ADD COLUMN region text")
    job = db.job("ptparamdrift", "/drift/Patients?n=100&new_key_at=60&new_keys=Extra&region={region}",
                 "pt_param_drift", page_size=25, on_new_keys="add_columns",
                 partitions=json.dumps({"values": {"region": ["eu", "us"]}}),
                 column_map={"region": "{param:region}"})
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = db.run_row(run_id)
    assert row["status"] == "succeeded", row["error_message"]
    assert row["run_context"]["added_columns"] == [{"column": "Extra", "type": "bigint", "page": 3}]
    assert db.q('SELECT region, count(*), count("Extra"), count(*) FILTER (WHERE "Extra" = 10 * patientid) '
                'FROM pt_param_drift GROUP BY 1 ORDER BY 1') == [("eu", 100, 40, 40), ("us", 100, 40, 40)]
