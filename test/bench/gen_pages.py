#!/usr/bin/python3
"""Generate the benchmark's data set: N patient-like records.

Writes, under OUT:

  m1/skip-<S>.json   OData pages of PAGE records ({"@odata.count": N, "value": [...]}),
                     S = 0, PAGE, 2*PAGE, ...; and m1/skip-<N>.json = {"value": []}.
                     nginx serves /m1/Patients?skip=S&top=PAGE from m1/skip-$arg_skip.json.
  m3/skip-<S>.json   the 3N-record variant: symlinks to the m1 pages, three times over
                     (record ids repeat), and the empty page at 3N.  Its "@odata.count"
                     says N (the pages are shared); the benchmark jobs do not use it.
  rows.copy          the same N rows in COPY text format, exactly as etl_exec stores them
                     (the text each value's input function gets), for the load limit.
  meta.json          record count, pages, bytes, and the generator's fingerprint.

The rows mix ints, text with unicode and JSON escapes (quotes, backslashes, newlines,
tabs, \\uXXXX escapes including surrogate pairs), dates, timestamps with and without
offsets, booleans, numerics and NULLs.  Every record also has an "@odata.etag" key
that no column takes.  Deterministic: the same N and seed give the same bytes.
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import random
import sys

# target columns, in table order: (JSON key, SQL type)
COLUMNS = [
    ("PatientId", "int"),
    ("Mrn", "text"),
    ("FirstName", "text"),
    ("LastName", "text"),
    ("BirthDate", "date"),
    ("Sex", "text"),
    ("IsActive", "boolean"),
    ("HeightCm", "numeric(4,1)"),
    ("WeightKg", "numeric(5,2)"),
    ("VisitCount", "int"),
    ("Balance", "numeric(12,2)"),
    ("CreatedAt", "timestamptz"),
    ("LastVisitAt", "timestamp"),
    ("Notes", "text"),
]

FIRST = ["Anna", "José", "Zoë", "Łukasz", "Ünal", "Søren", "Ångström", "Chloé", "Mikhaïl",
         "Иван", "Ελένη", "李雷", "さくら", "محمد", "Noah", "Emma", "Liam", "Olivia", "Mia",
         "Jürgen", "François", "Nguyễn", "Siobhán", "Ðorđe", "😀 Smiley"]
LAST = ["Smith", "O'Brien", "Müller", "García", "D\"Angelo", "Back\\Slash", "van der Berg",
        "Nakamura", "Ødegaard", "Kowalczyk", "Dvořák", "Şahin", "Fernández", "Wang", "Kim",
        "Tab\tName", "Квасова", "Παπαδόπουλος", "Quote'n\"Both", "Brown"]
NOTES = [
    None, None, None,
    "Allergic to penicillin.",
    "Line one\nLine two\nLine three",
    "Tabs\tin\tthe\tmiddle",
    "Said \"call me back\" at 5pm",
    "Path C:\\Users\\patient\\file.txt",
    "Mixed: quote \" backslash \\ newline \n tab \t end",
    "Unicode: café, naïve, 東京, Ωmega, emoji 🏥💉",
    "Windows line\r\nending",
    "{\"looks\": \"like json\", \"n\": [1, 2, 3]}",
    "",
    "Trailing backslash \\",
    "Control-ish: \x01 and \x1f characters",
]

GENERATOR_VERSION = "1"


def fingerprint():
    with open(os.path.abspath(__file__), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def make_record(rnd, pid):
    """One record as an ordered dict of JSON values (key order as an API would send)."""
    year = rnd.randint(1930, 2020)
    month = rnd.randint(1, 12)
    day = rnd.randint(1, 28)
    created_day = rnd.randint(0, 2000)
    cy, cdoy = 2015 + created_day // 365, created_day % 365
    cm, cd = 1 + cdoy // 31 % 12, 1 + cdoy % 28
    hh, mi, ss = rnd.randint(0, 23), rnd.randint(0, 59), rnd.randint(0, 59)
    off = rnd.choice(["Z", "Z", "+01:00", "-05:00", "+05:30"])
    created = "%04d-%02d-%02dT%02d:%02d:%02d%s" % (cy, cm, cd, hh, mi, ss, off)
    if rnd.random() < 0.2:
        last_visit = None
    else:
        last_visit = "%04d-%02d-%02dT%02d:%02d:%02d.%06d" % (
            rnd.randint(2016, 2024), rnd.randint(1, 12), rnd.randint(1, 28),
            rnd.randint(0, 23), rnd.randint(0, 59), rnd.randint(0, 59), rnd.randint(0, 999999))
    return {
        "@odata.etag": "W/\"%08x\"" % rnd.getrandbits(32),
        "PatientId": pid,
        "Mrn": "MRN%08d" % pid,
        "FirstName": rnd.choice(FIRST),
        "LastName": rnd.choice(LAST) + ("-%d" % rnd.randint(1, 99) if rnd.random() < 0.3 else ""),
        "BirthDate": "%04d-%02d-%02d" % (year, month, day),
        "Sex": rnd.choice(["F", "M", "U", None]),
        "IsActive": rnd.random() < 0.85,
        "HeightCm": round(rnd.uniform(45.0, 210.0), 1),
        "WeightKg": None if rnd.random() < 0.1 else round(rnd.uniform(2.5, 180.0), 2),
        "VisitCount": rnd.randint(0, 400),
        "Balance": round(rnd.uniform(-5000.0, 250000.0), 2),
        "CreatedAt": created,
        "LastVisitAt": last_visit,
        "Notes": rnd.choice(NOTES),
    }


def copy_text(v):
    """A JSON value as etl_exec hands it to the column's input function, COPY-escaped."""
    if v is None:
        return "\\N"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float):
        s = repr(v)			# the same digits json.dumps wrote
    else:
        s = str(v)
    return (s.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
            .replace("\t", "\\t"))


