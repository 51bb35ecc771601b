"""on_bad_record = 'reject': records a column or a constraint refuses go to
dw_etl_rejects, the rest of their page loads, exactly once; max_rejected;
every load mode and format; who reads the rejects; dry runs.

The source: the mock API's bad_records=1, which plants seven bad values in
the 20,000 records (mock_api.BAD_RECORDS).
"""
import json

import psycopg2
import pytest

from conftest import connect
import mock_api

TOTAL = '{"total_path": "$.\\"@odata.count\\""}'

# the target: each bad record breaks one of its columns or constraints
REJECTS_DDL = """
CREATE TABLE {name} (
    patientid   int PRIMARY KEY,
    name        varchar(200),
    birthdate   date,
    score       numeric(10,2) CHECK (score >= 0),
    active      boolean,
    visits      int,
    notes       text
)"""

# record number -> (column_name, error, sqlstate); {t}: the target's name
BAD = {
    7: ("birthdate", 'invalid input syntax for type date: "n/a"', "22007"),
    150: ("birthdate", 'date/time field value out of range: "2021-02-30"', "22008"),
    2500: ("name", "value too long for type character varying(200)", "22001"),
    5001: (None, 'new row for relation "{t}" violates check constraint "{t}_score_check"', "23514"),
    9999: ("visits", 'invalid input syntax for type integer: "many"', "22P02"),
    14000: ("patientid", 'null value in column "patientid" of relation "{t}" violates not-null constraint',
            "23502"),
    19876: ("visits", 'value "99999999999" is out of range for type integer', "22003"),
}
assert sorted(BAD) == sorted(mock_api.BAD_RECORDS)


def table(db, name):
    db.q(f"DROP TABLE IF EXISTS {name}")
    db.q(REJECTS_DDL.format(name=name))


def run(db, job, **kw):
    """Run a job to its end (wait := true) and return its run row."""
    args = "".join(f", {k} := %s" for k in kw)
    try:
        run_id = db.one(f"SELECT etl_execute_job(%s, wait := true{args})", (job, *kw.values()))
    except psycopg2.Error:
        run_id = db.one("SELECT max(run_id) FROM dw_etl_runs WHERE job_id = %s", (job,))
    return db.run_row(run_id)


def rejects(db, run_id):
    return db.q("SELECT page_index, record_index, record, column_name, error, sqlstate, job_id, partition_index "
                "FROM dw_etl_rejects WHERE run_id = %s ORDER BY page_index, record_index", (run_id,))


def bad_record(i):
    """Record i as the API sends it with bad_records=1."""
    rec = mock_api.record(i)
    key, value = mock_api.BAD_RECORDS[i]
    rec[key] = value
    return rec


def expected_rejects(job, upto, page_size, target):
    return [((i - 1) // page_size, (i - 1) % page_size, bad_record(i), BAD[i][0],
             BAD[i][1].format(t=target), BAD[i][2], job, None)
            for i in sorted(BAD) if i <= upto]


def assert_good_rows(db, target, n):
    """Every good record 1..n loaded once, none of the bad ones."""
    good = [i for i in range(1, n + 1) if i not in BAD]
    assert db.one(f"SELECT count(*) FROM {target}") == len(good)
    assert [r[0] for r in db.q(f"SELECT patientid FROM {target} ORDER BY patientid")] == good
    # the records around a bad one are intact
    for i in (6, 8, 149, 151, 5000, 5002):
        if i <= n:
            rec = mock_api.record(i)
            assert db.one(f"SELECT name, birthdate::text, visits FROM {target} WHERE patientid = %s", (i,)) == \
                (rec["Name"], rec["BirthDate"], rec["Visits"])


def test_seven_bad_records_among_20000_are_rejected_and_the_rest_loads(db):
    table(db, "rj_append")
    job = db.job("rjappend", "/odata/Patients?n=20000&bad_records=1", "rj_append", page_size=1000,
                 pagination_options=TOTAL, on_bad_record="reject")
    row = run(db, job)
    assert (row["status"], row["records_loaded"], row["pages_fetched"]) == ("succeeded", 19993, 20)
    assert row["run_context"]["rejected"] == 7
    assert row["run_context"]["checkpoint"]["total_records"] == 19993
    assert rejects(db, row["run_id"]) == expected_rejects(job, 20000, 1000, "rj_append")
    assert_good_rows(db, "rj_append", 20000)


