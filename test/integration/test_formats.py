"""Response formats (dw_etl_jobs.format, csv_options): ndjson and csv pages load
the mock data set exactly, through the one-pass reader and the jsonb path,
one request at a time and with 8 in flight, through timeouts and resumes;
column_map names CSV headers; bad lines, rows and values fail clearly; jobs
that cannot work are refused when written."""
import json
import os

import psycopg2
import pytest

FORMATS = ["ndjson", "csv"]
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")


def fmt_job(db, name, fmt, url, target, **cols):
    return db.job(name, url + ("&" if "?" in url else "?") + "format=" + fmt, target, format=fmt, **cols)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("endpoint,paging", [
    ("/odata/Patients?n=2345", {}),
    ("/array/Patients?n=2345", {"skip_param": "offset", "limit_param": "limit"}),
])
@pytest.mark.parametrize("concurrency", [1, 8])
def test_loads_exactly(db, fmt, endpoint, paging, concurrency):
    db.patients_table("f_exact")
    job = fmt_job(db, "f_exact", fmt, endpoint, "f_exact", page_size=200, concurrency=concurrency,
                  pagination_options=paging)
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = db.run_row(run_id)
    assert (row["status"], row["records_loaded"]) == ("succeeded", 2345)
    assert row["pages_fetched"] == 13          # 12 pages and a short last, then the empty one
    db.assert_patients_exact("f_exact", 2345)


@pytest.mark.parametrize("fmt", FORMATS)
def test_short_page_stops_with_stop_on_short_page(db, fmt):
    db.patients_table("f_short")
    job = fmt_job(db, "f_short", fmt, "/odata/Patients?n=450", "f_short", page_size=100, concurrency=1,
                  pagination_options={"stop_on_short_page": True})
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = db.run_row(run_id)
    assert (row["status"], row["records_loaded"], row["pages_fetched"]) == ("succeeded", 450, 5)
    db.assert_patients_exact("f_short", 450)


@pytest.mark.parametrize("fmt", FORMATS)
def test_blank_lines_are_skipped(db, fmt):
    db.patients_table("f_blank")
    job = fmt_job(db, "f_blank", fmt, "/odata/Patients?n=250&blank_lines=1", "f_blank", page_size=100)
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["records_loaded"] == 250
    db.assert_patients_exact("f_blank", 250)


@pytest.mark.parametrize("fmt", FORMATS)
def test_jsonb_path_loads_exactly_too(db, fmt):
    """Upsert and a json column send pages through the jsonb path: same rows."""
    db.patients_table("f_upsert")
    job = fmt_job(db, "f_upsert", fmt, "/odata/Patients?n=1234", "f_upsert", page_size=300,
                  load_mode="upsert", key_columns="{patientid}")
    for _ in range(2):
        run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
        assert db.run_row(run_id)["records_loaded"] == 1234
    db.assert_patients_exact("f_upsert", 1234)

    db.patients_table("f_jsoncol")
    db.q("ALTER TABLE f_jsoncol ADD COLUMN tags json")
    job = fmt_job(db, "f_jsoncol", fmt, "/odata/Patients?n=345", "f_jsoncol", page_size=100)
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["records_loaded"] == 345
    db.assert_patients_exact("f_jsoncol", 345)
    assert db.one("SELECT tags::text FROM f_jsoncol WHERE patientid = 8") == '["t2", "q\\"uote", null]'


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("concurrency", [1, 8])
def test_timeouts_then_resume_are_exact(db, fmt, concurrency):
    db.patients_table("f_resume")
    delay = 60 if concurrency == 1 else 500         # 31 pages: several seconds either way
    job = fmt_job(db, "f_resume", fmt, f"/odata/Patients?n=6000&delay_ms={delay}", "f_resume", page_size=200,
                  concurrency=concurrency, checkpoint_interval_seconds=0)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    statuses = db.resume_until_done(run_id, timeout=1)
    assert statuses.count("timed_out") >= 1, statuses
    assert statuses[-1] == "succeeded"
    assert db.run_row(run_id)["records_loaded"] == 6000
    db.assert_patients_exact("f_resume", 6000)


