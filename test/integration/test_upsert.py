"""Upsert: pages read by the one-pass reader (or jsonb) go in through COPY --
straight into the target when their keys are all new, else merged by one
INSERT ... SELECT DISTINCT ON (keys) ... ON CONFLICT per page (loader.c,
page_table.c).  Each test pins a semantic both ways must share: the last
record of a key wins, existing rows update, columns a page does not
mention keep their values, row-level security and privileges apply, bad
values name their place, and pages commit exactly once with their
checkpoint."""
import psycopg2
import pytest

from conftest import connect
import mock_api

TOTAL = '{"total_path": "$.\\"@odata.count\\""}'
FIXTURE = {"skip_param": "$skip"}


def run(db, job, **kw):
    """Run a job to its end (wait := true) and return its run row."""
    args = ", ".join(f"{k} := %s" for k in kw)
    try:
        run_id = db.one(f"SELECT etl_execute_job(%s, wait := true{', ' if kw else ''}{args})",
                        (job, *kw.values()))
    except psycopg2.Error:
        run_id = db.one("SELECT max(run_id) FROM dw_etl_runs WHERE job_id = %s", (job,))
    return db.run_row(run_id)


def last_record_per_key(n, key):
    """{key value: the last record 1..n with it}."""
    last = {}
    for i in range(1, n + 1):
        last[key(mock_api.record(i))] = i
    return last


@pytest.fixture
def roles(db):
    """u_login (LOGIN) can SET ROLE u_team (NOLOGIN), an etl_operator."""
    for r in ("u_login", "u_team"):
        if db.one("SELECT count(*) FROM pg_roles WHERE rolname = %s", (r,)):
            db.q(f"DROP OWNED BY {r}")
            db.q(f"DROP ROLE {r}")
    db.q("CREATE ROLE u_team NOLOGIN IN ROLE etl_operator")
    db.q("CREATE ROLE u_login LOGIN IN ROLE u_team")
    yield
    for r in ("u_login", "u_team"):
        db.q(f"DROP OWNED BY {r}")
        db.q(f"DROP ROLE {r}")


def start_as_team(db, job, **kw):
    """Start a run as u_team (reached by SET ROLE) and wait for its end."""
    conn = connect(db.dbname, user="u_login")
    cur = conn.cursor()
    cur.execute("SET ROLE u_team")
    args = "".join(f", {k} := %s" for k in kw)
    cur.execute(f"SELECT etl_execute_job(%s{args})", (job, *kw.values()))
    run_id = cur.fetchone()[0]
    conn.close()
    db.wait(run_id)
    return db.run_row(run_id)


def test_new_keys_load_exactly_and_no_page_table_is_left(db):
    db.patients_table("u_new")
    job = db.job("unew", "/odata/Patients?n=5000", "u_new", page_size=500, pagination_options=TOTAL,
                 load_mode="upsert", key_columns="{patientid}")
    row = run(db, job)
    assert (row["status"], row["records_loaded"], row["pages_fetched"]) == ("succeeded", 5000, 10)
    db.assert_patients_exact("u_new", 5000)
    assert db.one("SELECT count(*) FROM u_new WHERE loaded_at IS NULL") == 0     # defaults on insert
    assert db.one("SELECT count(*) FROM pg_class WHERE relname LIKE 'etl\\_exec\\_page\\_%%'") == 0


@pytest.mark.parametrize("page_size", [40, 100])
def test_last_record_of_a_key_wins_within_and_across_pages(db, page_size):
    """visits = i % 17 repeats within every page and across pages; the
    second run finds every key there (each page merges)."""
    db.q("DROP TABLE IF EXISTS u_visits")
    db.q("CREATE TABLE u_visits (visits int PRIMARY KEY, patientid int, name text)")
    job = db.job("uvisits", "/odata/Patients?n=100", "u_visits", page_size=page_size,
                 pagination_options=TOTAL, load_mode="upsert", key_columns="{visits}")
    expected = {v: (i, mock_api.record(i)["Name"])
                for v, i in last_record_per_key(100, lambda r: r["Visits"]).items()}
    for _ in range(2):
        row = run(db, job)
        assert (row["status"], row["records_loaded"]) == ("succeeded", 100)
        rows = {v: (p, n) for v, p, n in db.q("SELECT visits, patientid, name FROM u_visits")}
        assert rows == expected


