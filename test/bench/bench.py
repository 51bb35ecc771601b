#!/usr/bin/python3
"""The measurements of test/bench/run.sh (which sets up the cluster, the data
set and nginx, then runs this).  See test/bench/README.md for what each figure
means.  Exits 1 when a stage fails (a failed run, a wrong row count, rows that
differ from the COPY-loaded ones) -- never because of a speed figure.
"""
import argparse
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import psycopg2

sys.dont_write_bytecode = True		# no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_pages  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
failures = []
warnings = []
build = {}			# the installed etl_exec.so at the start


def so_fingerprint():
    with open(build["path"], "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def check_build(label):
    """Each run's worker loads the installed etl_exec.so afresh: a `make
    install` during the benchmark would mix builds in the figures."""
    sha = so_fingerprint()
    if sha != build["sha"] and not build.get("changed"):
        build["changed"] = True
        warnings.append("the installed %s changed during the benchmark (first seen after %s: "
                        "%s -> %s); the figures mix builds -- run it again" % (build["path"], label, build["sha"], sha))
        print("!! WARNING: " + warnings[-1], flush=True)


def log(msg):
    print("-- " + msg, flush=True)


def fail(msg):
    failures.append(msg)
    print("!! FAILED: " + msg, flush=True)


def connect(autocommit=True):
    conn = psycopg2.connect("")
    conn.autocommit = autocommit
    return conn


class Db:
    def __init__(self):
        self.conn = connect()

    def q(self, sql, args=None):
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else None

    def one(self, sql, args=None):
        rows = self.q(sql, args)
        return rows[0][0] if rows else None


def fresh_table(db, name, primary_key=False):
    db.q("DROP TABLE IF EXISTS %s" % name)
    db.q(gen_pages.ddl(name, primary_key))


def quiesce(db):
    """Before a timed stage: flush the previous stage's dirty buffers."""
    db.q("CHECKPOINT")


# ---------------------------------------------------------------- memory

class RssSampler(threading.Thread):
    """Samples RssAnon (private anonymous memory, not VmHWM, which counts
    the shared buffers the process touched) of the etl_exec worker every
    ~20 ms while it lives."""

    def __init__(self, interval=0.02):
        super().__init__(daemon=True)
        self.interval = interval
        self.stop_flag = threading.Event()
        self.pid = None
        self.peak_kb = None
        self.first_kb = None
        self.samples = 0

    def run(self):
        conn = connect()
        cur = conn.cursor()
        while not self.stop_flag.is_set() and self.pid is None:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'etl_exec run %' "
                        "ORDER BY backend_start DESC LIMIT 1")
            row = cur.fetchone()
            if row:
                self.pid = row[0]
            else:
                time.sleep(0.005)
        conn.close()
        if self.pid is None:
            return
        path = "/proc/%d/status" % self.pid
        while True:
            try:
                with open(path) as f:
                    text = f.read()
            except (FileNotFoundError, ProcessLookupError):
                break
            m = re.search(r"^RssAnon:\s+(\d+) kB", text, re.M)
            if m:
                kb = int(m.group(1))
                if self.first_kb is None:
                    self.first_kb = kb
                self.peak_kb = kb if self.peak_kb is None else max(self.peak_kb, kb)
                self.samples += 1
            if self.stop_flag.wait(self.interval):
                # one last look: the run may be ending
                pass
            if self.stop_flag.is_set() and self.samples > 0:
                break


