"""What the packages say about themselves agrees with the extension: the
PGXN metadata (META.json), the Debian changelog and the control file name
one version, its install and upgrade scripts exist, and `make dist` makes
the zip PGXN takes.  (test/package.sh builds and installs the .deb.)"""
import json
import os
import re
import shutil
import subprocess
import zipfile

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def control_version():
    with open(os.path.join(ROOT, "etl_exec.control")) as f:
        return re.search(r"^default_version = '([^']+)'$", f.read(), re.M).group(1)


def meta():
    with open(os.path.join(ROOT, "META.json")) as f:
        return json.load(f)


def test_meta_json_names_the_control_file_s_version():
    m = meta()
    v = control_version()
    assert m["meta-spec"]["version"] == "1.0.0"
    assert m["name"] == "etl_exec"
    assert m["version"] == v
    assert m["provides"]["etl_exec"]["version"] == v
    assert os.path.isfile(os.path.join(ROOT, m["provides"]["etl_exec"]["file"]))
    assert os.path.isfile(os.path.join(ROOT, m["provides"]["etl_exec"]["docfile"]))
    for key in ("abstract", "maintainer", "license"):
        assert m[key], key


def test_the_debian_changelog_names_the_same_version():
    with open(os.path.join(ROOT, "debian", "changelog")) as f:
        first = f.readline()
    m = re.match(r"^etl-exec \(([^)-]+)-[^)]+\) ", first)
    assert m, first
    assert m.group(1) == control_version()
    with open(os.path.join(ROOT, "debian", "pgversions")) as f:
        assert f.read().strip() == "15+"


def test_every_version_upgrades_to_the_current_one():
    sql = os.path.join(ROOT, "sql")
    steps = {}
    for name in os.listdir(sql):
        m = re.match(r"^etl_exec--([0-9.]+)--([0-9.]+)\.sql$", name)
        if m:
            steps[m.group(1)] = m.group(2)
    assert os.path.isfile(os.path.join(sql, "etl_exec--0.1.0.sql"))
    v, seen = "0.1.0", []
    while v in steps:
        seen.append(v)
        v = steps[v]
    assert v == control_version(), seen
    assert set(steps) == set(seen), "an upgrade script off the chain"


def test_make_dist_makes_the_zip_pgxn_takes(tmp_path):
    if shutil.which("git") is None or \
            subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout with a commit: make dist archives HEAD")
    v = control_version()
    done = subprocess.run(["make", "-s", "-C", ROOT, "dist", "PG_CONFIG=" + os.environ.get(
        "PGBIN", "/usr/lib/postgresql/15/bin") + "/pg_config"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    path = os.path.join(ROOT, "etl_exec-%s.zip" % v)
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            committed = json.loads(z.read("etl_exec-%s/META.json" % v))
    finally:
        os.unlink(path)
    for f in ("META.json", "etl_exec.control", "Makefile", "README.md", "sql/etl_exec--0.1.0.sql"):
        assert "etl_exec-%s/%s" % (v, f) in names, f
    assert any(n.startswith("etl_exec-%s/src/" % v) and n.endswith(".c") for n in names)
    assert committed["version"] == v