def test_dry_run_reports_csv_headers(db):
    db.patients_table("f_dry")
    job = fmt_job(db, "f_dry", "csv", "/odata/Patients?n=500", "f_dry", page_size=100)
    run_id = db.one("SELECT etl_execute_job(%s, dry_run := true, wait := true)", (job,))
    report = db.run_row(run_id)["run_context"]["dry_run"]
    assert report["records"] == 100
    assert report["columns"]["patientid"] == "PatientId"
    assert report["columns"]["meta"] == "Meta"
    assert sorted(report["unmapped_keys"]) == ["Codes", "Tags"]
    assert db.one("SELECT count(*) FROM f_dry") == 0


@pytest.mark.parametrize("jsonb_path", [False, True])
def test_csv_column_map_names_headers(db, jsonb_path):
    db.q("DROP TABLE IF EXISTS f_map")
    db.q("CREATE TABLE f_map (id int PRIMARY KEY, full_name text, born date, extra jsonb, nothing text)")
    header = "id,full name,born on,Score,Active,CreatedAt,Visits,Notes,meta data,Tags,Codes"
    job = fmt_job(db, "f_map", "csv", f"/odata/Patients?n=300&csv_header={header.replace(' ', '%20')}", "f_map",
                  page_size=100,
                  column_map={"id": "$.id", "full_name": '$."full name"', "born": '$."born on"',
                              "extra": '$."meta data"', "nothing": '$."no such header"'},
                  **({"load_mode": "upsert", "key_columns": "{id}"} if jsonb_path else {}))
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["records_loaded"] == 300, db.run_row(run_id)["error_message"]
    import mock_api
    rows = db.q("SELECT id, full_name, born::text, extra, nothing FROM f_map ORDER BY id")
    assert rows == [(i, mock_api.record(i)["Name"], mock_api.record(i)["BirthDate"], mock_api.record(i)["Meta"], None)
                    for i in range(1, 301)]


def test_ndjson_column_map_takes_jsonpaths(db):
    db.q("DROP TABLE IF EXISTS f_nmap")
    db.q("CREATE TABLE f_nmap (id int, bucket int, first_tag text)")
    job = fmt_job(db, "f_nmap", "ndjson", "/odata/Patients?n=50", "f_nmap", page_size=20,
                  column_map={"id": "$.PatientId", "bucket": "$.Meta.bucket", "first_tag": "$.Tags[0]"})
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["records_loaded"] == 50, db.run_row(run_id)["error_message"]
    assert db.q("SELECT id, bucket, first_tag FROM f_nmap WHERE id IN (7, 13) ORDER BY id") == [(7, 7, "t1"), (13, 3, "t1")]


def test_csv_options_delimiter_and_null(db):
    db.patients_table("f_opts")
    job = fmt_job(db, "f_opts", "csv", "/odata/Patients?n=321&csv_delimiter=%3B&csv_null=NULL", "f_opts",
                  page_size=100, csv_options=json.dumps({"delimiter": ";", "null": "NULL"}))
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["records_loaded"] == 321, db.run_row(run_id)["error_message"]
    db.assert_patients_exact("f_opts", 321)


QUOTING_CSV = '\ufeffA,b,C\r\n"",,1\n\n"x,""y""\nz",plain\\slash\t,2\r\n  sp ,"q""",3'


def test_csv_quoting_rules(db):
    """Quoted empty is an empty string, unquoted empty is NULL; doubled quotes,
    delimiters and line breaks inside quotes; CRLF and LF lines, an empty
    line, no line break at the end; a BOM."""
    with open(os.path.join(FIXTURES, "formats_quoting.csv"), encoding="utf-8", newline="") as f:
        assert f.read() == QUOTING_CSV
    db.q("DROP TABLE IF EXISTS f_quote")
    db.q("CREATE TABLE f_quote (a text, b text, c int PRIMARY KEY)")
    for mode in ("append", "upsert"):
        db.q("TRUNCATE f_quote")
        job = db.job("f_quote", "/fixture/formats_quoting.csv", "f_quote", format="csv", pagination="none",
                     load_mode=mode, key_columns="{c}")
        run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
        assert db.run_row(run_id)["records_loaded"] == 3, db.run_row(run_id)["error_message"]
        assert db.q("SELECT a, b, c FROM f_quote ORDER BY c") == [
            ("", None, 1), ('x,"y"\nz', "plain\\slash\t", 2), ("  sp ", 'q"', 3)]