class SlowPages(ThreadingHTTPServer):
    """The pre-rendered pages, each answered after a fixed delay: an API
    with real latency (nginx cannot wait per request).  127.0.0.1 only, an
    ephemeral port, stopped by the benchmark itself."""
    daemon_threads = True

    def __init__(self, data_dir, delay_ms):
        self.data_dir = data_dir
        self.delay = delay_ms / 1000.0
        super().__init__(("127.0.0.1", 0), SlowPageHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return "http://127.0.0.1:%d/m1/Patients" % self.server_address[1]


class SlowPageHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: without this, Nagle's algorithm
    # and the client's delayed ACK add ~40 ms to every response
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        u = urlsplit(self.path)
        skip = parse_qs(u.query).get("skip", [""])[0]
        path = os.path.join(self.server.data_dir, "m1", "skip-%s.json" % skip)
        time.sleep(self.server.delay)
        if u.path != "/m1/Patients" or not skip.isdigit() or not os.path.exists(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with open(path, "rb") as f:
            body = f.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# ---------------------------------------------------------------- stages

def stage_fetch(args, meta, urlbase):
    """One curl process, every page in turn over one keep-alive connection."""
    cfg = os.path.join(args.work, "curl-pages.cfg")
    with open(cfg, "w") as f:
        for skip in range(0, meta["records"] + 1, meta["page_size"]):
            f.write('url = "%s?skip=%d&top=%d"\noutput = "/dev/null"\n' % (urlbase, skip, meta["page_size"]))
    cmd = ["curl", "-s", "-S", "-K", cfg, "-w", "%{http_code} %{num_connects} %{size_download}\\n"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    secs = time.monotonic() - t0
    lines = p.stdout.split()
    codes = lines[0::3]
    connects = sum(int(x) for x in lines[1::3])
    nbytes = sum(int(x) for x in lines[2::3])
    if p.returncode != 0 or len(codes) != meta["pages"] or any(c != "200" for c in codes):
        fail("curl fetch: exit %d, %d responses (expected %d), codes %s; %s" %
             (p.returncode, len(codes), meta["pages"], sorted(set(codes)), p.stderr.strip()[:300]))
    elif nbytes != meta["bytes"]:
        fail("curl fetch: %d bytes, expected %d" % (nbytes, meta["bytes"]))
    return {"seconds": secs, "connections": connects, "bytes": nbytes, "requests": len(codes)}


def stage_copy(db, args, meta):
    fresh_table(db, "bench_copy")
    quiesce(db)
    t0 = time.monotonic()
    db.q("COPY bench_copy FROM %s", (os.path.join(args.data, "rows.copy"),))
    secs = time.monotonic() - t0
    n = db.one("SELECT count(*) FROM bench_copy")
    if n != meta["records"]:
        fail("COPY loaded %d rows, expected %d" % (n, meta["records"]))
    return {"seconds": secs}


def latest_run(db, job_id):
    return db.one("SELECT max(run_id) FROM dw_etl_runs WHERE job_id = %s", (job_id,))


def stage_etl(db, label, job_id, table, expected, primary_key=False, sample=True, fresh=True):
    """One etl_exec run, wall time from the call to its return (wait := true);
    into a fresh table, or (fresh=False) the table as the last stage left it."""
    if fresh:
        fresh_table(db, table, primary_key)
    quiesce(db)
    sampler = RssSampler() if sample else None
    if sampler:
        sampler.start()
    run_id = None
    error = None
    t0 = time.monotonic()
    try:
        # a run timeout at 2,000 rows/s (at least 2 min): a stuck run fails the stage, not CI
        run_id = db.one("SELECT etl_execute_job(%s, timeout := %s, wait := true)",
                        (job_id, max(120, expected // 2000)))
    except psycopg2.Error as e:
        error = "%s %s" % (e.pgcode, str(e).strip())
    secs = time.monotonic() - t0
    if sampler:
        sampler.stop_flag.set()
        sampler.join(5)
    check_build(label)
    if run_id is None:
        run_id = latest_run(db, job_id)
    st = db.q("SELECT status, records_loaded, pages_fetched, duration_ms, error_message, "
              "  (run_context #>> '{segments,-1,commits}')::bigint, "
              "  (run_context #>> '{segments,-1,commit_ms}')::float8 "
              "FROM dw_etl_runs WHERE run_id = %s", (run_id,))
    status, loaded, pages, duration_ms, errmsg, commits, commit_ms = st[0] if st else (None,) * 7
    n = db.one("SELECT count(*) FROM %s" % table)
    res = {"seconds": secs, "run_id": run_id, "status": status, "rows": n, "pages": pages,
           "duration_ms": duration_ms, "commits": commits, "commit_ms": commit_ms,
           "rss_peak_kb": sampler.peak_kb if sampler else None,
           "rss_first_kb": sampler.first_kb if sampler else None,
           "rss_samples": sampler.samples if sampler else 0}
    if error or status != "succeeded":
        fail("%s: run %s ended %s: %s" % (label, run_id, status, error or errmsg))
    elif n != expected or loaded != expected:
        fail("%s: run %s: %s rows in %s, records_loaded %s, expected %d" %
             (label, run_id, n, table, loaded, expected))
    log("%-22s run %-4s %-9s %8.3f s  %10s rows/s  (duration_ms %s, pages %s, %s commits in %s ms, "
        "peak RssAnon %s kB over %d samples)" %
        (label, run_id, status, secs, fmt_int(expected / secs), duration_ms, pages, commits, commit_ms,
         res["rss_peak_kb"], res["rss_samples"]))
    return res


def compare_with_copy(db, label, table):
    """The rows a stage stored must be exactly the COPY-loaded ones."""
    diff = db.one("SELECT count(*) FROM ((SELECT * FROM %s EXCEPT ALL SELECT * FROM bench_copy) "
                  "UNION ALL (SELECT * FROM bench_copy EXCEPT ALL SELECT * FROM %s)) d" % (table, table))
    if diff != 0:
        sample = db.q("(SELECT 'etl' AS side, * FROM %s EXCEPT ALL SELECT 'etl', * FROM bench_copy) "
                      "UNION ALL (SELECT 'copy', * FROM bench_copy EXCEPT ALL SELECT 'copy', * FROM %s) "
                      "ORDER BY 2, 1 LIMIT 4" % (table, table))
        fail("%s: %d rows differ from the COPY-loaded ones, e.g. %r" % (label, diff, sample))
    else:
        log("%s: every row equals the COPY-loaded one" % label)


def stage_python(db, args, meta, url):
    fresh_table(db, "bench_py")
    quiesce(db)
    cmd = [sys.executable, os.path.join(HERE, "python_executor.py"), "--url", url,
           "--table", "bench_py", "--page-size", str(meta["page_size"]), "--interval", "60"]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=max(300, meta["records"] // 1000))
    except subprocess.TimeoutExpired:
        fail("python executor: still running after %d s; killed" % max(300, meta["records"] // 1000))
        return {"seconds": None}
    wall = time.monotonic() - t0
    res = {"seconds": None, "wall": wall}
    if p.returncode != 0:
        fail("python executor exited %d: %s" % (p.returncode, p.stderr.strip()[-500:]))
        return res
    out = json.loads(p.stdout.strip().splitlines()[-1])
    res["seconds"] = out["seconds"]
    n = db.one("SELECT count(*) FROM bench_py")
    status = db.one("SELECT status FROM py_etl_runs WHERE run_id = %s", (out["run_id"],))
    if n != meta["records"] or out["records"] != meta["records"] or status != "succeeded":
        fail("python executor: %d rows, reported %d, status %s, expected %d" %
             (n, out["records"], status, meta["records"]))
    log("%-22s          %-9s %8.3f s  %10s rows/s  (process wall time %.3f s)" %
        ("python executor", status, out["seconds"], fmt_int(meta["records"] / out["seconds"]), wall))
    return res


def wait_status(db, run_id, timeout_ms):
    try:
        return db.one("SELECT etl_wait_run(%s, %s)", (run_id, timeout_ms))
    except psycopg2.Error as e:
        return "error: %s" % str(e).strip()


def stage_resume(db, job_id, meta, fraction, finish):
    """Time from etl_resume_run to the first new row, resuming at `fraction`
    of the job.  The run to resume is made by cancelling a run that cannot
    load anything: a SHARE lock on its target (held by another session)
    blocks its first INSERT, and etl_cancel_run stops it there, with a
    checkpoint at page 0.  Its checkpoint is then moved to the point."""
    label = "resume at %d %%" % round(fraction * 100)
    n, page = meta["records"], meta["page_size"]
    fresh_table(db, "bench_resume")
    locker = connect(autocommit=False)
    lcur = locker.cursor()
    lcur.execute("LOCK TABLE bench_resume IN SHARE MODE")
    run_id = db.one("SELECT etl_execute_job(%s, timeout := 3600, wait := false)", (job_id,))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if db.one("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                  "AND wait_event_type = 'Lock'", ("etl_exec run %d" % run_id,)):
            break
        time.sleep(0.01)
    db.q("SELECT etl_cancel_run(%s)", (run_id,))
    status = wait_status(db, run_id, 10000)
    locker.rollback()
    locker.close()
    has_cp, errmsg = db.q("SELECT run_context ? 'checkpoint', error_message FROM dw_etl_runs "
                          "WHERE run_id = %s", (run_id,))[0]
    if status != "cancelled" or not has_cp:
        fail("%s: the run to resume (%s) ended %s, checkpoint %s; expected cancelled with a checkpoint: %s" %
             (label, run_id, status, has_cp, errmsg))
        return None
    if db.one("SELECT count(*) FROM bench_resume") != 0:
        fail("%s: the cancelled run %s loaded rows despite the lock" % (label, run_id))
        return None

    pages_done = int(round(fraction * n / page))
    skip = pages_done * page
    db.q("UPDATE dw_etl_runs SET run_context = jsonb_set(run_context, '{checkpoint}', "
         "run_context->'checkpoint' || jsonb_build_object('skip', %s::bigint, 'page_index', %s::int, "
         "'total_records', %s::bigint)) WHERE run_id = %s", (skip, pages_done, skip, run_id))
    cp = db.q("SELECT skip, page_index, total_records FROM etl_get_checkpoint(%s)", (run_id,))
    if not cp or tuple(cp[0]) != (skip, pages_done, skip):
        fail("%s: etl_get_checkpoint(%s) says %r after the UPDATE, expected %r" %
             (label, run_id, cp, (skip, pages_done, skip)))
        return None
    quiesce(db)

    poll = connect()
    pcur = poll.cursor()
    t0 = time.monotonic()
    run_timeout = max(120, n // 2000)
    db.q("SELECT etl_resume_run(%s, %s, false)", (run_id, run_timeout))
    t_call = time.monotonic() - t0
    first = None
    while time.monotonic() - t0 < 60:
        pcur.execute("SELECT EXISTS (SELECT 1 FROM bench_resume)")
        if pcur.fetchone()[0]:
            first = time.monotonic() - t0
            break
        time.sleep(0.0005)
    poll.close()
    if first is None:
        fail("%s: no row within 60 s of etl_resume_run(%s)" % (label, run_id))
        db.q("SELECT etl_cancel_run(%s)", (run_id,))
        wait_status(db, run_id, 10000)
        return None
    first_id = db.one("SELECT min(patientid) FROM bench_resume")
    if first_id != skip + 1:
        fail("%s: the first resumed row is patient %s, expected %d" % (label, first_id, skip + 1))
    if finish:
        status = wait_status(db, run_id, (run_timeout + 10) * 1000)
        rows = db.one("SELECT count(*) FROM bench_resume")
        if status != "succeeded" or rows != n - skip:
            fail("%s: run %s ended %s with %d rows, expected succeeded with %d" %
                 (label, run_id, status, rows, n - skip))
    else:
        db.q("SELECT etl_cancel_run(%s)", (run_id,))
        status = wait_status(db, run_id, 10000)
    log("%-22s run %-4s first new row %.1f ms after etl_resume_run (the call took %.1f ms); then %s" %
        (label, run_id, first * 1000, t_call * 1000, status))
    return {"first_ms": first * 1000, "call_ms": t_call * 1000}


# ---------------------------------------------------------------- report

def fmt_int(x):
    return "{:,.0f}".format(x)


def machine(db):
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
    cpus = len(os.sched_getaffinity(0))
    pg = db.one("SHOW server_version")
    settings = dict(db.q("SELECT name, current_setting(name) FROM pg_settings WHERE name IN "
                         "('shared_buffers', 'fsync', 'synchronous_commit', 'wal_level', 'max_wal_size')"))
    nginx = subprocess.run(["nginx", "-v"], stderr=subprocess.PIPE, text=True).stderr.strip()
    curl = subprocess.run(["curl", "--version"], stdout=subprocess.PIPE, text=True).stdout.split("\n")[0]
    try:
        git = subprocess.run(["git", "-C", os.path.dirname(os.path.dirname(HERE)), "describe", "--always",
                              "--dirty"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True).stdout.strip() or "?"
    except OSError:
        git = "?"
    return [
        "etl_exec %s: %s sha256 %s (source tree: git %s)" % (
            db.one("SELECT extversion FROM pg_extension WHERE extname = 'etl_exec'"),
            os.path.basename(build["path"]), build["sha"], git),
        "machine: %d CPUs (%s), %.1f GiB RAM, Linux %s" % (cpus, model, mem_kb / 1048576, platform.release()),
        "PostgreSQL %s (shared_buffers %s, fsync %s, wal_level %s; etl_exec workers commit with "
        "synchronous_commit off), %s, %s" % (pg, settings.get("shared_buffers"), settings.get("fsync"),
                                             settings.get("wal_level"), nginx.replace("nginx version: ", ""),
                                             " ".join(curl.split()[:2])),
    ]


def table(rows, header):
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    out = []

    def line(r):
        cells = []
        for i, c in enumerate(r):
            c = str(c)
            cells.append(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]))
        return "| " + " | ".join(cells) + " |"
    out.append(line(header))
    out.append("|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
    for r in rows:
        out.append(line(r))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="directory of gen_pages.py's output")
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:18090")
    ap.add_argument("--work", required=True, help="scratch directory")
    ap.add_argument("--repeat", type=int, default=1, help="timed repetitions of stages 1-4 (best is reported)")
    ap.add_argument("--smoke", action="store_true", help="no 3N-record memory run")
    ap.add_argument("--latency-ms", type=int, default=20,
                    help="per-request delay of the latency stage's server (default 20)")
    ap.add_argument("--latency-rounds", type=int, default=3,
                    help="paired rounds of the latency stage (default 3)")
    args = ap.parse_args()

    with open(os.path.join(args.data, "meta.json")) as f:
        meta = json.load(f)
    n = meta["records"]
    url1 = args.base_url + "/m1/Patients"
    url3 = args.base_url + "/m3/Patients"
    db = Db()
    db.q("CREATE EXTENSION IF NOT EXISTS etl_exec")
    build["path"] = os.path.join(db.one("SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'"), "etl_exec.so")
    build["sha"] = so_fingerprint()

    def job(name, url, table, interval=None, mode="append", keys=None):
        return db.one(
            "INSERT INTO dw_etl_jobs (name, url, target_table, pagination, page_size, pagination_options, "
            "load_mode, key_columns, checkpoint_interval_seconds) VALUES "
            "(%s, %s, %s, 'offset', %s, '{\"skip_param\": \"skip\", \"limit_param\": \"top\"}', %s, %s, %s) "
            "RETURNING job_id",
            (name, url, table, meta["page_size"], mode, keys, interval))

    for t, pk in (("bench_etl", False), ("bench_upsert", True), ("bench_resume", False), ("bench_m3", False)):
        fresh_table(db, t, pk)
    j_append = job("bench_append", url1, "bench_etl")
    j_cp0 = job("bench_cp0", url1, "bench_etl", interval=0)
    j_upsert = job("bench_upsert", url1, "bench_upsert", mode="upsert", keys=["patientid"])
    j_resume = job("bench_resume", url1, "bench_resume", interval=0)
    j_m3 = job("bench_3x", url3, "bench_m3")
    # on_bad_record = 'reject': clean data (paired with append), and a target
    # whose CHECK refuses 10 records spread over the run
    j_reject = job("bench_reject", url1, "bench_etl")
    j_bad = job("bench_bad", url1, "bench_bad")
    db.q("UPDATE dw_etl_jobs SET on_bad_record = 'reject' WHERE job_id IN (%s, %s)", (j_reject, j_bad))
    bad_every = max(n // 10, 1)
    slow = SlowPages(args.data, args.latency_ms)
    j_lat = job("bench_lat", slow.url, "bench_etl")
    j_lat_cp0 = job("bench_lat_cp0", slow.url, "bench_etl", interval=0)

    log("data set: %s records, %d pages of %d (+1 empty), %.1f MB of JSON (%s)" %
        (fmt_int(n), meta["pages"] - 1, meta["page_size"], meta["bytes"] / 1e6, args.data))
    # warm the page cache and check the server once, untimed
    stage_fetch(args, meta, url1)

    results = {k: [] for k in ("fetch", "copy", "append", "cp0", "upsert", "upsert2", "reject", "bad")}
    for r in range(args.repeat):
        log("round %d of %d" % (r + 1, args.repeat))
        f = stage_fetch(args, meta, url1)
        log("%-22s          %-9s %8.3f s  %10s rows/s  (%d requests, %d connection(s), %.1f MB/s)" %
            ("fetch limit (curl)", "", f["seconds"], fmt_int(n / f["seconds"]), f["requests"],
             f["connections"], f["bytes"] / f["seconds"] / 1e6))
        if f["connections"] != 1:
            log("note: curl opened %d connections" % f["connections"])
        results["fetch"].append(f)
        c = stage_copy(db, args, meta)
        log("%-22s          %-9s %8.3f s  %10s rows/s" % ("load limit (COPY)", "", c["seconds"],
                                                          fmt_int(n / c["seconds"])))
        results["copy"].append(c)
        # append and per-page alternate which goes first, so neither gains
        # from running after the other
        # (and reject goes right before or after append, for their paired ratio)
        if r % 2:
            results["cp0"].append(stage_etl(db, "etl_exec per-page cp", j_cp0, "bench_etl", n))
            results["reject"].append(stage_etl(db, "etl_exec reject, clean", j_reject, "bench_etl", n))
        results["append"].append(stage_etl(db, "etl_exec append", j_append, "bench_etl", n))
        if r == 0:
            compare_with_copy(db, "etl_exec append", "bench_etl")
        if not r % 2:
            results["reject"].append(stage_etl(db, "etl_exec reject, clean", j_reject, "bench_etl", n))
            results["cp0"].append(stage_etl(db, "etl_exec per-page cp", j_cp0, "bench_etl", n))
        fresh_table(db, "bench_bad")
        db.q("ALTER TABLE bench_bad ADD CHECK (patientid %% %s <> 0)" % bad_every)
        res = stage_etl(db, "etl_exec reject, 10 bad", j_bad, "bench_bad", n - n // bad_every, fresh=False)
        rejected = db.one("SELECT count(*) FROM dw_etl_rejects WHERE run_id = %s", (res["run_id"],))
        if rejected != n // bad_every:
            fail("etl_exec reject, 10 bad: run %s rejected %s records, expected %d" %
                 (res["run_id"], rejected, n // bad_every))
        results["bad"].append(res)
        results["upsert"].append(stage_etl(db, "etl_exec upsert", j_upsert, "bench_upsert", n,
                                           primary_key=True))
        if r == 0:
            compare_with_copy(db, "etl_exec upsert", "bench_upsert")
        # the same job again: every key is there, every row updates
        results["upsert2"].append(stage_etl(db, "etl_exec upsert again", j_upsert, "bench_upsert", n,
                                            primary_key=True, fresh=False))
        if r == 0:
            compare_with_copy(db, "etl_exec upsert again", "bench_upsert")
    # per-page checkpoints against the default interval, with an API that
    # answers each page in latency_ms: paired rounds, alternating order
    for r in range(args.latency_rounds):
        log("latency round %d of %d (%d ms a page)" % (r + 1, args.latency_rounds, args.latency_ms))
        pair = [("lat", j_lat, "etl_exec %d ms, 60 s" % args.latency_ms),
                ("lat_cp0", j_lat_cp0, "etl_exec %d ms, per page" % args.latency_ms)]
        for key, jid, label in (pair if r % 2 == 0 else pair[::-1]):
            results.setdefault(key, []).append(stage_etl(db, label, jid, "bench_etl", n))
    slow.shutdown()
    db.q("DROP TABLE IF EXISTS bench_etl, bench_upsert, bench_bad")

    py = stage_python(db, args, meta, url1)
    if py["seconds"]:
        compare_with_copy(db, "python executor", "bench_py")
    db.q("DROP TABLE IF EXISTS bench_py, bench_copy")

    res10 = stage_resume(db, j_resume, meta, 0.10, finish=False)
    res90 = stage_resume(db, j_resume, meta, 0.90, finish=True)
    db.q("DROP TABLE IF EXISTS bench_resume")

    m3 = None
    if not args.smoke:
        m3 = stage_etl(db, "etl_exec append 3x", j_m3, "bench_m3", 3 * n)
        db.q("DROP TABLE IF EXISTS bench_m3")

    # ------------------------------------------------------------ summary
    def best(key):
        return min(x["seconds"] for x in results[key] if x["seconds"])

    def spread(key):
        xs = [x["seconds"] for x in results[key] if x["seconds"]]
        return "" if len(xs) < 2 else " (runs: %s s)" % ", ".join("%.2f" % x for x in xs)

    def paired_overhead(base, other):
        # each round runs both back to back: their ratio is less exposed to
        # a shared machine's drift than the best of each
        pairs = [(a["seconds"], b["seconds"]) for a, b in zip(results[base], results[other])
                 if a["seconds"] and b["seconds"]]
        if not pairs:
            return "n/a"
        overheads = sorted((1 - a / b) * 100 for a, b in pairs)
        return "%+.1f %% (rounds: %s)" % (statistics.median(overheads), ", ".join("%+.1f" % o for o in overheads))

    def paired_cost(base, other):
        # the extra run time of `other` over `base`, per round run back to back
        pairs = [(a["seconds"], b["seconds"]) for a, b in zip(results.get(base, []), results.get(other, []))
                 if a["seconds"] and b["seconds"]]
        if not pairs:
            return "n/a"
        costs = sorted((b / a - 1) * 100 for a, b in pairs)
        return "%+.1f %% (rounds: %s)" % (statistics.median(costs), ", ".join("%+.1f" % c for c in costs))

    def commit_share(key):
        # the worker's own account: time in its commits while pages flowed
        # (checkpoint write + commit) against the rest of the run
        runs = [x for x in results[key] if x.get("commits") and x.get("duration_ms")]
        if not runs:
            return "n/a"
        share = statistics.median(x["commit_ms"] / (x["duration_ms"] - x["commit_ms"]) * 100 for x in runs)
        per_commit = statistics.median(x["commit_ms"] / x["commits"] * 1000 for x in runs)
        return "+%.1f %% (%.0f us per commit)" % (share, per_commit)

    t_fetch, t_copy = best("fetch"), best("copy")
    t_lat, t_lat_cp0 = best("lat"), best("lat_cp0")
    t_app, t_cp0, t_ups, t_ups2 = best("append"), best("cp0"), best("upsert"), best("upsert2")
    t_rej, t_bad = best("reject"), best("bad")
    mb = meta["bytes"] / 1e6
    rows = [
        ["1. fetch limit: curl, all pages, 1 keep-alive connection", "%.2f" % t_fetch, fmt_int(n / t_fetch),
         "%.0f" % (mb / t_fetch)],
        ["2. load limit: COPY of the pre-converted rows", "%.2f" % t_copy, fmt_int(n / t_copy), ""],
        ["3. etl_exec, append, checkpoint every 60 s", "%.2f" % t_app, fmt_int(n / t_app), "%.0f" % (mb / t_app)],
        ["4a. etl_exec, append, checkpoint every page", "%.2f" % t_cp0, fmt_int(n / t_cp0),
         "%.0f" % (mb / t_cp0)],
        ["4b. etl_exec, upsert on patientid (primary key)", "%.2f" % t_ups, fmt_int(n / t_ups),
         "%.0f" % (mb / t_ups)],
        ["4c. etl_exec, the same upsert again: every key there", "%.2f" % t_ups2, fmt_int(n / t_ups2),
         "%.0f" % (mb / t_ups2)],
        ["4d. etl_exec, append, on_bad_record = 'reject', clean data", "%.2f" % t_rej, fmt_int(n / t_rej),
         "%.0f" % (mb / t_rej)],
        ["4e. etl_exec, append, on_bad_record = 'reject', %d records rejected" % (n // bad_every),
         "%.2f" % t_bad, fmt_int(n / t_bad), "%.0f" % (mb / t_bad)],
    ]
    if py["seconds"]:
        rows.append(["5. Python executor: requests + psycopg2 execute_values", "%.2f" % py["seconds"],
                     fmt_int(n / py["seconds"]), "%.0f" % (mb / py["seconds"])])
    else:
        rows.append(["5. Python executor: requests + psycopg2 execute_values", "failed", "", ""])

    rows.append(["6a. etl_exec, API answering in %d ms a page, checkpoint every 60 s" % args.latency_ms,
                 "%.2f" % t_lat, fmt_int(n / t_lat), "%.0f" % (mb / t_lat)])
    rows.append(["6b. etl_exec, API answering in %d ms a page, checkpoint every page" % args.latency_ms,
                 "%.2f" % t_lat_cp0, fmt_int(n / t_lat_cp0), "%.0f" % (mb / t_lat_cp0)])

    def mem(res):
        if res is None or res.get("rss_peak_kb") is None:
            return "n/a"
        return "%.1f MB" % (res["rss_peak_kb"] / 1024)

    peak1 = max((x["rss_peak_kb"] for x in results["append"] if x.get("rss_peak_kb")), default=None)
    peak_cp0 = max((x["rss_peak_kb"] for x in results["cp0"] if x.get("rss_peak_kb")), default=None)
    ratios = [
        ["etl_exec / max(fetch, load), time", "%.2f x" % (t_app / max(t_fetch, t_copy)), "target <= 1.5 x"],
        ["etl_exec / (fetch + load), time", "%.2f x" % (t_app / (t_fetch + t_copy)), ""],
        ["etl_exec / Python executor, rows/s",
         ("%.1f x" % (py["seconds"] / t_app)) if py["seconds"] else "n/a", "target >= 5 x"],
        ["per-page checkpoint cost at %d ms a page (median of rounds, paired)" % args.latency_ms,
         paired_cost("lat", "lat_cp0"), "target <= 2 %"],
        ["per-page checkpoint cost at %d ms a page, worker's commit time / rest" % args.latency_ms,
         commit_share("lat_cp0"), ""],
        ["per-page checkpoint overhead, zero latency (best vs best)", "%+.1f %%" % ((1 - t_app / t_cp0) * 100),
         "reported, no target"],
        ["per-page checkpoint overhead, zero latency (median of rounds, paired)",
         paired_overhead("append", "cp0"), "reported, no target"],
        ["per-page checkpoint cost, zero latency, worker's commit time / rest", commit_share("cp0"),
         "reported, no target"],
        ["upsert overhead, throughput", "%+.1f %%" % ((1 - t_app / t_ups) * 100), ""],
        ["etl_exec upsert / append, time (4b / 3)", "%.2f x" % (t_ups / t_app), "target <= 1.5 x"],
        ["etl_exec upsert of existing keys / append, time (4c / 3)", "%.2f x" % (t_ups2 / t_app),
         "reported, no target"],
        ["on_bad_record = 'reject' on clean data, cost (4d vs 3, median of rounds, paired)",
         paired_cost("append", "reject"), "no slowdown (within noise)"],
        ["%d records rejected / clean append, time (4e / 3)" % (n // bad_every), "%.2f x" % (t_bad / t_app),
         "reported, no target"],
        ["worker peak RssAnon, %s records" % fmt_int(n),
         "%.1f MB" % (peak1 / 1024) if peak1 else "n/a", "target < 64 MB"],
        ["worker peak RssAnon, %s records, checkpoint every page" % fmt_int(n),
         "%.1f MB" % (peak_cp0 / 1024) if peak_cp0 else "n/a", "target < 64 MB"],
    ]
    if m3 is not None:
        ratio = ("(%+.1f %% vs %s)" % ((m3["rss_peak_kb"] / peak1 - 1) * 100, fmt_int(n))
                 if peak1 and m3.get("rss_peak_kb") else "")
        ratios.append(["worker peak RssAnon, %s records" % fmt_int(3 * n), mem(m3) + " " + ratio,
                       "target within 10 %"])
        ratios.append(["etl_exec, %s records, rows/s" % fmt_int(3 * n), fmt_int(3 * n / m3["seconds"]), ""])
    for frac, res in ((10, res10), (90, res90)):
        ratios.append(["resume at %d %%: etl_resume_run to first new row" % frac,
                       "%.0f ms" % res["first_ms"] if res else "failed", ""])

    print()
    print("== etl_exec benchmark: %s records (%d pages of %d, %.1f MB of JSON), best of %d" %
          (fmt_int(n), meta["pages"] - 1, meta["page_size"], mb, args.repeat))
    for line in machine(db):
        print(line)
    print()
    print(table(rows, ["stage", "seconds", "rows/s", "MB/s"]))
    print()
    print(table(ratios, ["figure", "value", "target"]))
    if args.repeat > 1:
        print()
        for key, name in (("fetch", "fetch"), ("copy", "COPY"), ("append", "etl_exec append"),
                          ("cp0", "etl_exec per-page"), ("upsert", "etl_exec upsert"),
                          ("upsert2", "upsert again"), ("reject", "reject, clean"),
                          ("bad", "reject, 10 bad"),
                          ("lat", "latency, 60 s"), ("lat_cp0", "latency, per page")):
            print("%-18s%s" % (name, spread(key)))
    for w in warnings:
        print("WARNING: " + w)
    print()
    if failures:
        print("FAILED stages (%d):" % len(failures))
        for f in failures:
            print("  - " + f)
        return 1
    print("all stages passed (row counts, run statuses, stored values)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
