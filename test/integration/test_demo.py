"""The README's first command, test/demo.sh, shows what it narrates: the
first segment times out with a checkpoint, the run is resumed until it
succeeds, and the table holds every record once.

The demo starts a cluster and mock API of its own (test/cluster.sh wipes the
one it starts), so it runs here with its own ETL_TEST_ROOT and ports, and
with the module already installed (ETL_NO_BUILD=1).
"""
import os
import subprocess

import psycopg2
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
DEMO_ROOT = os.path.join(os.environ.get("ETL_TEST_ROOT", "/tmp/etl_exec_test") + "_demo")
DEMO_PGPORT = int(os.environ.get("PGPORT", "55432")) + 20
DEMO_MOCK_PORT = int(os.environ.get("MOCK_API_PORT", "18080")) + 20


@pytest.fixture(scope="module")
def demo():
    env = dict(os.environ, ETL_TEST_ROOT=DEMO_ROOT, PGPORT=str(DEMO_PGPORT),
               MOCK_API_PORT=str(DEMO_MOCK_PORT), ETL_NO_BUILD="1")
    env.pop("MOCK_API", None)
    env.pop("PGHOST", None)
    env.pop("PGDATA", None)
    try:
        done = subprocess.run(["bash", os.path.join(ROOT, "test", "demo.sh")], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        conn = psycopg2.connect(host=os.path.join(DEMO_ROOT, "socket"), port=DEMO_PGPORT,
                                user="postgres", dbname="postgres")
        conn.autocommit = True
        yield done.stdout, conn
        conn.close()
    finally:
        subprocess.run(["bash", os.path.join(ROOT, "test", "cluster.sh"), "stop"], env=env,
                       capture_output=True, text=True)


def test_the_demo_times_out_with_a_checkpoint_then_resumes_to_success(demo):
    out, conn = demo
    cur = conn.cursor()
    cur.execute("""SELECT r.status, r.resume_count, r.records_loaded, r.pages_fetched,
                          r.run_context -> 'segments' -> 0 ->> 'status',
                          (r.run_context -> 'segments' -> 0 ->> 'records_loaded')::bigint,
                          jsonb_array_length(r.run_context -> 'segments')
                   FROM dw_etl_runs r JOIN dw_etl_jobs j USING (job_id)
                   WHERE j.name = 'demo_patients'""")
    runs = cur.fetchall()
    assert len(runs) == 1, runs
    status, resumes, loaded, pages, first_status, first_loaded, segments = runs[0]
    assert (status, loaded, pages) == ("succeeded", 20000, 40)
    assert first_status == "timed_out"
    assert 0 < first_loaded < 20000
    assert resumes >= 1 and segments == resumes + 1
    cur.execute("SELECT count(*), count(DISTINCT patientid), min(patientid), max(patientid) FROM demo_patients")
    assert cur.fetchone() == (20000, 20000, 1, 20000)
    # and it said so
    assert "it timed out, with a checkpoint" in out
    assert "timed_out" in out
    assert "succeeded" in out