def test_existing_rows_update_and_missing_ones_come_back(db):
    db.patients_table("u_again")
    job = db.job("uagain", "/odata/Patients?n=3000", "u_again", page_size=250, pagination_options=TOTAL,
                 load_mode="upsert", key_columns="{patientid}")
    assert run(db, job)["status"] == "succeeded"
    db.q("UPDATE u_again SET name = 'stale', score = -1, meta = '{}', loaded_at = '2001-01-01'")
    db.q("DELETE FROM u_again WHERE patientid % 7 = 0 OR patientid > 2900")     # pages of old and new keys
    row = run(db, job)
    assert (row["status"], row["records_loaded"]) == ("succeeded", 3000)
    db.assert_patients_exact("u_again", 3000)
    # loaded_at is in no record: rows that were there keep it, rows inserted take the default
    assert db.one("SELECT count(*) FROM u_again WHERE loaded_at = '2001-01-01'") == 2900 - 2900 // 7
    assert db.one("SELECT count(*) FROM u_again WHERE loaded_at > now() - interval '1 hour'") == 100 + 2900 // 7


def test_columns_a_page_does_not_mention_keep_their_values(db):
    """Per page, as before: a column no record mentions is left alone on
    update (and takes its default on insert); a column some record
    mentions is NULL in a record without it.  Through the one-pass reader
    and through jsonb alike."""
    results = []
    for name, suffix in (("fast", ""), ("jsonb", " ? (exists(@))")):
        table = f"u_partial_{name}"
        db.q(f"DROP TABLE IF EXISTS {table}")
        db.q(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, note text, score int, "
             f"loaded text DEFAULT 'dflt')")
        db.q(f"INSERT INTO {table} VALUES (1, 'old1', 'oldnote1', 11, 'pre'), (2, 'old2', 'oldnote2', 22, 'pre'), "
             f"(4, 'old4', 'oldnote4', 44, 'pre')")
        for fixture in ("upsert_partial", "upsert_keys_only"):
            job = db.job(f"u_{fixture}_{name}", f"/fixture/{fixture}", table, page_size=100,
                         pagination_options=FIXTURE, load_mode="upsert", key_columns="{id}",
                         records_path="$.value[*]" + suffix)
            assert run(db, job)["status"] == "succeeded"
        results.append(db.q(f"SELECT * FROM {table} ORDER BY id"))
    assert results[0] == results[1] == [
        (1, "one again", None, 11, "pre"),      # the key's last record; Note mentioned by the page: NULL
        (2, "two", None, 22, "pre"),            # score and loaded: no record mentions them
        (3, "three", None, None, "dflt"),       # inserted: defaults
        (4, "old4", "oldnote4", 44, "pre"),     # not in the API
        (5, None, None, None, "dflt"),          # a page of keys only inserts, and leaves 2 alone
    ]


def test_a_null_key_and_a_key_in_no_record_fail_clearly(db):
    db.q("DROP TABLE IF EXISTS u_nullkey")
    db.q("CREATE TABLE u_nullkey (id int PRIMARY KEY, name text)")
    job = db.job("unullkey", "/fixture/upsert_null_key", "u_nullkey", page_size=100, pagination_options=FIXTURE,
                 load_mode="upsert", key_columns="{id}")
    row = run(db, job)
    assert row["status"] == "failed"
    assert 'null value in column "id" of relation "u_nullkey" violates not-null constraint' in row["error_message"]
    assert "loading page 1" in row["error_message"]
    assert db.one("SELECT count(*) FROM u_nullkey") == 0
    # a key column no record of the page names
    db.q("DROP TABLE IF EXISTS u_nokey")
    db.q("CREATE TABLE u_nokey (uid int PRIMARY KEY, name text)")
    job = db.job("unokey", "/odata/Patients?n=10", "u_nokey", page_size=100, load_mode="upsert",
                 key_columns="{uid}")
    row = run(db, job)
    assert row["status"] == "failed"
    assert 'key column "uid" is missing from every record of page 1' in row["error_message"]


def test_a_nullable_unique_key_keeps_one_record_of_its_nulls_per_page(db):
    """DISTINCT ON keeps one record of the NULL keys of a page (NULLs never
    conflict, so each page inserts one); COPY alone would insert them all."""
    db.q("DROP TABLE IF EXISTS u_notes")
    db.q("CREATE TABLE u_notes (notes text UNIQUE, patientid int)")
    job = db.job("unotes", "/odata/Patients?n=30", "u_notes", page_size=10, pagination_options=TOTAL,
                 load_mode="upsert", key_columns="{notes}")
    assert run(db, job)["status"] == "succeeded"
    # notes is NULL for every fifth record: two a page, the page's last kept
    assert db.q("SELECT patientid FROM u_notes WHERE notes IS NULL ORDER BY 1") == [(10,), (20,), (30,)]
    assert db.one("SELECT count(*) FROM u_notes WHERE notes IS NOT NULL") == 24