def test_by_default_a_bad_record_fails_the_run(db):
    table(db, "rj_fail")
    job = db.job("rjfail", "/odata/Patients?n=3000&bad_records=1", "rj_fail", page_size=1000)
    row = run(db, job)
    assert row["status"] == "failed"
    assert row["sqlstate"] == "22007"
    assert 'invalid input syntax for type date: "n/a"' in row["error_message"]
    assert 'page 1, record 7, column "birthdate", value "n/a"' in row["error_message"]
    assert db.one("SELECT count(*) FROM rj_fail") == 0
    assert db.one("SELECT count(*) FROM dw_etl_rejects WHERE run_id = %s", (row["run_id"],)) == 0
    assert "rejected" not in row["run_context"]


def test_past_max_rejected_the_run_fails_and_a_resume_adds_up(db):
    table(db, "rj_max")
    job = db.job("rjmax", "/odata/Patients?n=20000&bad_records=1", "rj_max", page_size=1000,
                 pagination_options=TOTAL, on_bad_record="reject", max_rejected=3,
                 checkpoint_interval_seconds=0)
    row = run(db, job)
    run_id = row["run_id"]
    assert row["status"] == "failed"
    assert row["sqlstate"] == "23514"
    assert row["error_message"].startswith(
        f"etl_exec run {run_id} has rejected 3 records, as many as job {job}'s max_rejected (3) allows, "
        "and record 1 of page 6 is refused too"), row["error_message"]
    assert 'The record was refused with: new row for relation "rj_max" violates check constraint' \
        in row["error_message"]
    assert "Raise the job's max_rejected" in row["error_message"]
    # the page that went past is not committed: the checkpoint is the one before
    assert db.one("SELECT page_index FROM etl_get_checkpoint(%s)", (run_id,)) == 5
    assert row["records_loaded"] == 4997
    assert row["run_context"]["rejected"] == 3
    assert db.one("SELECT count(*) FROM rj_max") == 4997
    assert rejects(db, run_id) == expected_rejects(job, 4999, 1000, "rj_max")
    # no limit now: the resume goes on, and counts the run's rejects over both segments
    db.q("UPDATE dw_etl_jobs SET max_rejected = NULL WHERE job_id = %s", (job,))
    db.q("SELECT etl_resume_run(%s, wait := true)", (run_id,))
    row = db.run_row(run_id)
    assert (row["status"], row["records_loaded"]) == ("succeeded", 19993)
    assert row["run_context"]["rejected"] == 7
    assert rejects(db, run_id) == expected_rejects(job, 20000, 1000, "rj_max")
    assert_good_rows(db, "rj_max", 20000)


def test_append_rejects_a_record_whose_key_is_taken(db):
    """A unique violation is the record's own: in append mode a record that
    is in the table already is rejected (upsert merges it instead)."""
    table(db, "rj_dup")
    db.q("INSERT INTO rj_dup (patientid, name) VALUES (42, 'there before')")
    job = db.job("rjdup", "/odata/Patients?n=100", "rj_dup", page_size=50, on_bad_record="reject")
    row = run(db, job)
    assert (row["status"], row["records_loaded"], row["run_context"]["rejected"]) == ("succeeded", 99, 1)
    assert [(r[0], r[1], r[3], r[4], r[5]) for r in rejects(db, row["run_id"])] == \
        [(0, 41, None, 'duplicate key value violates unique constraint "rj_dup_pkey"', "23505")]
    assert db.one("SELECT name FROM rj_dup WHERE patientid = 42") == "there before"
    assert db.one("SELECT count(*) FROM rj_dup") == 100


