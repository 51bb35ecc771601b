"""Security: each test replays an attack an adversarial probe found (as an
operator, with a hostile server or bad settings) and checks it fails."""
import json
import os
import urllib.request

import psycopg2
import pytest

from conftest import MOCK_API, connect, fresh_database, run_in_session

ORIGIN = MOCK_API.split("://", 1)[1]
PORT = ORIGIN.rsplit(":", 1)[1]
SECRET = "tok-Sec-9c1d-Never-In-Errors"


def stats():
    with urllib.request.urlopen(MOCK_API + "/__stats") as r:
        return json.loads(r.read())


def reset():
    urllib.request.urlopen(MOCK_API + "/__reset").read()


def server_log():
    log = os.path.join(os.environ.get("ETL_TEST_ROOT", "/tmp/etl_exec_test"), "server.log")
    with open(log, encoding="utf-8", errors="replace") as f:
        return f.read()


@pytest.fixture
def op1(db):
    """A login role with only etl_operator and CREATE on schema public."""
    if db.one("SELECT count(*) FROM pg_roles WHERE rolname = 'op1'"):
        db.q("DROP OWNED BY op1")
        db.q("DROP ROLE op1")
    db.q("CREATE ROLE op1 LOGIN IN ROLE etl_operator")
    db.q("GRANT CREATE, USAGE ON SCHEMA public TO op1")
    conn = connect(db.dbname, user="op1")
    yield conn
    conn.close()
    db.q("ALTER ROLE op1 NOSUPERUSER")
    db.q("DROP OWNED BY op1")
    db.q("DROP ROLE op1")


def test_a_planted_staging_table_cannot_make_an_operator_superuser(db, op1):
    """Replace mode used to adopt an existing _etl_stage_<run_id> with its
    triggers, which then ran as the (superuser) run's role."""
    db.patients_table("s_repl")
    job = db.job("srepl", "/odata/Patients?n=300", "s_repl", page_size=100, load_mode="replace")
    db.q("GRANT SELECT ON s_repl TO op1")
    cur = op1.cursor()
    cur.execute("CREATE TABLE public.s_planted_log (who text)")
    cur.execute("""CREATE FUNCTION public.s_escalate() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN
                       INSERT INTO public.s_planted_log VALUES (current_user);
                       EXECUTE 'ALTER ROLE op1 SUPERUSER';
                       RETURN NEW;
                   END $$""")
    cur.execute("GRANT INSERT ON public.s_planted_log TO PUBLIC")
    # the operator can see where the run ids are and plants tables for the next ones
    cur.execute("SELECT coalesce(max(run_id), 0) FROM dw_etl_runs")
    last = cur.fetchone()[0]
    for run_id in range(last + 1, last + 6):
        cur.execute(f"CREATE TABLE public._etl_stage_{run_id} (LIKE public.s_repl)")
        cur.execute(f"CREATE TRIGGER s_esc BEFORE INSERT ON public._etl_stage_{run_id} "
                    f"FOR EACH ROW EXECUTE FUNCTION public.s_escalate()")
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert last < run_id <= last + 5
    assert db.one("SELECT rolsuper FROM pg_roles WHERE rolname = 'op1'") is False
    assert db.one("SELECT count(*) FROM s_planted_log") == 0
    db.assert_patients_exact("s_repl", 300)
    # the run made its own staging table (a name no one could guess), and dropped it
    staging = db.run_row(run_id)["run_context"]["staging"]["table"]
    assert staging.startswith(f"etl_exec_staging._etl_stage_{run_id}_")
    assert len(staging) == len(f"etl_exec_staging._etl_stage_{run_id}_") + 16
    assert db.one("SELECT to_regclass(%s)", (staging,)) is None
    assert db.one(f"SELECT count(*) FROM public._etl_stage_{run_id}") == 0     # the planted one, untouched


def test_no_one_can_plant_a_staging_table(db, op1):
    """Staging tables live in a schema only the extension's owner creates in."""
    cur = op1.cursor()
    with pytest.raises(psycopg2.Error, match="permission denied for schema etl_exec_staging"):
        cur.execute("CREATE TABLE etl_exec_staging._etl_stage_1_0000000000000000 (id int)")


