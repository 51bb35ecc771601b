"""Security: each test replays an attack an adversarial probe found (as an
operator, with a hostile server or bad settings) and checks it fails."""
import json
import os
import urllib.request

import psycopg2
import pytest

from conftest import MOCK_API, connect, fresh_database

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