def write(path, data):
    with open(path, "w", encoding="utf-8") as f:
        f.write(data)


CHUNK_PAGES = 50


def generate_chunk(args):
    """Pages [first, first + CHUNK_PAGES) of the set: writes them and a part of rows.copy."""
    out, n, page, seed, first = args
    rnd = random.Random(seed * 1000003 + first)	# per chunk: the same bytes in any order
    m1 = os.path.join(out, "m1")
    keys = [k for k, _ in COLUMNS]
    nbytes = 0
    lines = []
    for skip in range(first * page, min((first + CHUNK_PAGES) * page, n), page):
        recs = []
        for pid in range(skip + 1, min(skip + page, n) + 1):
            rec = make_record(rnd, pid)
            # one record in seven with \\uXXXX escapes instead of raw UTF-8
            recs.append(json.dumps(rec, ensure_ascii=(pid % 7 == 0)))
            lines.append("\t".join(copy_text(rec[k]) for k in keys))
        body = '{"@odata.context": "$metadata#Patients", "@odata.count": %d, "value": [%s]}' % (
            n, ",\n".join(recs))
        write(os.path.join(m1, "skip-%d.json" % skip), body)
        nbytes += len(body.encode("utf-8"))
    part = os.path.join(out, "rows.copy.%08d" % first)
    write(part, "".join(line + "\n" for line in lines))
    return part, nbytes


def generate(out, n, page, seed):
    m1 = os.path.join(out, "m1")
    m3 = os.path.join(out, "m3")
    os.makedirs(m1, exist_ok=True)
    os.makedirs(m3, exist_ok=True)
    npages = (n + page - 1) // page
    tasks = [(out, n, page, seed, first) for first in range(0, npages, CHUNK_PAGES)]
    with multiprocessing.Pool(os.cpu_count() or 1) as pool:
        results = pool.map(generate_chunk, tasks, chunksize=1)
    total_bytes = sum(b for _, b in results)
    pages = npages
    with open(os.path.join(out, "rows.copy"), "wb") as copyf:
        for part, _ in results:
            with open(part, "rb") as f:
                copyf.write(f.read())
            os.unlink(part)
    empty = '{"@odata.context": "$metadata#Patients", "@odata.count": %d, "value": []}' % n
    write(os.path.join(m1, "skip-%d.json" % n), empty)
    total_bytes += len(empty)
    # the 3N variant: the same pages three times over
    for k in range(3):
        for skip in range(0, n, page):
            link = os.path.join(m3, "skip-%d.json" % (k * n + skip))
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink("../m1/skip-%d.json" % skip, link)
    write(os.path.join(m3, "skip-%d.json" % (3 * n)),
          '{"@odata.context": "$metadata#Patients", "@odata.count": %d, "value": []}' % (3 * n))
    meta = {"records": n, "page_size": page, "seed": seed, "pages": pages + 1,
            "bytes": total_bytes, "fingerprint": fingerprint()}
    write(os.path.join(out, "meta.json"), json.dumps(meta))
    # nginx workers and the postgres server read these
    for root, dirs, files in os.walk(out):
        os.chmod(root, 0o755)
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, 0o644)
    return meta


def ddl(table, primary_key=False):
    cols = []
    for key, typ in COLUMNS:
        c = "%s %s" % (key.lower(), typ)
        if primary_key and key == "PatientId":
            c += " PRIMARY KEY"
        cols.append(c)
    return "CREATE TABLE %s (\n    %s\n)" % (table, ",\n    ".join(cols))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=False)
    ap.add_argument("--records", type=int, default=1000000)
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=20240605)
    ap.add_argument("--fingerprint", action="store_true", help="print the generator's fingerprint")
    ap.add_argument("--ddl", metavar="TABLE", help="print the CREATE TABLE for TABLE")
    ap.add_argument("--pk", action="store_true", help="with --ddl: patientid PRIMARY KEY")
    a = ap.parse_args()
    if a.fingerprint:
        print(fingerprint())
        return
    if a.ddl:
        print(ddl(a.ddl, a.pk))
        return
    if not a.out or a.records < 1:
        ap.error("--out and a positive --records are required")
    meta = generate(a.out, a.records, a.page_size, a.seed)
    print(json.dumps(meta))


if __name__ == "__main__":
    sys.exit(main())