def test_max_rejected_0_fails_on_the_first_bad_record(db):
    table(db, "rj_zero")
    job = db.job("rjzero", "/odata/Patients?n=1000&bad_records=1", "rj_zero", page_size=100,
                 on_bad_record="reject", max_rejected=0, checkpoint_interval_seconds=0)
    row = run(db, job)
    assert (row["status"], row["sqlstate"], row["records_loaded"]) == ("failed", "22007", 0)
    assert f"has rejected 0 records, as many as job {job}'s max_rejected (0) allows, and record 7 of page 1" \
        in row["error_message"]
    assert db.one("SELECT count(*) FROM dw_etl_rejects WHERE run_id = %s", (row["run_id"],)) == 0


def test_timeouts_and_resumes_reject_each_record_exactly_once(db):
    table(db, "rj_resume")
    # 40 pages of 500 at >= 60 ms each: a 1 s timeout hits several times
    job = db.job("rjresume", "/odata/Patients?n=20000&delay_ms=60&bad_records=1", "rj_resume",
                 concurrency=1, page_size=500, pagination_options=TOTAL, on_bad_record="reject")
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
    statuses = db.resume_until_done(run_id, timeout=1)
    assert statuses.count("timed_out") >= 2, statuses
    row = db.run_row(run_id)
    assert (row["records_loaded"], row["run_context"]["rejected"]) == (19993, 7)
    assert rejects(db, run_id) == expected_rejects(job, 20000, 500, "rj_resume")
    assert_good_rows(db, "rj_resume", 20000)


def test_upsert_rejects_what_the_merge_refuses(db):
    table(db, "rj_upsert")
    job = db.job("rjupsert", "/odata/Patients?n=20000&bad_records=1", "rj_upsert", page_size=1000,
                 pagination_options=TOTAL, load_mode="upsert", key_columns="{patientid}",
                 on_bad_record="reject")
    for _ in range(2):          # all keys new, then all there: both ways
        row = run(db, job)
        assert (row["status"], row["records_loaded"], row["run_context"]["rejected"]) == ("succeeded", 19993, 7)
        assert rejects(db, row["run_id"]) == expected_rejects(job, 20000, 1000, "rj_upsert")
    assert_good_rows(db, "rj_upsert", 20000)