def test_statement_triggers_fire_as_for_an_upsert(db):
    """INSERT ... ON CONFLICT DO UPDATE fires the statement-level UPDATE
    triggers too, even when every key is new: once a page."""
    db.patients_table("u_stmt")
    db.q("DROP TABLE IF EXISTS u_stmt_log")
    db.q("CREATE TABLE u_stmt_log (op text)")
    db.q("""CREATE OR REPLACE FUNCTION u_stmt_note() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO public.u_stmt_log VALUES (TG_OP); RETURN NULL; END $$""")
    db.q("CREATE TRIGGER u_stmt_upd BEFORE UPDATE ON u_stmt FOR EACH STATEMENT EXECUTE FUNCTION u_stmt_note()")
    job = db.job("ustmt", "/odata/Patients?n=400", "u_stmt", page_size=100, pagination_options=TOTAL,
                 load_mode="upsert", key_columns="{patientid}")
    assert run(db, job)["status"] == "succeeded"
    db.assert_patients_exact("u_stmt", 400)
    assert db.one("SELECT count(*) FROM u_stmt_log WHERE op = 'UPDATE'") == 4


def test_bad_values_name_page_record_column_and_value(db):
    db.q("DROP TABLE IF EXISTS u_badtype")
    db.q("CREATE TABLE u_badtype (patientid int PRIMARY KEY, name int)")
    job = db.job("ubadtype", "/odata/Patients?n=30", "u_badtype", page_size=10, load_mode="upsert",
                 key_columns="{patientid}")
    row = run(db, job)
    assert row["status"] == "failed"
    assert 'invalid input syntax for type integer: "Patient 1"' in row["error_message"]
    assert 'page 1, record 1, column "name", value "Patient 1"' in row["error_message"]
    assert db.one("SELECT count(*) FROM u_badtype") == 0
    # a value that breaks a domain on page 2, after page 1 went in
    db.q("DROP TABLE IF EXISTS u_domain")
    db.q("DROP DOMAIN IF EXISTS u_small_id")
    db.q("CREATE DOMAIN u_small_id AS int CHECK (VALUE <= 15)")
    db.q("CREATE TABLE u_domain (patientid u_small_id PRIMARY KEY, name text)")
    job = db.job("udomain", "/odata/Patients?n=30", "u_domain", page_size=10, load_mode="upsert",
                 key_columns="{patientid}", checkpoint_interval_seconds=0)
    row = run(db, job)
    assert row["status"] == "failed"
    assert 'value for domain public.u_small_id violates check constraint "u_small_id_check"' in row["error_message"]
    assert 'page 2, record 6, column "patientid", value "16"' in row["error_message"]
    assert db.one("SELECT count(*) FROM u_domain") == 10
    assert db.one("SELECT skip FROM etl_get_checkpoint(%s)", (row["run_id"],)) == 10


def test_row_level_security_still_applies(db, roles):
    """A policy that rejects new rows past 150: page 1 merges, page 2 (which
    COPY would have inserted without asking the policy) fails."""
    db.patients_table("u_rls")
    db.q("GRANT SELECT, INSERT, UPDATE ON u_rls TO u_team")
    db.q("ALTER TABLE u_rls ENABLE ROW LEVEL SECURITY")
    db.q("CREATE POLICY u_small_ids ON u_rls FOR ALL TO u_team USING (true) WITH CHECK (patientid <= 150)")
    job = db.job("urls", "/odata/Patients?n=300", "u_rls", page_size=100, load_mode="upsert",
                 key_columns="{patientid}")
    row = start_as_team(db, job)
    assert row["status"] == "failed"
    assert "new row violates row-level security policy" in row["error_message"]
    assert db.one("SELECT count(*) FROM u_rls") == 100
    # rows the role may not update: the merge fails, nothing changes
    db.q("DROP POLICY u_small_ids ON u_rls")
    db.q("CREATE POLICY u_see ON u_rls FOR SELECT TO u_team USING (true)")
    db.q("CREATE POLICY u_add ON u_rls FOR INSERT TO u_team WITH CHECK (true)")
    db.q("CREATE POLICY u_change ON u_rls FOR UPDATE TO u_team USING (patientid <= 50)")
    db.q("UPDATE u_rls SET name = 'kept'")
    job = db.job("urls2", "/odata/Patients?n=100", "u_rls", page_size=100, load_mode="upsert",
                 key_columns="{patientid}")
    row = start_as_team(db, job)
    assert row["status"] == "failed"
    assert "violates row-level security policy" in row["error_message"]
    assert db.one("SELECT count(*) FROM u_rls WHERE name = 'kept'") == 100
    # append into the same table goes through INSERT too: the policy is asked
    db.q("TRUNCATE u_rls")
    db.q("CREATE POLICY u_small ON u_rls AS RESTRICTIVE FOR INSERT TO u_team WITH CHECK (patientid <= 150)")
    job = db.job("urls3", "/odata/Patients?n=300", "u_rls", page_size=100)
    row = start_as_team(db, job)
    assert row["status"] == "failed" and "row-level security" in row["error_message"]
    assert db.one("SELECT count(*) FROM u_rls") == 100