def test_link_header_paging(db):
    db.patients_table("f_linked")
    for fmt in FORMATS:
        db.q("TRUNCATE f_linked")
        job = fmt_job(db, "f_linked", fmt, "/linked/Patients?n=1050&per_page=100", "f_linked",
                      pagination="link_header")
        run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
        row = db.run_row(run_id)
        assert (row["records_loaded"], row["pages_fetched"]) == (1050, 11), row["error_message"]
        db.assert_patients_exact("f_linked", 1050)


def test_unterminated_quote_fails_clearly(db):
    db.q("DROP TABLE IF EXISTS f_unterm")
    db.q("CREATE TABLE f_unterm (a text, b text)")
    job = db.job("f_unterm", "/fixture/formats_unterminated.csv", "f_unterm", format="csv", pagination="none")
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    msg = db.run_row(run_id)["error_message"]
    assert "bad CSV on line 3 of page 1: a quoted field does not end" in msg, msg
    assert 'line 3 of page 1 of the response to http://127.0.0.1' in msg and '"never closed' in msg, msg


def test_ndjson_line_that_is_not_an_object(db):
    db.q("DROP TABLE IF EXISTS f_notobj")
    db.q("CREATE TABLE f_notobj (a int)")
    job = db.job("f_notobj", "/fixture/formats_notobject.ndjson", "f_notobj", format="ndjson", pagination="none")
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    msg = db.run_row(run_id)["error_message"]
    assert "line 3 of page 1 is not a JSON object" in msg, msg


@pytest.mark.parametrize("fmt,expect", [
    ("ndjson", ["line 2 of page 2 of the response to http://127.0.0.1", '{"PatientId": 102,',
                "invalid input syntax for type json"]),
    ("csv", ["line 3 of page 2 has 12 fields where the CSV header has 11",
             "line 3 of page 2 of the response to http://127.0.0.1"]),
])
@pytest.mark.parametrize("upsert", [False, True])
def test_bad_line_fails_with_page_and_line(db, fmt, expect, upsert):
    db.patients_table("f_badline")
    job = fmt_job(db, "f_badline", fmt, "/odata/Patients?n=300&badline_at=100", "f_badline", page_size=100,
                  concurrency=1, **({"load_mode": "upsert", "key_columns": "{patientid}"} if upsert else {}))
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    msg = db.run_row(run_id)["error_message"]
    for e in expect:
        assert e in msg, msg
    assert db.one("SELECT count(*) FROM f_badline") == 100      # page 1 stays loaded
    assert db.one("SELECT skip FROM etl_get_checkpoint(%s)", (run_id,)) == 100


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("upsert", [False, True])
def test_bad_value_names_page_record_column_value(db, fmt, upsert):
    db.patients_table("f_badvalue")
    job = fmt_job(db, "f_badvalue", fmt, "/odata/Patients?n=300&badvalue_at=200", "f_badvalue", page_size=100,
                  concurrency=1, **({"load_mode": "upsert", "key_columns": "{patientid}"} if upsert else {}))
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    msg = db.run_row(run_id)["error_message"]
    assert 'invalid input syntax for type date: "not-a-date"' in msg, msg
    assert 'page 3, record 3, column "birthdate", value "not-a-date"' in msg, msg
    assert db.one("SELECT count(*) FROM f_badvalue") == 200


def test_bad_json_in_a_csv_field_names_its_place(db):
    db.q("DROP TABLE IF EXISTS f_badjson")
    db.q("CREATE TABLE f_badjson (patientid int, name jsonb)")
    for upsert in (False, True):
        job = fmt_job(db, "f_badjson", "csv", "/odata/Patients?n=30", "f_badjson", page_size=10,
                      **({"load_mode": "upsert", "key_columns": "{patientid}"} if upsert else {}))
        run_id = db.one("SELECT etl_execute_job(%s)", (job,))
        assert db.wait(run_id) == "failed"
        msg = db.run_row(run_id)["error_message"]
        assert "invalid input syntax for type json" in msg, msg
        assert 'page 1, record 1, column "name", value "Patient 1"' in msg, msg