def test_replace_rejects_into_its_staging_table(db):
    table(db, "rj_replace")
    db.q("INSERT INTO rj_replace (patientid, name) VALUES (-1, 'replaced')")
    job = db.job("rjreplace", "/odata/Patients?n=6000&bad_records=1", "rj_replace", page_size=1000,
                 pagination_options=TOTAL, load_mode="replace", on_bad_record="reject")
    row = run(db, job)
    assert (row["status"], row["records_loaded"], row["run_context"]["rejected"]) == ("succeeded", 5996, 4)
    got = rejects(db, row["run_id"])
    assert [(r[0], r[1], r[3], r[5]) for r in got] == \
        [((i - 1) // 1000, (i - 1) % 1000, BAD[i][0], BAD[i][2]) for i in (7, 150, 2500, 5001)]
    assert got[3][4].endswith('violates check constraint "rj_replace_score_check"')
    assert_good_rows(db, "rj_replace", 6000)


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_ndjson_and_csv_records_are_kept_as_sent(db, fmt):
    target = f"rj_{fmt}"
    table(db, target)
    job = db.job(f"rj{fmt}", f"/odata/Patients?n=6000&format={fmt}&bad_records=1", target, page_size=1000,
                 format=fmt, on_bad_record="reject")
    row = run(db, job)
    assert (row["status"], row["records_loaded"], row["run_context"]["rejected"]) == ("succeeded", 5996, 4)
    got = rejects(db, row["run_id"])
    assert [(r[0], r[1], r[3], r[4], r[5]) for r in got] == \
        [((i - 1) // 1000, (i - 1) % 1000, BAD[i][0], BAD[i][1].format(t=target), BAD[i][2])
         for i in (7, 150, 2500, 5001)]
    if fmt == "ndjson":
        assert [r[2] for r in got] == [bad_record(i) for i in (7, 150, 2500, 5001)]
    else:
        # a csv record is the object of header -> field (text)
        assert got[0][2]["PatientId"] == "7" and got[0][2]["BirthDate"] == "n/a"
        assert got[3][2]["Score"] == "-1" and got[3][2]["Name"] == mock_api.record(5001)["Name"]
        assert sorted(got[0][2]) == sorted(mock_api.CSV_FIELDS)
    assert_good_rows(db, target, 6000)


def test_a_dry_run_reports_the_records_it_would_reject(db):
    table(db, "rj_dry")
    job = db.job("rjdry", "/odata/Patients?n=1000&bad_records=1", "rj_dry", page_size=200,
                 on_bad_record="reject")
    row = run(db, job, dry_run=True)
    assert row["status"] == "succeeded"
    report = row["run_context"]["dry_run"]
    assert report["records"] == 200
    assert report["rejected"] == 2
    assert report["rejects"] == [
        {"record_index": 6, "column_name": "birthdate", "error": 'invalid input syntax for type date: "n/a"'},
        {"record_index": 149, "column_name": "birthdate",
         "error": 'date/time field value out of range: "2021-02-30"'}]
    assert db.one("SELECT count(*) FROM dw_etl_rejects WHERE run_id = %s", (row["run_id"],)) == 0
    assert db.one("SELECT count(*) FROM rj_dry") == 0
    # without reject, the dry run fails on the first, as ever
    db.q("UPDATE dw_etl_jobs SET on_bad_record = 'fail' WHERE job_id = %s", (job,))
    row = run(db, job, dry_run=True)
    assert row["status"] == "failed"
    assert 'page 1, record 7, column "birthdate", value "n/a"' in row["error_message"]


def test_the_job_columns_are_validated(db):
    db.job("rjval", "/odata/Patients", "rj_val", on_bad_record="reject", max_rejected=5)
    for cols, message in (
            ("on_bad_record = 'skip'", """job "rjval": on_bad_record must be 'fail' or 'reject', not "skip\""""),
            ("max_rejected = -1", 'job "rjval": max_rejected must be 0 or more, not -1')):
        with pytest.raises(psycopg2.Error) as e:
            db.q(f"UPDATE dw_etl_jobs SET {cols} WHERE name = 'rjval'")
        assert e.value.pgcode == "22023"
        assert e.value.diag.message_primary == message
        assert e.value.diag.message_hint
    assert db.one("SELECT column_default FROM information_schema.columns "
                  "WHERE table_name = 'dw_etl_jobs' AND column_name = 'on_bad_record'") == "'fail'::text"


@pytest.fixture
def teams(db):
    """rj_a_login (LOGIN) is a member of rj_a, rj_b_login of rj_b: two etl_operators."""
    names = ("rj_a_login", "rj_b_login", "rj_a", "rj_b")

    def drop():
        for r in names:
            if db.one("SELECT count(*) FROM pg_roles WHERE rolname = %s", (r,)):
                db.q(f"DROP OWNED BY {r}")
                db.q(f"DROP ROLE {r}")
    drop()
    db.q("CREATE ROLE rj_a NOLOGIN IN ROLE etl_operator")
    db.q("CREATE ROLE rj_b NOLOGIN IN ROLE etl_operator")
    db.q("CREATE ROLE rj_a_login LOGIN IN ROLE rj_a")
    db.q("CREATE ROLE rj_b_login LOGIN IN ROLE rj_b")
    yield
    drop()


def as_role(db, login, sql, args=(), role=None):
    conn = connect(db.dbname, user=login)
    cur = conn.cursor()
    if role:
        cur.execute(f"SET ROLE {role}")
    cur.execute(sql, args)
    result = cur.fetchall()
    conn.close()
    return result


def test_operators_read_the_rejects_of_their_own_runs_only(db, teams):
    table(db, "rj_ops")
    db.q("GRANT SELECT, INSERT ON rj_ops TO rj_a")
    job = db.job("rjops", "/odata/Patients?n=300&bad_records=1", "rj_ops", page_size=100,
                 on_bad_record="reject")
    run_id = as_role(db, "rj_a_login", "SELECT etl_execute_job(%s)", (job,), role="rj_a")[0][0]
    assert db.wait(run_id) == "succeeded"
    assert db.one("SELECT count(*) FROM dw_etl_rejects WHERE run_id = %s", (run_id,)) == 2
    count = "SELECT count(*) FROM dw_etl_rejects WHERE run_id = %s"
    assert as_role(db, "rj_a_login", count, (run_id,)) == [(2,)]
    assert as_role(db, "rj_b_login", count, (run_id,)) == [(0,)]
    # (since 0.6.0 the run itself is rj_a's too: its run_context, errors and parameters)
    assert as_role(db, "rj_b_login", "SELECT count(*) FROM dw_etl_runs WHERE run_id = %s", (run_id,)) == [(0,)]
    assert as_role(db, "rj_a_login", "SELECT count(*) FROM dw_etl_runs WHERE run_id = %s", (run_id,)) == [(1,)]
    with pytest.raises(psycopg2.Error) as e:
        as_role(db, "rj_a_login", "DELETE FROM dw_etl_rejects WHERE run_id = %s RETURNING 1", (run_id,))
    assert e.value.pgcode == "42501"


def test_row_level_security_applies_and_its_refusal_is_no_reject(db, teams):
    table(db, "rj_rls")
    db.q("GRANT SELECT, INSERT ON rj_rls TO rj_a")
    db.q("ALTER TABLE rj_rls ENABLE ROW LEVEL SECURITY")
    db.q("CREATE POLICY rj_all ON rj_rls FOR ALL TO rj_a USING (true) WITH CHECK (true)")
    job = db.job("rjrls", "/odata/Patients?n=3000&bad_records=1", "rj_rls", page_size=1000,
                 on_bad_record="reject", checkpoint_interval_seconds=0)
    run_id = as_role(db, "rj_a_login", "SELECT etl_execute_job(%s)", (job,), role="rj_a")[0][0]
    assert db.wait(run_id) == "succeeded"
    row = db.run_row(run_id)
    assert (row["records_loaded"], row["run_context"]["rejected"]) == (2997, 3)
    assert rejects(db, run_id) == expected_rejects(job, 3000, 1000, "rj_rls")
    assert_good_rows(db, "rj_rls", 3000)
    # a policy's refusal is the role's, not the record's: the run fails
    db.q("TRUNCATE rj_rls")
    db.q("CREATE POLICY rj_small ON rj_rls AS RESTRICTIVE FOR INSERT TO rj_a WITH CHECK (patientid <= 1500)")
    run_id = as_role(db, "rj_a_login", "SELECT etl_execute_job(%s)", (job,), role="rj_a")[0][0]
    assert db.wait(run_id) == "failed"
    row = db.run_row(run_id)
    assert row["sqlstate"] == "42501"
    assert "violates row-level security policy" in row["error_message"]
    assert row["records_loaded"] == 998
    assert db.one("SELECT count(*) FROM dw_etl_rejects WHERE run_id = %s", (run_id,)) == 2


def test_pruning_a_run_deletes_its_rejects(db):
    table(db, "rj_prune")
    job = db.job("rjprune", "/odata/Patients?n=300&bad_records=1", "rj_prune", page_size=100,
                 on_bad_record="reject")
    old = run(db, job)["run_id"]
    db.q("TRUNCATE rj_prune")
    new = run(db, job)["run_id"]
    assert db.one("SELECT count(*) FROM dw_etl_rejects WHERE run_id IN (%s, %s)", (old, new)) == 4
    db.q("UPDATE dw_etl_runs SET finished_at = now() - interval '2 days' WHERE run_id = %s", (old,))
    assert db.one("SELECT etl_prune_runs(interval '1 day')") == 1
    assert db.one("SELECT count(*) FROM dw_etl_rejects WHERE run_id = %s", (old,)) == 0
    assert db.one("SELECT count(*) FROM dw_etl_rejects WHERE run_id = %s", (new,)) == 2


def test_a_run_with_partitions_says_whose_page_a_reject_is(db):
    db.q("DROP TABLE IF EXISTS rj_parts")
    db.q("CREATE TABLE rj_parts (patientid int, birthdate date)")
    job = db.job("rjparts", "/odata/Patients?n={n}&bad_records=1", "rj_parts", page_size=100,
                 on_bad_record="reject", partitions=json.dumps({"values": {"n": [200, 300]}}))
    row = run(db, job)
    assert (row["status"], row["records_loaded"], row["run_context"]["rejected"]) == ("succeeded", 496, 4)
    # (partition_index, page_index, record_index, column_name): pages count per partition
    assert sorted((r[7], r[0], r[1], r[3]) for r in rejects(db, row["run_id"])) == \
        [(0, 0, 6, "birthdate"), (0, 1, 49, "birthdate"), (1, 0, 6, "birthdate"), (1, 1, 49, "birthdate")]


def test_a_parameter_its_column_refuses_fails_the_run_not_each_record(db):
    """A {param:NAME} value is the run's, not a record's: with reject on, a
    value its column refuses (or a null for a NOT NULL column) still fails
    the run, before any row -- it would otherwise reject every record."""
    db.q("DROP TABLE IF EXISTS rj_param")
    db.q("CREATE TABLE rj_param (patientid int, tenant int NOT NULL)")
    job = db.job("rjparam", "/odata/Patients?n=30", "rj_param", page_size=10, on_bad_record="reject",
                 column_map={"patientid": "$.PatientId", "tenant": "{param:tenant}"})
    with pytest.raises(psycopg2.Error, match='invalid input syntax for type integer: "abc"') as e:
        db.one("SELECT etl_execute_job(%s, wait := true, parameters := '{\"tenant\": \"abc\"}')", (job,))
    assert 'column_map {param:tenant} for column "tenant", value "abc"' in e.value.diag.message_detail
    with pytest.raises(psycopg2.Error, match='column_map of job %d gives column "tenant" the parameter "tenant", '
                                             'which is null, and the column is NOT NULL' % job):
        db.one("SELECT etl_execute_job(%s, wait := true, parameters := '{\"tenant\": null}')", (job,))
    assert db.one("SELECT count(*) FROM rj_param") == 0
    assert db.one("SELECT count(*) FROM dw_etl_rejects WHERE job_id = %s", (job,)) == 0
    run_id = db.one("SELECT etl_execute_job(%s, wait := true, parameters := '{\"tenant\": 4}')", (job,))
    assert db.run_row(run_id)["status"] == "succeeded"
    assert db.q("SELECT tenant, count(*) FROM rj_param GROUP BY 1") == [(4, 30)]


def test_a_csv_field_that_is_not_json_is_rejected_with_its_record_as_sent(db):
    db.q("DROP TABLE IF EXISTS rj_csv_json")
    db.q("CREATE TABLE rj_csv_json (id int, meta jsonb)")
    job = db.job("rjcsvjson", "/fixture/rejects_json_field.csv", "rj_csv_json", format="csv",
                 pagination="none", on_bad_record="reject")
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    row = db.run_row(run_id)
    assert row["status"] == "succeeded" and row["records_loaded"] == 2, row["error_message"]
    assert db.q("SELECT id, meta FROM rj_csv_json ORDER BY id") == [(1, {"a": 1}), (3, [1, 2])]
    assert db.q("SELECT record_index, record, column_name FROM dw_etl_rejects WHERE run_id = %s", (run_id,)) == \
        [(1, {"id": "2", "meta": "{bad"}, "meta")]


def test_a_null_parameter_for_a_not_null_domain_fails_the_run(db):
    db.q("DROP TABLE IF EXISTS rj_param_domain")
    db.q("DROP DOMAIN IF EXISTS rj_site")
    db.q("CREATE DOMAIN rj_site AS int NOT NULL")
    db.q("CREATE TABLE rj_param_domain (patientid int, site rj_site)")
    job = db.job("rjparamdomain", "/odata/Patients?n=20", "rj_param_domain", page_size=10, on_bad_record="reject",
                 column_map={"patientid": "$.PatientId", "site": "{param:site}"})
    with pytest.raises(psycopg2.Error, match='domain (public.)?rj_site does not allow null values') as e:
        db.one("SELECT etl_execute_job(%s, wait := true, parameters := '{\"site\": null}')", (job,))
    assert 'column_map {param:site} for column "site", value null' in e.value.diag.message_detail
    assert db.one("SELECT count(*) FROM dw_etl_rejects WHERE job_id = %s", (job,)) == 0