def test_settings_changed_by_the_callers_code_stay_with_the_caller(db, op1):
    """A start runs the caller's code ({max:col} reads the target as the
    caller, and the target's row-level security policy calls the caller's
    function); a SET in it must not reach the implementation, which runs
    as the extension's owner."""
    cur = op1.cursor()
    cur.execute("CREATE TABLE public.s_maxleak (patientid int, name text)")
    cur.execute("INSERT INTO public.s_maxleak VALUES (5, 'x')")
    cur.execute("""CREATE FUNCTION public.s_leak() RETURNS boolean LANGUAGE sql AS
                   $$ SELECT set_config('search_path', 'public, pg_catalog', false) IS NOT NULL $$""")
    cur.execute("""CREATE FUNCTION public.jsonb_build_object(text, text) RETURNS jsonb LANGUAGE plpgsql AS $$
                   BEGIN
                       EXECUTE 'ALTER ROLE op1 SUPERUSER';
                       RETURN pg_catalog.jsonb_build_object($1, $2);
                   END $$""")
    cur.execute("ALTER TABLE public.s_maxleak ENABLE ROW LEVEL SECURITY")
    cur.execute("ALTER TABLE public.s_maxleak FORCE ROW LEVEL SECURITY")
    cur.execute("CREATE POLICY s_leaky ON public.s_maxleak USING (public.s_leak())")
    job = db.job("smaxleak", "/odata/Patients?n=10&after={max:patientid}", "s_maxleak", page_size=10)
    cur.execute("SELECT etl_execute_job(%s)", (job,))
    run_id = cur.fetchone()[0]
    db.wait(run_id)
    assert db.one("SELECT rolsuper FROM pg_roles WHERE rolname = 'op1'") is False
    assert db.run_row(run_id)["parameters"]["max:patientid"] == "5"


