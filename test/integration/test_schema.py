"""Schema inference (etl_infer_table, etl_create_table) and drift (on_new_keys).

Inference samples pages through a dry "sample run" in a worker, as any run
asks the API; drift adds a column for a key no column takes, or fails the
run naming it, in both the page reader's path and the jsonb path.
"""
import hashlib
from decimal import Decimal
import json

import psycopg2
import pytest

import mock_api

TRICKY_DDL = """\
-- job {job}: 10 records on 2 sampled pages
CREATE TABLE public.things (
    id bigint,
    at timestamptz,
    big numeric,
    day date,
    uid uuid,
    name text,
    flag boolean,
    ints bigint[],
    name_2 text,
    "group" bigint,
    local timestamp,
    words text[],
    amount numeric,
    nested jsonb,
    mixed_at text,
    nothing text,
    empty_arr jsonb,
    mixed_arr jsonb,
    num_or_str text,
    birth_date date,
    sometimes text,
    patient_id text
);
-- key: id is unique and never null in the sample (an upsert's key_columns: '{{id}}', with a unique index on it)
-- column names differ from the record keys: the job needs this column_map
UPDATE public.dw_etl_jobs SET column_map = E'{{"at": "$.\\\\"at\\\\"", "id": "$.\\\\"id\\\\"", "big": "$.\\\\"big\\\\"", \
"day": "$.\\\\"day\\\\"", "uid": "$.\\\\"uid\\\\"", "flag": "$.\\\\"flag\\\\"", "ints": "$.\\\\"ints\\\\"", \
"name": "$.\\\\"Name\\\\"", "group": "$.\\\\"group\\\\"", "local": "$.\\\\"local\\\\"", "words": "$.\\\\"words\\\\"", \
"amount": "$.\\\\"amount\\\\"", "name_2": "$.\\\\"name\\\\"", "nested": "$.\\\\"nested\\\\"", \
"nothing": "$.\\\\"nothing\\\\"", "mixed_at": "$.\\\\"mixedAt\\\\"", "empty_arr": "$.\\\\"emptyArr\\\\"", \
"mixed_arr": "$.\\\\"mixedArr\\\\"", "sometimes": "$.\\\\"sometimes\\\\"", "birth_date": "$.\\\\"birthDate\\\\"", \
"num_or_str": "$.\\\\"numOrStr\\\\"", "patient_id": "$.\\\\"Patient ID\\\\""}}' WHERE job_id = {job};
"""

# the mock's patients, as inferred from any endpoint that serves them as JSON
PATIENTS_COLUMNS = """\
    patient_id bigint,
    meta jsonb,
    name text,
    tags text[],
    codes bigint[],
    notes text,
    score numeric,
    active boolean,
    visits bigint,
    birth_date date,
    created_at timestamptz"""


def create_statement(ddl):
    """The CREATE TABLE statement of an inferred DDL, without its table name."""
    body = ddl[ddl.index("CREATE TABLE"):ddl.index(");") + 1]
    return body[body.index("(\n") + 2:body.rindex("\n)")]


def test_tricky_values_get_the_types_they_call_for(db):
    # page 1: integers, page 2: decimals and integers beyond bigint; dates
    # with and without zones; nulls; objects; arrays; keys differing by case
    job = db.job("tricky", "/tricky/Things", "public.things", page_size=5)
    ddl = db.one("SELECT etl_infer_table(%s, sample_pages := 2)", (job,))
    assert ddl == TRICKY_DDL.format(job=job)
    # one page: integers only there
    one = db.one("SELECT etl_infer_table(%s, sample_pages := 1)", (job,))
    assert "    amount bigint,\n" in one and "    big bigint,\n" in one
    # a dry run: nothing created, the sample run recorded as one
    assert db.one("SELECT to_regclass('public.things')") is None
    row = db.one("SELECT to_jsonb(r) FROM dw_etl_runs r WHERE job_id = %s ORDER BY run_id DESC LIMIT 1", (job,))
    assert row["dry_run"] is True and row["status"] == "succeeded" and row["records_loaded"] == 0
    sample = row["run_context"]["dry_run"]
    assert sample["pages"] == 1 and sample["records"] == 5
    assert {"key": "sometimes", "type": "text", "records": 5, "nulls": 3, "unique": False} in sample["keys"]


