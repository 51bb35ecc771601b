"""TLS: peer and host verification are on by default, and etl_exec.ca_file
trusts a private CA.  A throwaway nginx serves a page over https on
127.0.0.1 with a self-signed certificate made here."""
import json
import os
import shutil
import subprocess
import time
import urllib.request

import psycopg2
import pytest

from conftest import connect

ROOT = os.path.join(os.environ.get("ETL_TEST_ROOT", "/tmp/etl_exec_test"), "tls")
PORT = 18443


def make_cert(name, subject_alt):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=etl_exec test", "-addext", f"subjectAltName={subject_alt}",
                    "-keyout", f"{ROOT}/{name}.key", "-out", f"{ROOT}/{name}.crt"],
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def https_server():
    if shutil.which("nginx") is None or shutil.which("openssl") is None:
        pytest.skip("nginx and openssl are installed by test/setup.sh")
    shutil.rmtree(ROOT, ignore_errors=True)
    os.makedirs(f"{ROOT}/pages")
    os.chmod(ROOT, 0o755)
    make_cert("good", "IP:127.0.0.1")           # right address
    make_cert("wrong", "DNS:elsewhere.example")  # a trusted cert for another host
    rows = [{"id": i, "name": f"row {i}"} for i in range(1, 4)]
    with open(f"{ROOT}/pages/skip-0.json", "w") as f:
        json.dump({"value": rows}, f)
    with open(f"{ROOT}/pages/skip-3.json", "w") as f:
        json.dump({"value": []}, f)
    servers = ""
    for i, cert in enumerate(("good", "wrong")):
        servers += f"""
  server {{
    listen 127.0.0.1:{PORT + i} ssl;
    ssl_certificate {ROOT}/{cert}.crt;
    ssl_certificate_key {ROOT}/{cert}.key;
    root {ROOT};
    location = /p {{ default_type application/json; try_files /pages/skip-$arg_skip.json =404; }}
  }}"""
    with open(f"{ROOT}/nginx.conf", "w") as f:
        f.write(f"""worker_processes 1;
pid {ROOT}/nginx.pid;
error_log {ROOT}/error.log;
events {{ worker_connections 16; }}
http {{
  access_log off;{servers}
}}
""")
    subprocess.run(["nginx", "-c", f"{ROOT}/nginx.conf"], check=True)
    time.sleep(0.3)
    yield
    subprocess.run(["nginx", "-c", f"{ROOT}/nginx.conf", "-s", "stop"], check=False)


def run(db, port, settings=()):
    db.q("DROP TABLE IF EXISTS t_tls")
    db.q("CREATE TABLE t_tls (id int, name text)")
    db.q("DELETE FROM dw_etl_runs WHERE job_id IN (SELECT job_id FROM dw_etl_jobs WHERE name = 'tls')")
    db.q("DELETE FROM dw_etl_jobs WHERE name = 'tls'")
    job = db.one("""INSERT INTO dw_etl_jobs (name, url, target_table, page_size, pagination_options, max_retries)
                    VALUES ('tls', %s, 't_tls', 3, '{"skip_param": "skip", "limit_param": "top"}', 0)
                    RETURNING job_id""", (f"https://127.0.0.1:{port}/p",))
    conn = connect(db.dbname)
    cur = conn.cursor()
    for s in settings:
        cur.execute(s)
    cur.execute("SELECT etl_execute_job(%s)", (job,))
    run_id = cur.fetchone()[0]
    conn.close()
    return run_id


def test_an_untrusted_certificate_is_refused(db, https_server):
    run_id = run(db, PORT)
    assert db.wait(run_id) == "failed"
    msg = db.run_row(run_id)["error_message"]
    # curl up to 8.14 says "SSL certificate problem: ...", 8.22 (Debian forky)
    # "SSL certificate OpenSSL verify result: ..."
    assert ("SSL certificate problem" in msg or "SSL certificate OpenSSL verify result" in msg) \
        and "self-signed" in msg.replace("self signed", "self-signed")
    # a certificate that does not verify is not retried
    assert "retries" not in msg, msg
    assert db.run_row(run_id)["sqlstate"] == "08006"
    assert db.one("SELECT count(*) FROM t_tls") == 0


def test_ca_file_trusts_a_private_ca(db, https_server):
    run_id = run(db, PORT, [f"SET etl_exec.ca_file = '{ROOT}/good.crt'"])
    assert db.wait(run_id) == "succeeded"
    assert db.q("SELECT id, name FROM t_tls ORDER BY id") == [(1, "row 1"), (2, "row 2"), (3, "row 3")]


def test_the_host_name_is_verified_too(db, https_server):
    run_id = run(db, PORT + 1, [f"SET etl_exec.ca_file = '{ROOT}/wrong.crt'"])
    assert db.wait(run_id) == "failed"
    msg = db.run_row(run_id)["error_message"]
    assert "SSL" in msg and ("subject" in msg or "certificate" in msg), msg
    assert db.one("SELECT count(*) FROM t_tls") == 0