@pytest.mark.parametrize("cols,expect", [
    ({"format": "xml"}, 'unknown format "xml"'),
    ({"format": "json", "csv_options": '{"delimiter": ";"}'}, "csv_options apply to format csv only"),
    ({"format": "csv", "csv_options": '{"separator": ";"}'}, 'unknown csv option "separator"'),
    ({"format": "csv", "csv_options": '{"delimiter": ";;"}'}, "csv option delimiter must be a single one-byte character"),
    ({"format": "csv", "csv_options": '{"delimiter": "é"}'}, "csv option delimiter must be a single one-byte character"),
    ({"format": "csv", "csv_options": '{"quote": 1}'}, "csv option quote must be a string"),
    ({"format": "csv", "csv_options": '{"delimiter": "\\""}'}, "csv options delimiter and quote must differ"),
    ({"format": "csv", "csv_options": '{"delimiter": "|", "quote": "|"}'}, "csv options delimiter and quote must differ"),
    ({"format": "csv", "csv_options": '{"null": "a,b"}'}, "csv option null must not hold the delimiter or the quote"),
    ({"format": "csv", "csv_options": '[]'}, "csv_options must be a JSON object"),
    ({"format": "ndjson", "records_path": "$.items[*]"}, "records_path does not apply to format ndjson"),
    ({"format": "csv", "pagination": "next_link"}, "next_link pagination reads the next link or cursor from the body"),
    ({"format": "ndjson", "pagination": "cursor", "pagination_options": '{"next_path": "$.next"}'},
     "cursor pagination reads the next link or cursor from the body"),
    ({"format": "csv", "pagination_options": '{"total_path": "$.total"}'}, "pagination option total_path reads the body"),
    ({"format": "ndjson", "pagination": "link_header", "pagination_options": '{"next_path": "$.n"}'},
     "pagination option next_path reads the body"),
    ({"format": "csv", "column_map": '{"a": "$.x.y"}'}, 'column_map entry "a" must name one CSV header'),
    ({"format": "csv", "column_map": '{"a": "$.x[0]"}'}, 'column_map entry "a" must name one CSV header'),
])
def test_validation_when_written(db, cols, expect):
    with pytest.raises(psycopg2.Error) as exc:
        db.job("f_invalid", "/odata/Patients", "t", **cols)
    assert expect in str(exc.value), str(exc.value)
    assert exc.value.pgcode == "22023"
    assert exc.value.diag.message_hint


def test_valid_jobs_are_accepted(db):
    for cols in ({"format": "csv", "csv_options": '{"delimiter": "\\t", "quote": "\'", "escape": "\\\\", "null": "NULL"}'},
                 {"format": "csv", "column_map": '{"a": "$.x", "b": "$.\\"Header Name\\""}'},
                 {"format": "ndjson", "pagination": "link_header"},
                 {"format": "ndjson", "pagination": "page", "column_map": '{"a": "$.x.y[0]"}'},
                 {"format": "csv", "pagination": "none"},
                 {"format": "json"}):
        db.job("f_valid", "/odata/Patients", "t", **cols)


def test_format_change_refuses_resume(db):
    db.patients_table("f_change")
    job = fmt_job(db, "f_change", "csv", "/odata/Patients?n=3000&delay_ms=100", "f_change", page_size=100,
                  concurrency=1)
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    assert db.wait(run_id) == "timed_out"
    db.q("UPDATE dw_etl_jobs SET format = 'ndjson' WHERE job_id = %s", (job,))
    with pytest.raises(psycopg2.Error, match="format"):
        db.q("SELECT etl_resume_run(%s)", (run_id,))
    db.q("UPDATE dw_etl_jobs SET format = 'csv' WHERE job_id = %s", (job,))
    db.q("SELECT etl_resume_run(%s, wait := true)", (run_id,))
    db.assert_patients_exact("f_change", 3000)