@pytest.mark.parametrize("url,options", [
    ("/odata/Patients?n=250", {}),
    ("/paged/Patients?n=250", {"pagination": "page", "records_path": "$.items[*]"}),
    ("/cursor/Patients?n=250", {"pagination": "cursor", "records_path": "$.data[*]",
                                "pagination_options": {"next_path": "$.meta.next_cursor", "cursor_param": "cursor",
                                                       "limit_param": "limit"}}),
    ("/odata/Patients?n=250&format=ndjson", {"format": "ndjson"}),
])
def test_every_json_endpoint_infers_the_patients(db, url, options):
    job = db.job("ep", url, "ep_patients", page_size=100, **options)
    ddl = db.one("SELECT etl_infer_table(%s)", (job,))
    assert create_statement(ddl) == PATIENTS_COLUMNS, ddl
    assert "-- key: patient_id is unique" in ddl


def test_csv_infers_from_the_text_it_has(db):
    # csv fields are strings: what they spell decides
    job = db.job("csv", "/odata/Patients?n=250&format=csv", "csv_patients", page_size=100, format="csv")
    ddl = db.one("SELECT etl_infer_table(%s)", (job,))
    assert create_statement(ddl) == (
        "    patient_id text,\n    meta text,\n    name text,\n    tags text,\n    codes text,\n    notes text,\n"
        "    score text,\n    active text,\n    visits text,\n    birth_date date,\n    created_at timestamptz")