def test_privileges_decide_and_errors_say_so(db, roles):
    db.patients_table("u_priv")
    db.q("GRANT INSERT ON u_priv TO u_team")
    job = db.job("upriv", "/odata/Patients?n=1000", "u_priv", page_size=100, pagination_options=TOTAL,
                 load_mode="upsert", key_columns="{patientid}")
    # INSERT alone is not enough for INSERT ... ON CONFLICT DO UPDATE, new keys or not
    row = start_as_team(db, job)
    assert row["status"] == "failed"
    assert "permission denied for table u_priv" in row["error_message"]
    assert db.one("SELECT count(*) FROM u_priv") == 0
    db.q("GRANT SELECT, UPDATE ON u_priv TO u_team")
    for _ in range(2):          # new keys, then every key there
        row = start_as_team(db, job)
        assert (row["status"], row["records_loaded"]) == ("succeeded", 1000)
        db.assert_patients_exact("u_priv", 1000)
    # UPDATE taken away again: the next run fails, rows stay as they were
    db.q("REVOKE UPDATE ON u_priv FROM u_team")
    db.q("UPDATE u_priv SET name = 'kept'")
    row = start_as_team(db, job)
    assert row["status"] == "failed"
    assert "permission denied for table u_priv" in row["error_message"]
    assert db.one("SELECT count(*) FROM u_priv WHERE name = 'kept'") == 1000


@pytest.mark.parametrize("interval", [None, 0])
def test_timeouts_then_resume_write_every_record_exactly_once(db, interval):
    """A trigger logs every row written: through timeouts and resumes each
    record is written once a run -- inserted by the first run, updated by
    the second -- never twice (a page committed without its checkpoint, or
    a rolled-back COPY attempt that left something behind) nor never."""
    db.patients_table("u_once")
    db.q("DROP TABLE IF EXISTS u_once_log")
    db.q("CREATE TABLE u_once_log (patientid int, op text)")
    db.q("""CREATE OR REPLACE FUNCTION u_once_note() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO public.u_once_log VALUES (NEW.patientid, TG_OP); RETURN NULL; END $$""")
    db.q("CREATE TRIGGER u_once_row AFTER INSERT OR UPDATE ON u_once FOR EACH ROW EXECUTE FUNCTION u_once_note()")
    # 40 pages at >= 100 ms each: a 1 s timeout hits at least once even with
    # several requests in flight
    job = db.job("uonce", "/odata/Patients?n=8000&delay_ms=100", "u_once", page_size=200,
                 pagination_options=TOTAL, load_mode="upsert", key_columns="{patientid}",
                 checkpoint_interval_seconds=interval)
    for op in ("INSERT", "UPDATE"):
        run_id = db.one("SELECT etl_execute_job(%s, timeout := 1)", (job,))
        statuses = db.resume_until_done(run_id, timeout=1)
        assert statuses.count("timed_out") >= 1, statuses
        row = db.run_row(run_id)
        assert (row["records_loaded"], row["pages_fetched"]) == (8000, 40)
        db.assert_patients_exact("u_once", 8000)
        assert db.q("SELECT count(*), count(DISTINCT patientid) FROM u_once_log WHERE op = %s", (op,)) == [(8000, 8000)]
    assert db.one("SELECT count(*) FROM u_once_log") == 16000


def test_dry_run_writes_nothing(db):
    db.patients_table("u_dry")
    db.q("INSERT INTO u_dry (patientid, name) VALUES (1, 'kept')")
    job = db.job("udry", "/odata/Patients?n=500", "u_dry", page_size=100, load_mode="upsert",
                 key_columns="{patientid}")
    row = run(db, job, dry_run=True)
    assert (row["status"], row["records_loaded"]) == ("succeeded", 0)
    assert row["run_context"]["dry_run"]["records"] == 100
    assert db.q("SELECT patientid, name FROM u_dry") == [(1, "kept")]