def test_an_operator_cannot_call_internal_functions_or_pick_a_target(db, op1):
    db.patients_table("s_job91")
    db.patients_table("s_loot")
    db.q("GRANT ALL ON s_loot TO op1")
    job = db.job("sjob91", "/odata/Patients?n=50", "s_job91", page_size=50)
    cur = op1.cursor()
    for call in (f"SELECT _etl_start_worker('new', {job}, NULL, 20, false, '{{}}')",
                 f"SELECT _etl_start_worker('new', {job}, NULL, 20, false, '{{}}', NULL, 'public.s_loot')"):
        with pytest.raises(psycopg2.Error) as exc:
            cur.execute(call)
        assert exc.value.pgcode in ("42501", "42883"), exc.value.pgerror    # denied, or no such function
    # no internal function of the extension is executable by operators or PUBLIC
    granted = db.q("""SELECT p.oid::regprocedure::text FROM pg_proc p
                      JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
                      JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'etl_exec'
                      WHERE p.proname LIKE '\\_etl\\_%%'
                        AND (has_function_privilege('etl_operator', p.oid, 'EXECUTE')
                             OR has_function_privilege('op1', p.oid, 'EXECUTE'))""")
    assert granted == []
    # the entry points take no target: the job's own table is loaded, nothing else
    cur.execute("SELECT etl_execute_job(%s)", (job,))
    run_id = cur.fetchone()[0]
    assert db.wait(run_id) == "failed"             # op1 may not insert into s_job91
    assert "permission denied for table s_job91" in db.run_row(run_id)["error_message"]
    db.q("GRANT INSERT ON s_job91 TO op1")
    cur.execute("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.one("SELECT count(*) FROM s_job91") == 50
    assert db.one("SELECT count(*) FROM s_loot") == 0


def test_the_target_is_resolved_with_the_callers_search_path(db, op1):
    """An unqualified target is the caller's, not the implementation's."""
    db.q("DROP SCHEMA IF EXISTS s_team CASCADE")
    db.q("CREATE SCHEMA s_team")
    db.q("GRANT USAGE ON SCHEMA s_team TO op1")
    db.patients_table("s_team.s_unq")
    db.q("GRANT INSERT ON s_team.s_unq TO op1")
    job = db.job("sunq", "/odata/Patients?n=20", "s_unq", page_size=20)
    cur = op1.cursor()
    with pytest.raises(psycopg2.Error, match='target table "s_unq" of etl_exec job'):
        cur.execute("SELECT etl_execute_job(%s)", (job,))
    cur.execute("SET search_path = s_team, public")
    cur.execute("SELECT etl_execute_job(%s, wait := true)", (job,))
    run_id = cur.fetchone()[0]
    assert db.run_row(run_id)["run_context"]["target"] == "s_team.s_unq"
    assert db.one("SELECT count(*) FROM s_team.s_unq") == 20


def test_user_agent_cannot_smuggle_a_request(db, op1):
    cur = op1.cursor()
    cur.execute("SELECT etl_settings()")            # the module is loaded: its settings are defined
    with pytest.raises(psycopg2.Error, match='permission denied to set parameter "etl_exec.user_agent"'):
        cur.execute("SET etl_exec.user_agent = 'x'")
    db.patients_table("s_ua")
    db.q("DELETE FROM dw_etl_secrets WHERE name = 'ua_tok'")
    db.q("INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES ('ua_tok', %s, %s)", (SECRET, [ORIGIN]))
    job = db.job("sua", "/odata/Patients?n=20", "s_ua", page_size=20,
                 headers={"Authorization": "Bearer {secret:ua_tok}"})
    conn = connect(db.dbname)
    c = conn.cursor()
    c.execute("SELECT etl_settings()")
    with pytest.raises(psycopg2.Error) as exc:
        c.execute("SET etl_exec.user_agent = E'x\\r\\n\\r\\nGET /smuggled HTTP/1.1\\r\\nHost: a\\r\\n'")
    assert "etl_exec.user_agent must not contain control characters" in exc.value.pgerror
    reset()
    c.execute("SELECT etl_execute_job(%s, wait := true)", (job,))
    conn.close()
    # set by an operator before the module is loaded: dropped when it loads
    early = connect(db.dbname, user="op1")
    db.q("GRANT INSERT ON s_ua TO op1")
    db.q("TRUNCATE s_ua")
    ec = early.cursor()
    ec.execute("SET etl_exec.user_agent = E'x\\r\\n\\r\\nGET /smuggled HTTP/1.1\\r\\nHost: a\\r\\n'")
    ec.execute("SELECT etl_execute_job(%s, wait := true)", (job,))
    early.close()
    assert db.one("SELECT count(*) FROM s_ua") == 20
    seen = stats()
    assert seen["unknown_paths"] == []
    assert all(h["User-Agent"] == "etl_exec/0.1" for h in seen["headers_seen"])


def test_secrets_echoed_by_the_api_are_redacted_everywhere(db):
    db.patients_table("s_echo")
    db.q("DELETE FROM dw_etl_secrets WHERE name = 'echo_tok'")
    db.q("INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES ('echo_tok', %s, %s)", (SECRET, [ORIGIN]))
    job = db.job("secho", "/odata/Patients?n=20&echo_headers=1", "s_echo", page_size=20,
                 headers={"Authorization": "Bearer {secret:echo_tok}"})
    with pytest.raises(psycopg2.Error) as exc:
        db.q("SELECT etl_execute_job(%s, wait := true)", (job,))
    run_id = db.one("SELECT max(run_id) FROM dw_etl_runs WHERE job_id = %s", (job,))
    msg = db.run_row(run_id)["error_message"]
    assert "HTTP 400" in msg and "request_headers" in msg           # the body snippet is there
    assert "Bearer [secret redacted]" in msg
    assert SECRET not in msg
    assert SECRET not in exc.value.pgerror and SECRET not in (exc.value.diag.message_detail or "")
    assert SECRET not in db.one("SELECT string_agg(r::text, ' ') FROM dw_etl_runs r")
    assert SECRET not in server_log()


def test_a_deferred_foreign_key_is_checked_within_each_page(db):
    db.q("DROP TABLE IF EXISTS s_child, s_parent")
    db.q("CREATE TABLE s_parent (id int PRIMARY KEY)")
    db.q("INSERT INTO s_parent SELECT g FROM generate_series(0, 10) g")
    db.q("""CREATE TABLE s_child (patientid int PRIMARY KEY, visits int
                REFERENCES s_parent (id) DEFERRABLE INITIALLY DEFERRED)""")
    # visits = id % 17: parents 0..10 exist, so page 1 (ids 1..10) is fine, page 2 (11..20) is not
    job = db.job("schild", "/odata/Patients?n=30", "s_child", page_size=10, checkpoint_interval_seconds=0)
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    row = db.run_row(run_id)
    assert 'violates foreign key constraint "s_child_visits_fkey"' in row["error_message"]
    assert "security-restricted" not in row["error_message"]
    assert db.one("SELECT count(*) FROM s_child") == 10
    assert db.one("SELECT skip FROM etl_get_checkpoint(%s)", (run_id,)) == 10
    # with every parent there, the whole load commits
    db.q("INSERT INTO s_parent SELECT g FROM generate_series(11, 16) g")
    db.q("TRUNCATE s_child")
    run_id = db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.one("SELECT count(*) FROM s_child") == 30
    # upsert and replace check it too
    db.q("UPDATE dw_etl_jobs SET load_mode = 'upsert', key_columns = '{patientid}' WHERE job_id = %s", (job,))
    db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    db.q("UPDATE dw_etl_jobs SET load_mode = 'replace', key_columns = NULL WHERE job_id = %s", (job,))
    db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.one("SELECT count(*) FROM s_child") == 30


def test_secrets_are_bound_to_origins(db):
    db.patients_table("s_origin")
    db.q("DELETE FROM dw_etl_secrets WHERE name = 'org_tok'")
    # host without a port: the scheme's default port (80), not the API's
    db.q("INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES ('org_tok', %s, '{127.0.0.1}')",
         (SECRET,))
    job = db.job("sorigin", f"/odata/Patients?n=20&token={SECRET}", "s_origin", page_size=20,
                 headers={"Authorization": "Bearer {secret:org_tok}"})
    reset()
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    assert "HTTP 401" in db.run_row(run_id)["error_message"]
    assert all(not h["Authorization"] for h in stats()["headers_seen"])
    db.q("UPDATE dw_etl_secrets SET allowed_hosts = %s WHERE name = 'org_tok'", ([ORIGIN],))
    db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.one("SELECT count(*) FROM s_origin") == 20
    # a new secret must name its hosts
    with pytest.raises(psycopg2.Error, match='secret "nohosts" must list the hosts'):
        db.q("INSERT INTO dw_etl_secrets (name, value) VALUES ('nohosts', 'v')")
    with pytest.raises(psycopg2.Error, match="is not a host or host:port"):
        db.q("INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES ('badhost', 'v', '{http://a.example/}')")


def test_upgrade_binds_existing_secrets_to_their_jobs_origins(db):
    fresh_database("it_upgrade")
    conn = connect("it_upgrade")
    cur = conn.cursor()
    cur.execute("CREATE EXTENSION etl_exec VERSION '0.2.0'")
    cur.execute("CREATE TABLE t (id int)")
    cur.execute("""INSERT INTO dw_etl_secrets (name, value) VALUES ('used', 'a'), ('unused', 'b'),
                       ('listed', 'c')""")
    cur.execute("UPDATE dw_etl_secrets SET allowed_hosts = '{x.example}' WHERE name = 'listed'")
    cur.execute("""INSERT INTO dw_etl_jobs (name, url, target_table, headers) VALUES
                     ('a', 'https://API.example.com/v1/x', 't', '{"Authorization": "Bearer {secret:used}"}'),
                     ('b', 'http://127.0.0.1:8080/y', 't', '{"X-Key": "{secret:used}"}'),
                     ('c', 'https://{host}/z', 't', '{"X-Key": "{secret:used}"}')""")
    cur.execute("ALTER EXTENSION etl_exec UPDATE")
    cur.execute("SELECT name, allowed_hosts FROM dw_etl_secrets ORDER BY name")
    assert cur.fetchall() == [("listed", ["x.example"]), ("unused", []),
                              ("used", ["127.0.0.1:8080", "api.example.com"])]
    conn.close()
    admin = connect()
    admin.cursor().execute("DROP DATABASE it_upgrade WITH (FORCE)")
    admin.close()


def test_dot_segments_cannot_move_a_request_up_the_path(db):
    db.patients_table("s_dots")
    db.job("sdots", "/odata/{p}/Patients?n=10&q={q}", "s_dots", page_size=10)
    job = db.one("SELECT job_id FROM dw_etl_jobs WHERE name = 'sdots'")
    before = db.one("SELECT count(*) FROM dw_etl_runs")
    for p in ("..", "."):
        with pytest.raises(psycopg2.Error) as exc:
            db.q("SELECT etl_execute_job(%s, parameters := %s)", (job, json.dumps({"p": p, "q": "x"})))
        assert 'URL placeholders in the path must not be "." or ".."' in exc.value.pgerror
    assert db.one("SELECT count(*) FROM dw_etl_runs") == before
    # in the query string a dot is just a value
    db.q("UPDATE dw_etl_jobs SET url = %s WHERE job_id = %s", (MOCK_API + "/odata/Patients?n=10&q={q}", job))
    db.one("SELECT etl_execute_job(%s, parameters := '{\"q\": \"..\"}', wait := true)", (job,))
    assert db.one("SELECT count(*) FROM s_dots") == 10


@pytest.mark.parametrize("host", ["0.0.0.0", "0.1.2.3", "[::]", "[::7f00:1]", "[::ffff:0.0.0.0]",
                                  "[::ffff:169.254.169.254]", "[64:ff9b::a9fe:a9fe]", "[64:ff9b::7f00:1]",
                                  "[::ffff:0:a9fe:a9fe]", "[64:ff9b:1::a9fe:a9fe]"])
def test_addresses_that_reach_this_host_or_the_metadata_service_are_blocked(db, host):
    db.patients_table("s_block")
    job = db.job("sblock", "/odata/Patients?n=10", "s_block", page_size=10)
    db.q("UPDATE dw_etl_jobs SET url = %s WHERE job_id = %s",
         (f"http://{host}:{PORT}/odata/Patients?n=10", job))
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    assert "refused to connect to" in db.run_row(run_id)["error_message"]
    assert db.one("SELECT count(*) FROM s_block") == 0


def test_loopback_stays_allowed(db):
    db.patients_table("s_loop")
    job = db.job("sloop", "/odata/Patients?n=10", "s_loop", page_size=10)
    db.q("UPDATE dw_etl_jobs SET url = %s WHERE job_id = %s", (f"http://127.0.0.1:{PORT}/odata/Patients?n=10", job))
    db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.one("SELECT count(*) FROM s_loop") == 10


def test_max_response_bytes_is_superuser_only_and_counts_decompressed_bytes(db, op1):
    cur = op1.cursor()
    cur.execute("SELECT etl_settings()")
    with pytest.raises(psycopg2.Error, match='permission denied to set parameter "etl_exec.max_response_bytes"'):
        cur.execute("SET etl_exec.max_response_bytes = '4GB'")
    db.patients_table("s_bomb")
    # 20 MB of padding that gzips to a few kB
    job = db.job("sbomb", "/odata/Patients?n=10&gzip=1&oversize_at=0&oversize_bytes=20000000", "s_bomb",
                 page_size=10)
    conn = connect(db.dbname)
    c = conn.cursor()
    c.execute("SET etl_exec.max_response_bytes = '1MB'")
    c.execute("SELECT etl_execute_job(%s)", (job,))
    run_id = c.fetchone()[0]
    conn.close()
    assert db.wait(run_id) == "failed"
    assert "larger than etl_exec.max_response_bytes (1048576 bytes)" in db.run_row(run_id)["error_message"]
    assert db.one("SELECT count(*) FROM s_bomb") == 0


# ---------- job text that meets SQL: parsed to check it, run only as the run's role ----------

@pytest.fixture
def etl_admin(db):
    """A job writer as the README grants one: etl_operator + INSERT/UPDATE/DELETE on dw_etl_jobs."""
    for role in ("etl_admin",):
        if db.one("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)):
            db.q(f"DROP OWNED BY {role}")
            db.q(f"DROP ROLE {role}")
    db.q("CREATE ROLE etl_admin LOGIN IN ROLE etl_operator")
    db.q("GRANT INSERT, UPDATE, DELETE ON dw_etl_jobs TO etl_admin")
    db.q("GRANT USAGE ON SEQUENCE dw_etl_jobs_job_id_seq TO etl_admin")
    db.q("GRANT CREATE, USAGE ON SCHEMA public TO etl_admin")
    db.q("DROP TABLE IF EXISTS public.s_pwn_log")
    db.q("CREATE TABLE public.s_pwn_log (who text, super boolean)")
    db.q("GRANT INSERT ON public.s_pwn_log TO PUBLIC")
    conn = connect(db.dbname, user="etl_admin")
    cur = conn.cursor()
    # runs as whoever calls it: as a superuser, it makes etl_admin one
    cur.execute("""CREATE FUNCTION public.s_pwn() RETURNS int LANGUAGE plpgsql VOLATILE AS $f$
                   BEGIN
                       RAISE NOTICE 's_pwn ran as %', current_user;
                       IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                           EXECUTE 'ALTER ROLE etl_admin SUPERUSER';
                       END IF;
                       RETURN 1;
                   END $f$""")
    # one that writes
    cur.execute("""CREATE FUNCTION public.s_pwn_write() RETURNS int LANGUAGE plpgsql VOLATILE AS $f$
                   BEGIN INSERT INTO public.s_pwn_log VALUES (current_user, false); RETURN 1; END $f$""")
    # the same, IMMUTABLE: evaluated when a query naming it is planned
    cur.execute("""CREATE FUNCTION public.s_pwn_at_plan(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $f$
                   BEGIN RETURN public.s_pwn(); END $f$""")
    yield conn
    conn.close()
    db.q("ALTER ROLE etl_admin NOSUPERUSER")
    db.q("DELETE FROM dw_etl_runs WHERE job_id IN (SELECT job_id FROM dw_etl_jobs WHERE name LIKE 'spwn%')")
    db.q("DELETE FROM dw_etl_jobs WHERE name LIKE 'spwn%'")
    db.q("DROP OWNED BY etl_admin")
    db.q("DROP ROLE etl_admin")


BREAKOUT = ("SELECT public.s_pwn() AS x) AS etl_partitions; SELECT COALESCE(pg_catalog.jsonb_agg("
            "pg_catalog.to_jsonb(etl_partitions)), '[]'::pg_catalog.jsonb)::pg_catalog.text FROM (SELECT 1 AS x")


def test_a_partitions_query_cannot_make_a_job_writer_superuser(db, etl_admin):
    """The check trigger ran the query (LIMIT 0) as whoever wrote the row;
    etl_create_table (SECURITY DEFINER) wrote it as the superuser."""
    cur = etl_admin.cursor()
    # the breakout of the subquery: refused when written, nothing run
    with pytest.raises(psycopg2.Error) as exc:
        cur.execute("INSERT INTO dw_etl_jobs (name, url, target_table, partitions) VALUES ('spwn1', %s, 'public.s_pwn_t', %s)",
                    (MOCK_API + "/fixture/schema_names", json.dumps({"query": BREAKOUT})))
    assert exc.value.pgcode == "22023"
    assert 'job "spwn1": partitions query is not one SELECT: syntax error at or near ")"' in exc.value.pgerror
    # a function planned at write time: accepted (it is one SELECT), never run to check it
    cur.execute("INSERT INTO dw_etl_jobs (name, url, target_table, partitions) VALUES ('spwn2', %s, 'public.s_pwn_t', %s) "
                "RETURNING job_id",
                (MOCK_API + "/fixture/schema_names", json.dumps({"query": "SELECT public.s_pwn_at_plan(1) AS x"})))
    job = cur.fetchone()[0]
    assert not any("s_pwn ran" in n for n in etl_admin.notices)
    # a superuser updating the row, and etl_create_table (whose table needs a column_map: "xmin")
    su = connect(db.dbname)
    su.cursor().execute("UPDATE dw_etl_jobs SET page_size = 500 WHERE job_id = %s", (job,))
    assert not any("s_pwn ran" in n for n in su.notices)
    su.close()
    cur.execute("SELECT etl_create_table(%s)", (job,))
    assert db.one("SELECT column_map FROM dw_etl_jobs WHERE job_id = %s", (job,)) is not None
    assert db.one("SELECT rolsuper FROM pg_roles WHERE rolname = 'etl_admin'") is False
    # the query ran only at the sample run's start, as the caller
    assert {n.strip() for n in etl_admin.notices if "s_pwn ran" in n} == {"NOTICE:  s_pwn ran as etl_admin"}
    # a run by etl_admin runs it as etl_admin
    db.q("GRANT SELECT, INSERT ON public.s_pwn_t TO etl_admin")
    cur.execute("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert {n.strip() for n in etl_admin.notices if "s_pwn ran" in n} == {"NOTICE:  s_pwn ran as etl_admin"}
    assert db.one("SELECT rolsuper FROM pg_roles WHERE rolname = 'etl_admin'") is False
    assert db.one("SELECT count(*) FROM public.s_pwn_t") == 2


@pytest.mark.parametrize("query, problem", [
    ("SELECT 1 AS x; SELECT 2 AS y", "it holds 2 statements"),
    ("WITH d AS (DELETE FROM public.s_pwn_log RETURNING 1 AS x) SELECT x FROM d", "a WITH query that is not a SELECT changes data"),
    ("SELECT 1 AS x INTO public.s_made", "SELECT INTO creates a table"),
    ("SELECT 1 AS x FROM public.s_pwn_log FOR UPDATE", "FOR UPDATE or FOR SHARE locks rows"),
    ("DELETE FROM public.s_pwn_log", "it is not a SELECT statement"),
])
def test_a_partitions_query_is_one_plain_select_when_written_and_when_run(db, etl_admin, query, problem):
    cur = etl_admin.cursor()
    with pytest.raises(psycopg2.Error) as exc:
        cur.execute("INSERT INTO dw_etl_jobs (name, url, target_table, partitions) VALUES ('spwn3', %s, 'public.s_pwn_t', %s)",
                    (MOCK_API + "/odata/Patients?n=5", json.dumps({"query": query})))
    assert exc.value.pgcode == "22023"
    assert f'job "spwn3": partitions query is not one SELECT: {problem}' in exc.value.pgerror
    # a row that got past the check (written before 0.6.0, say) is refused at run start, before it runs
    db.patients_table("s_pwn_t")
    db.q("ALTER TABLE dw_etl_jobs DISABLE TRIGGER dw_etl_jobs_validate_partitions")
    try:
        job = db.job("spwn3", "/odata/Patients?n=5", "s_pwn_t", partitions=json.dumps({"query": query}))
    finally:
        db.q("ALTER TABLE dw_etl_jobs ENABLE TRIGGER dw_etl_jobs_validate_partitions")
    db.q("INSERT INTO s_pwn_log VALUES ('marker', false)")
    with pytest.raises(psycopg2.Error) as exc:
        cur.execute("SELECT etl_execute_job(%s)", (job,))
    assert f"partitions query is not one SELECT: {problem}" in exc.value.pgerror
    assert db.one("SELECT count(*) FROM s_pwn_log") == 1
    assert db.one("SELECT to_regclass('public.s_made')") is None
    assert db.one("SELECT count(*) FROM dw_etl_runs WHERE job_id = %s", (job,)) == 0


def test_a_partitions_query_runs_read_only(db, etl_admin):
    """A function the query calls cannot write either: the query runs in a read-only transaction."""
    db.patients_table("s_pwn_t")
    db.q("GRANT SELECT, INSERT ON s_pwn_t TO etl_admin")
    cur = etl_admin.cursor()
    cur.execute("INSERT INTO dw_etl_jobs (name, url, target_table, partitions) VALUES ('spwn4', %s, 's_pwn_t', %s) "
                "RETURNING job_id", (MOCK_API + "/odata/Patients?n=5", json.dumps({"query": "SELECT public.s_pwn_write() AS x"})))
    job = cur.fetchone()[0]
    with pytest.raises(psycopg2.Error) as exc:
        cur.execute("SELECT etl_execute_job(%s)", (job,))
    assert "cannot execute INSERT in a read-only transaction" in exc.value.pgerror
    assert db.one("SELECT count(*) FROM s_pwn_log") == 0
    # and the session goes on writing as before
    cur.execute("SHOW transaction_read_only")
    assert cur.fetchone()[0] == "off"
    cur.execute("INSERT INTO s_pwn_log VALUES ('after', false)")
    assert db.one("SELECT count(*) FROM s_pwn_log") == 1
    # the failure caught in the caller's own code: its transaction writes on
    cur.execute(f"""DO $$ BEGIN
                        BEGIN PERFORM etl_execute_job({job});
                        EXCEPTION WHEN read_only_sql_transaction THEN NULL; END;
                        INSERT INTO public.s_pwn_log VALUES ('caught', false);
                    END $$""")
    assert db.one("SELECT count(*) FROM s_pwn_log WHERE who = 'caught'") == 1


# ---------- secrets echoed into rejected records ----------

def test_a_secret_echoed_into_a_rejected_record_is_redacted_everywhere(db):
    echoed = "HSECRET-222-Never-In-Rejects"
    db.patients_table("s_rej")
    db.q("DELETE FROM dw_etl_secrets WHERE name = 'h1'")
    db.q("INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES ('h1', %s, %s)", (echoed, [ORIGIN]))
    # record 3's BirthDate is the X-Key header the request sent: not a date
    job = db.job("srej", "/odata/Patients?n=10&echo_header_as_birthdate=X-Key", "s_rej", page_size=10,
                 headers={"X-Key": "{secret:h1}"}, on_bad_record="reject")
    conn = connect(db.dbname)
    cur = conn.cursor()
    cur.execute("SELECT etl_execute_job(%s, wait := true)", (job,))
    run_id = cur.fetchone()[0]
    cur.execute("SELECT etl_execute_job(%s, dry_run := true, wait := true)", (job,))
    dry_id = cur.fetchone()[0]
    notices = " ".join(conn.notices)
    conn.close()
    assert db.run_row(run_id)["status"] == "succeeded"
    assert db.one("SELECT count(*) FROM s_rej") == 9
    rej = db.q("SELECT record ->> 'BirthDate', column_name, error FROM dw_etl_rejects WHERE run_id = %s", (run_id,))
    assert rej == [("[secret redacted]", "birthdate", 'invalid input syntax for type date: "[secret redacted]"')]
    dry = db.run_row(dry_id)["run_context"]["dry_run"]
    assert dry["rejected"] == 1 and "[secret redacted]" in dry["rejects"][0]["error"]
    assert echoed not in json.dumps(dry)
    assert echoed not in notices
    assert echoed not in db.one("SELECT string_agg(r::text, ' ') FROM dw_etl_runs r")
    assert echoed not in db.one("SELECT string_agg(r::text, ' ') FROM dw_etl_rejects r")
    assert echoed not in server_log()


# ---------- a worker's memory, whatever the concurrency ----------

def test_responses_in_flight_are_bounded_together_and_concurrency_by_a_ceiling(db, op1):
    cur = op1.cursor()
    cur.execute("SELECT etl_settings()")       # loads the library: its settings are defined
    for setting in ("etl_exec.max_bytes_in_flight = '8GB'", "etl_exec.max_concurrency = 64"):
        with pytest.raises(psycopg2.Error) as exc:
            cur.execute("SET " + setting)
        assert exc.value.pgcode == "42501", exc.value.pgerror
    # every page an endless body, 8 at once: 8 x 256 MB unless the run's total is bounded
    db.patients_table("s_endless")
    job = db.job("sendless", "/endless", "s_endless", page_size=100, concurrency=8)
    run_id = run_in_session(db, "SELECT etl_execute_job(%s)", (job,),
                            settings=["SET etl_exec.max_bytes_in_flight = '64MB'"])
    assert db.wait(run_id) == "failed"
    row = db.run_row(run_id)
    assert ("the run's responses in flight would hold more than etl_exec.max_bytes_in_flight (67108864 bytes)"
            in row["error_message"]), row["error_message"]
    assert row["sqlstate"] == "54000"
    assert db.one("SELECT count(*) FROM s_endless") == 0
    # an ordinary role asks for 12 at once; the superuser's ceiling (here 3) holds
    db.q(f"ALTER DATABASE {db.dbname} SET etl_exec.max_concurrency = 3")
    try:
        db.patients_table("s_ceiling")
        db.q("GRANT SELECT, INSERT ON s_ceiling TO op1")
        job = db.job("sceiling", "/odata/Patients?n=1200&delay_ms=150", "s_ceiling", page_size=50,
                     pagination_options=json.dumps({"total_path": "$.\"@odata.count\""}))
        conn = connect(db.dbname, user="op1")
        c = conn.cursor()
        c.execute("SET etl_exec.default_concurrency = 12")
        reset()
        c.execute("SELECT etl_execute_job(%s, wait := true)", (job,))
        conn.close()
        assert db.one("SELECT count(*) FROM s_ceiling") == 1200
        assert stats()["max_in_flight"] == 3
    finally:
        db.q(f"ALTER DATABASE {db.dbname} RESET etl_exec.max_concurrency")


# ---------- run-scoped rows: each role's own ----------

@pytest.fixture
def alice_bob(db):
    conns = {}
    for role in ("s_alice", "s_bob"):
        if db.one("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)):
            db.q(f"DROP OWNED BY {role}")
            db.q(f"DROP ROLE {role}")
        db.q(f"CREATE ROLE {role} LOGIN IN ROLE etl_operator")
    for role in ("s_alice", "s_bob"):
        conns[role] = connect(db.dbname, user=role)
    yield conns["s_alice"], conns["s_bob"]
    for role, conn in conns.items():
        conn.close()
        db.q(f"DROP OWNED BY {role}")
        db.q(f"DROP ROLE {role}")


def test_partition_values_and_runs_are_visible_only_to_their_roles(db, alice_bob):
    alice, bob = alice_bob
    db.q("DROP TABLE IF EXISTS s_accts")
    db.q("CREATE TABLE s_accts (acct text)")
    db.q("INSERT INTO s_accts VALUES ('ALICE-PRIVATE-ACCT-42')")
    db.q("GRANT SELECT ON s_accts TO s_alice")
    db.patients_table("s_alice_t")
    db.q("GRANT SELECT, INSERT ON s_alice_t TO s_alice")
    job = db.job("salice", "/odata/Patients?n=5&a={acct}", "s_alice_t", page_size=5,
                 partitions=json.dumps({"query": "SELECT acct FROM s_accts"}))
    a = alice.cursor()
    a.execute("SELECT etl_execute_job(%s, wait := true)", (job,))
    run_id = a.fetchone()[0]
    assert db.run_row(run_id)["status"] == "succeeded"
    b = bob.cursor()
    for sql in ("SELECT count(*) FROM dw_etl_run_partitions WHERE run_id = %s",
                "SELECT count(*) FROM dw_etl_runs WHERE run_id = %s",
                "SELECT count(*) FROM etl_run_progress WHERE run_id = %s",
                "SELECT count(*) FROM dw_etl_rejects WHERE run_id = %s"):
        b.execute(sql, (run_id,))
        assert b.fetchone()[0] == 0, sql
    b.execute("SELECT string_agg(p::text, ' ') FROM dw_etl_run_partitions p")
    assert "ALICE-PRIVATE" not in (b.fetchone()[0] or "")
    b.execute("SELECT string_agg(r::text, ' ') FROM dw_etl_runs r")
    assert "ALICE-PRIVATE" not in (b.fetchone()[0] or "")
    # alice sees her own, and a superuser all
    a.execute("SELECT parameters ->> 'acct' FROM dw_etl_run_partitions WHERE run_id = %s", (run_id,))
    assert a.fetchone()[0] == "ALICE-PRIVATE-ACCT-42"
    a.execute("SELECT status FROM dw_etl_runs WHERE run_id = %s", (run_id,))
    assert a.fetchone()[0] == "succeeded"
    assert db.one("SELECT count(*) FROM dw_etl_run_partitions WHERE run_id = %s", (run_id,)) == 1
    # bob's own run shows in the progress view to bob, with its place in the queue counted among all runs
    b.execute("SELECT count(*) FROM etl_run_progress WHERE started_by = 's_alice'::regrole")
    assert b.fetchone()[0] == 0


# ---------- OAuth2 token endpoints and encoded dot segments ----------

def test_oauth_client_credentials_go_only_to_an_origin_the_secret_lists(db):
    db.patients_table("s_oauth")
    db.q("DELETE FROM dw_etl_secrets WHERE name = 'soauth'")
    client = {"token_url": f"http://localhost:{PORT}/oauth/token", "client_id": "etl",
              "client_secret": "s3cret"}
    db.q("INSERT INTO dw_etl_secrets (name, value, allowed_hosts) VALUES ('soauth', %s, %s)",
         (json.dumps(client), [ORIGIN]))
    job = db.job("soauth", "/odata/Patients?n=10&oauth=1", "s_oauth", page_size=10,
                 headers={"Authorization": "Bearer {oauth2:soauth}"})
    reset()
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    row = db.run_row(run_id)
    assert f'refused to send the OAuth2 client credentials of secret "soauth" to localhost:{PORT}' in row["error_message"]
    assert stats()["token_requests"] == 0
    assert db.one("SELECT count(*) FROM s_oauth") == 0
    # at a listed origin it works
    client["token_url"] = MOCK_API + "/oauth/token"
    db.q("UPDATE dw_etl_secrets SET value = %s WHERE name = 'soauth'", (json.dumps(client),))
    db.one("SELECT etl_execute_job(%s, wait := true)", (job,))
    assert db.one("SELECT count(*) FROM s_oauth") == 10
    assert stats()["token_requests"] == 1


@pytest.mark.parametrize("value", ["..%2Fadmin", "%2e%2e", "%2E%2E%2Fx", "%252e%252e", "../admin", "a/./b"])
def test_encoded_dot_segments_cannot_move_a_request_up_the_path(db, value):
    db.patients_table("s_edots")
    job = db.job("sedots", "/odata/{p}/Patients?n=10", "s_edots", page_size=10)
    with pytest.raises(psycopg2.Error) as exc:
        db.q("SELECT etl_execute_job(%s, parameters := %s)", (job, json.dumps({"p": value})))
    assert exc.value.pgcode == "22023"
    assert 'URL placeholders in the path must not be "." or "..", nor hold such a segment' in exc.value.pgerror
    # a later partition's value is checked by the worker, before its request goes out
    db.q("ALTER TABLE s_edots ADD COLUMN orderid int, ADD COLUMN customerid int, ADD COLUMN amount numeric")
    job = db.job("sedots", "/parents/Customers/{p}/Orders?n=5", "s_edots", page_size=10,
                 partitions=json.dumps({"values": {"p": ["1", value]}}))
    reset()
    run_id = db.one("SELECT etl_execute_job(%s)", (job,))
    assert db.wait(run_id) == "failed"
    assert "it holds a dot segment" in db.run_row(run_id)["error_message"]
    assert all(".." not in h["path"] and "%2" not in h["path"] for h in stats()["headers_seen"])