def patients_checksum(rows):
    return hashlib.md5(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def test_a_created_table_loads_the_api_exactly(db):
    job = db.job("created", "/odata/Patients?n=250", "created_patients", page_size=100)
    ddl = db.one("SELECT etl_create_table(%s)", (job,))
    assert "CREATE TABLE created_patients (\n" + PATIENTS_COLUMNS + "\n);" in ddl
    assert db.one("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'created_patients'::regclass") \
        == db.one("SELECT current_user")
    column_map = db.one("SELECT column_map FROM dw_etl_jobs WHERE job_id = %s", (job,))
    assert column_map["birth_date"] == '$."BirthDate"' and column_map["patient_id"] == '$."PatientId"'
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["records_loaded"] == 250
    rows = db.q("SELECT patient_id, name, birth_date::text, score::text, active, "
                "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), visits, notes, meta, "
                "tags, codes FROM created_patients ORDER BY patient_id")
    expected = []
    for i in range(1, 251):
        r = mock_api.record(i)
        expected.append([r["PatientId"], r["Name"], r["BirthDate"], str(r["Score"]), r["Active"], r["CreatedAt"],
                         r["Visits"], r["Notes"], r["Meta"], r["Tags"], r["Codes"]])
    assert len(rows) == 250
    assert patients_checksum([list(x) for x in rows]) == patients_checksum(expected)

    # the table is there now: refused, nothing sampled
    runs = db.one("SELECT count(*) FROM dw_etl_runs WHERE job_id = %s", (job,))
    with pytest.raises(psycopg2.errors.DuplicateTable,
                       match=r"target table public.created_patients of etl_exec job \d+ exists already"):
        db.q("SELECT etl_create_table(%s)", (job,))
    assert db.one("SELECT count(*) FROM dw_etl_runs WHERE job_id = %s", (job,)) == runs


def test_bad_input_is_refused_clearly(db):
    with pytest.raises(psycopg2.errors.UndefinedObject, match="etl_exec job 999999 does not exist"):
        db.q("SELECT etl_infer_table(999999)")
    job = db.job("bad", "/odata/Patients?n=10", "bad_target", page_size=5)
    with pytest.raises(psycopg2.errors.InvalidParameterValue, match="sample_pages must be between 1 and 1000, not 0"):
        db.q("SELECT etl_infer_table(%s, sample_pages := 0)", (job,))
    with pytest.raises(psycopg2.errors.InvalidParameterValue, match="parameters must be a JSON object"):
        db.q("SELECT etl_infer_table(%s, '[1]')", (job,))
    # an API error names the run and says what the API said
    job = db.job("bad404", "/odata/Patients?n=10&fail_at=0&fail_status=404", "bad_target", page_size=5)
    with pytest.raises(psycopg2.Error, match=r"could not sample job \d+ \(sample run \d+ failed\): HTTP 404 from"):
        db.q("SELECT etl_infer_table(%s)", (job,))
    # no records: nothing to infer
    job = db.job("empty", "/odata/Patients?n=0", "bad_target", page_size=5)
    with pytest.raises(psycopg2.errors.NoDataFound, match="have no records: nothing to infer a table from"):
        db.q("SELECT etl_infer_table(%s)", (job,))
    assert db.one("SELECT to_regclass('bad_target')") is None


def test_on_new_keys_is_validated(db):
    with pytest.raises(psycopg2.errors.InvalidParameterValue,
                       match='on_new_keys must be ignore, add_columns or fail, not "sometimes"'):
        db.job("v1", "/odata/Patients", "x", on_new_keys="sometimes")
    with pytest.raises(psycopg2.errors.InvalidParameterValue,
                       match="on_new_keys add_columns needs a job that maps keys by name, and this one has a column_map"):
        db.job("v2", "/odata/Patients", "x", on_new_keys="add_columns", column_map={"patientid": "$.PatientId"})


def drift_table(db, name):
    """The patients table, with the columns for every key the mock's records have."""
    db.patients_table(name)
    db.q(f"ALTER TABLE {name} ADD COLUMN tags jsonb, ADD COLUMN codes jsonb")


# records_path with a filter: the page reader cannot read it, so the jsonb path loads
JSONB_PATH = "$.value[*] ? (@.PatientId > 0)"


@pytest.mark.parametrize("path", ["scanner", "jsonb", "ndjson", "csv"])
def test_add_columns_adds_a_column_from_the_page_that_first_carries_the_key(db, path):
    table = f"drift_{path}"
    drift_table(db, table)
    url = "/drift/Patients?n=250&new_key_at=120&new_keys=Extra"
    opts = {}
    if path == "jsonb":
        opts["records_path"] = JSONB_PATH
    elif path in ("ndjson", "csv"):
        url += f"&format={path}"
        opts["format"] = path
    job = db.job(f"drift_{path}", url, table, page_size=50, on_new_keys="add_columns", **opts)
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = db.run_row(run_id)
    assert row["status"] == "succeeded" and row["records_loaded"] == 250
    expected_type = "text" if path == "csv" else "bigint"
    assert row["run_context"]["added_columns"] == [{"column": "Extra", "type": expected_type, "page": 3}]
    assert db.one(f"SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                  f"WHERE attrelid = '{table}'::regclass AND attname = 'Extra'") == expected_type
    # NULL before the page that first carried it (records 101..120 too), values from there on
    assert db.one(f'SELECT count(*) FROM {table} WHERE "Extra" IS NULL') == 120
    assert db.one(f'SELECT count(*) FROM {table} WHERE "Extra"::bigint = 10 * patientid') == 130
    db.assert_patients_exact(table, 250)


def test_fail_stops_the_run_naming_the_keys_and_keeps_the_checkpoint(db):
    drift_table(db, "drift_fail")
    job = db.job("drift_fail", "/drift/Patients?n=250&new_key_at=120&new_keys=Zeta,Alpha", "drift_fail",
                 page_size=50, on_new_keys="fail")
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    row = db.run_row(run_id)
    assert row["error_message"].startswith(
        'page 3 has record keys that no column of public.drift_fail takes: "Alpha", "Zeta"\n'
        "DETAIL: The job's on_new_keys is fail; the pages before this one are loaded and checkpointed.\n"
        "HINT: Add the columns to the table (or set the job's on_new_keys to add_columns or ignore), "
        "then resume the run."), row["error_message"]
    assert row["sqlstate"] == "42703"
    assert row["run_context"]["checkpoint"]["page_index"] == 2
    db.assert_patients_exact("drift_fail", 100)
    # the columns added, the resume loads the rest
    db.q('ALTER TABLE drift_fail ADD COLUMN "Alpha" bigint, ADD COLUMN "Zeta" bigint')
    db.q("SELECT etl_resume_run(%s)", (run_id,))
    assert db.wait(run_id) == "succeeded"
    db.assert_patients_exact("drift_fail", 250)
    assert db.one('SELECT count(*) FROM drift_fail WHERE "Alpha" = 10 * patientid AND "Zeta" = "Alpha"') == 130


def test_ignore_loads_as_before(db):
    drift_table(db, "drift_ignore")
    job = db.job("drift_ignore", "/drift/Patients?n=120&new_key_at=0", "drift_ignore", page_size=50)
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert "added_columns" not in db.run_row(run_id)["run_context"]
    db.assert_patients_exact("drift_ignore", 120)


def test_add_columns_by_a_role_that_does_not_own_the_table_fails_naming_the_key(db):
    db.q("DROP ROLE IF EXISTS drift_loader")
    db.q("CREATE ROLE drift_loader IN ROLE etl_operator")
    drift_table(db, "drift_notmine")
    db.q("GRANT SELECT, INSERT ON drift_notmine TO drift_loader")
    job = db.job("drift_notmine", "/drift/Patients?n=120&new_key_at=60", "drift_notmine", page_size=50,
                 on_new_keys="add_columns")
    db.q("SET ROLE drift_loader")
    try:
        run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    finally:
        db.q("RESET ROLE")
    assert db.wait(run_id) == "failed"
    row = db.run_row(run_id)
    assert row["error_message"].startswith(
        'cannot add a column for new key "Extra" to public.drift_notmine: role "drift_loader" does not own the table\n'
        "DETAIL: Page 2 carries the key, and the job's on_new_keys is add_columns; only a table's owner may add "
        "columns to it."), row["error_message"]
    db.assert_patients_exact("drift_notmine", 50)


# ---------- names the loader must find, and who may change a job ----------

def test_non_ascii_case_and_system_names_get_a_column_map_that_loads(db):
    """The loader matches names ASCII case aside, so "Äpfel" -> äpfel is a
    rename; xmin is a system column's name, so it becomes xmin_2."""
    db.q("DROP TABLE IF EXISTS sch_names")
    job = db.job("sch_names", "/fixture/schema_names", "sch_names", page_size=10)
    ddl = db.one("SELECT etl_create_table(%s)", (job,))
    assert "xmin_2 numeric" in ddl and '"äpfel" bigint' in ddl and '"größe" bigint' in ddl
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["status"] == "succeeded"
    assert db.q("SELECT id, äpfel, xmin_2, größe FROM sch_names ORDER BY id") == \
        [(1, 5, Decimal("0.5"), 7), (2, 6, Decimal("1.5"), 8)]


def test_suffixed_names_stay_within_63_bytes_of_whole_characters(db):
    db.q("DROP TABLE IF EXISTS sch_long")
    job = db.job("sch_long", "/fixture/schema_long_names", "sch_long", page_size=10)
    db.one("SELECT etl_create_table(%s)", (job,))
    names = [r[0] for r in db.q("SELECT attname FROM pg_attribute WHERE attrelid = 'sch_long'::regclass "
                                "AND attnum > 0 ORDER BY attnum")]
    assert names == ["id", "ä" * 31, "ä" * 30 + "_2"]
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["status"] == "succeeded"
    assert db.one("SELECT count(*) FROM sch_long WHERE %s + %s IN (3, 7)" % (
        '"' + "ä" * 31 + '"', '"' + "ä" * 30 + '_2"')) == 2


def test_a_job_watching_new_keys_gets_columns_named_as_its_keys(db):
    db.q("DROP TABLE IF EXISTS sch_as_keys")
    job = db.job("sch_as_keys", "/odata/Patients?n=20", "sch_as_keys", page_size=10, on_new_keys="add_columns")
    ddl = db.one("SELECT etl_create_table(%s)", (job,))
    assert '"PatientId" bigint' in ddl and "UPDATE" not in ddl
    assert db.one("SELECT column_map FROM dw_etl_jobs WHERE job_id = %s", (job,)) is None
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["status"] == "succeeded"
    assert db.one('SELECT count(DISTINCT "PatientId") FROM sch_as_keys') == 20
    # a key no column of its own name can take is refused before anything is made
    db.q("DROP TABLE IF EXISTS sch_sys")
    job = db.job("sch_sys", "/fixture/schema_system_keys", "sch_sys", page_size=10, on_new_keys="fail")
    with pytest.raises(psycopg2.Error, match='key "(xmax)?" of job %d cannot be a column of its own name' % job):
        db.one("SELECT etl_create_table(%s)", (job,))
    assert db.one("SELECT to_regclass('sch_sys')") is None


def test_add_columns_refuses_system_and_empty_names_clearly(db):
    db.q("DROP TABLE IF EXISTS sch_sys_add")
    db.q("CREATE TABLE sch_sys_add (id bigint)")
    job = db.job("sch_sys_add", "/fixture/schema_system_keys", "sch_sys_add", page_size=10,
                 on_new_keys="add_columns")
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    message = db.run_row(run_id)["error_message"]
    assert message.startswith('cannot add a column for new key "" to public.sch_sys_add: a column name cannot be empty') \
        or message.startswith('cannot add a column for new key "xmax" to public.sch_sys_add: it is the name of a system column'), message
    assert db.one("SELECT count(*) FROM sch_sys_add") == 0


def test_create_table_keeps_parameter_columns_and_refuses_jsonpath_maps(db):
    db.q("DROP TABLE IF EXISTS sch_param")
    job = db.job("sch_param", "/odata/Patients?n=20&site={site}", "sch_param", page_size=10,
                 parameters={"site": 7}, column_map={"site_id": "{param:site}"})
    ddl = db.one("SELECT etl_create_table(%s)", (job,))
    assert ddl.index("    site_id bigint,") < ddl.index("    patient_id bigint")
    assert db.one("SELECT column_map ->> 'site_id' FROM dw_etl_jobs WHERE job_id = %s", (job,)) == "{param:site}"
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["status"] == "succeeded"
    assert db.q("SELECT site_id, count(*) FROM sch_param GROUP BY 1") == [(7, 20)]
    db.q("DROP TABLE IF EXISTS sch_paths")
    job = db.job("sch_paths", "/odata/Patients?n=20", "sch_paths", page_size=10, column_map={"pid": "$.PatientId"})
    with pytest.raises(psycopg2.Error, match="etl_exec job %d has a column_map with jsonpaths" % job):
        db.one("SELECT etl_create_table(%s)", (job,))
    assert db.one("SELECT to_regclass('sch_paths')") is None
    assert "-- the job's column_map has jsonpaths: this table follows the record keys instead" in \
        db.one("SELECT etl_infer_table(%s)", (job,))


def test_an_operator_cannot_change_a_job_s_column_map_through_create_table(db):
    db.q("DROP ROLE IF EXISTS sch_mallory")
    db.q("CREATE ROLE sch_mallory IN ROLE etl_operator")
    db.q("GRANT CREATE ON SCHEMA public TO sch_mallory")
    db.q("DROP TABLE IF EXISTS sch_victim")
    job = db.job("sch_victim", "/odata/Patients?n=20", "sch_victim", page_size=10)
    db.q("SET ROLE sch_mallory")
    try:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege,
                           match="permission denied to set the column_map of etl_exec job %d" % job):
            db.one("SELECT etl_create_table(%s)", (job,))
    finally:
        db.q("RESET ROLE")
        db.q("REVOKE CREATE ON SCHEMA public FROM sch_mallory")
    assert db.one("SELECT column_map FROM dw_etl_jobs WHERE job_id = %s", (job,)) is None
    assert db.one("SELECT to_regclass('sch_victim')") is None


def test_rows_waiting_in_a_page_table_move_as_the_run_s_role_when_a_column_is_added(db):
    """A target another extension takes over (here a stand-in for a
    TimescaleDB hypertable) gathers pages in the run's page table; adding a
    column moves the gathered rows first -- as the run's role, never as the
    worker's superuser (the table's owner could put a trigger there)."""
    db.q("DROP ROLE IF EXISTS sch_owner")
    db.q("CREATE ROLE sch_owner IN ROLE etl_operator")
    db.q("CREATE SCHEMA IF NOT EXISTS _timescaledb_catalog")
    db.q("CREATE TABLE IF NOT EXISTS _timescaledb_catalog.hypertable (schema_name name, table_name name)")
    try:
        db.q("INSERT INTO _timescaledb_catalog.hypertable VALUES ('public', 'sch_gather')")
        drift_table(db, "sch_gather")
        db.q("DROP TABLE IF EXISTS sch_who")
        db.q("CREATE TABLE sch_who (who name, super boolean, patientid int)")
        db.q("GRANT INSERT ON sch_who TO PUBLIC")
        db.q("""CREATE OR REPLACE FUNCTION sch_log() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    INSERT INTO public.sch_who SELECT current_user, rolsuper, NEW.patientid
                    FROM pg_roles WHERE rolname = current_user;
                    RETURN NEW;
                END $$""")
        db.q("CREATE TRIGGER sch_log BEFORE INSERT ON sch_gather FOR EACH ROW EXECUTE FUNCTION sch_log()")
        db.q("ALTER TABLE sch_gather OWNER TO sch_owner")
        job = db.job("sch_gather", "/drift/Patients?n=250&new_key_at=120&new_keys=Extra", "sch_gather",
                     page_size=50, on_new_keys="add_columns", checkpoint_interval_seconds=600)
        db.q("SET ROLE sch_owner")
        try:
            run_id = db.one("SELECT etl_execute_job(%s)", (job,))
        finally:
            db.q("RESET ROLE")
        assert db.wait(run_id) == "succeeded", db.run_row(run_id)["error_message"]
        assert db.q("SELECT who, super, count(*) FROM sch_who GROUP BY 1, 2") == [("sch_owner", False, 250)]
        assert db.one('SELECT count("Extra") FROM sch_gather') == 130
    finally:
        db.q("DROP SCHEMA _timescaledb_catalog CASCADE")


def test_only_timestamps_postgresql_reads_are_called_timestamps(db):
    """A comma before the fraction, or a leap second with a fraction, is ISO
    8601 that PostgreSQL refuses: such keys are text, and the table loads."""
    db.q("DROP TABLE IF EXISTS sch_times")
    job = db.job("sch_times", "/fixture/schema_times", "sch_times", page_size=10)
    ddl = db.one("SELECT etl_create_table(%s)", (job,))
    assert create_statement(ddl) == "    id bigint,\n    a text,\n    b timestamptz,\n    c timestamptz,\n    d text"
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.run_row(run_id)["status"] == "succeeded"
    assert db.one("SELECT count(*) FROM sch_times") == 2


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_a_key_a_column_names_but_the_run_does_not_write_is_not_new(db, fmt):
    """A generated column named like a key takes no value and gets no twin."""
    table = f"sch_generated_{fmt}"
    drift_table(db, table)
    db.q(f"ALTER TABLE {table} DROP COLUMN visits, ADD COLUMN visits int GENERATED ALWAYS AS (7) STORED")
    url = "/drift/Patients?n=120&new_key_at=60&new_keys=Extra" + ("&format=csv" if fmt == "csv" else "")
    job = db.job(f"sch_generated_{fmt}", url, table, page_size=50, on_new_keys="add_columns", format=fmt)
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = db.run_row(run_id)
    assert row["status"] == "succeeded", row["error_message"]
    assert row["run_context"]["added_columns"] == [{"column": "Extra", "type": "text" if fmt == "csv" else "bigint",
                                                    "page": 2}]
    assert db.q(f'SELECT count(*), min(visits), max(visits), count("Extra") FROM {table}') == [(120, 7, 7, 60)]
