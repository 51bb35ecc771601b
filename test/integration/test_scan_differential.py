"""Differential: the one-pass page reader (page_scan.c) against PostgreSQL's
own jsonb parser, inside the server, on thousands of generated and mutated
pages.  For every page the reader takes (it may leave any page to the jsonb
path), its records must be exactly what jsonb makes of the same text: the
same columns mentioned, the same records in order, every value the same
(text as jsonb's ->> gives it, jsonb columns equal as jsonb, missing and
null values NULL); and it must never take a page jsonb refuses."""
import json
import random
from decimal import Decimal

import pytest

COLS = ["id", "name", "score", "flag", "note", "meta"]
JSONB = [False, False, False, False, False, True]

# what jsonb makes of a page: present columns and each record's values, or
# "invalid" (jsonb refuses the text), "missing" (no records_path) or "shape"
# (records that are not objects in an array), keys mapped by name (else the first column equal ignoring case)
REFERENCE = """
CREATE OR REPLACE FUNCTION pg_temp.reference(doc text, cols text[], is_jsonb boolean[]) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    j jsonb;
    recs jsonb;
    rows jsonb := '[]';
    present text[] := '{}';
    r jsonb;
    row jsonb;
    v jsonb;
    k text;
BEGIN
    BEGIN
        j := doc::jsonb;
    EXCEPTION WHEN others THEN
        RETURN '"invalid"';
    END;
    recs := j -> 'value';
    IF jsonb_typeof(j) = 'object' AND recs IS NULL THEN
        RETURN '"missing"';
    END IF;
    IF jsonb_typeof(j) <> 'object' OR jsonb_typeof(recs) IS DISTINCT FROM 'array'
       OR EXISTS (SELECT 1 FROM jsonb_array_elements(recs) e WHERE jsonb_typeof(e) <> 'object') THEN
        RETURN '"shape"';
    END IF;
    FOR i IN 1 .. cardinality(cols) LOOP
        IF EXISTS (SELECT 1 FROM jsonb_array_elements(recs) e, jsonb_object_keys(e) key
                   WHERE key = cols[i] OR (lower(key) = lower(cols[i]) AND NOT key = ANY (cols))) THEN
            present := present || cols[i];
        END IF;
    END LOOP;
    FOR r IN SELECT e FROM jsonb_array_elements(recs) e LOOP
        row := '[]';
        FOR i IN 1 .. cardinality(cols) LOOP
            CONTINUE WHEN NOT cols[i] = ANY (present);
            v := r -> cols[i];
            IF v IS NULL THEN
                SELECT r -> key INTO v FROM jsonb_object_keys(r) key
                WHERE lower(key) = lower(cols[i]) AND NOT key = ANY (cols) LIMIT 1;
            END IF;
            row := row || jsonb_build_array(CASE
                WHEN v IS NULL OR jsonb_typeof(v) = 'null' THEN NULL
                WHEN is_jsonb[i] THEN to_jsonb(v::text)
                ELSE to_jsonb(v #>> '{}') END);
        END LOOP;
        rows := rows || jsonb_build_array(row);
    END LOOP;
    RETURN jsonb_build_object('present', to_jsonb(present), 'rows', rows);
END
$$;
"""

NUMBERS = ["0", "1", "-17", "3.14", "1.50", "100", "12345678901234567890123", "0.000", "-2.5",
           "0.1", "99999999999999999999.99999"]
# forms jsonb prints otherwise: the reader leaves such pages to the jsonb path
WILD_NUMBERS = ["1e3", "1E+3", "2.5e-3", "-0", "-0.0", "1E400"]
PIECES = ["a", "Z", " ", "é", "日本", "😀", "\t", "\n", "\r", "\\", '"', "/", "\b", "\f", "\x01",
          "\u2028", "tab\there", "N", "\\N", ".", ",", "{", "}", "[", "]"]


def gen_string(rnd):
    return "".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 6)))


def enc_string(rnd, s):
    """A JSON string literal of s, escaped one of several ways."""
    out = ['"']
    for ch in s:
        cp = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif cp < 0x20 or (cp > 0x7e and rnd.random() < 0.3):
            if cp > 0xffff:
                cp -= 0x10000
                out.append("\\u%04x\\u%04x" % (0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff)))
            else:
                out.append(rnd.choice(["\\u%04x", "\\u%04X"]) % cp)
        elif ch == "/" and rnd.random() < 0.5:
            out.append("\\/")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def gen_value(rnd, depth=0, nested=False, wild=False):
    kind = rnd.random()
    if kind < 0.3:
        return enc_string(rnd, gen_string(rnd))
    if kind < 0.55:
        return rnd.choice(NUMBERS + (WILD_NUMBERS if wild else []))
    if kind < 0.65:
        return rnd.choice(["true", "false"])
    if kind < 0.75:
        return "null"
    if not nested or depth > 3:
        return enc_string(rnd, gen_string(rnd))
    if kind < 0.88:
        items = [gen_value(rnd, depth + 1, True, wild) for _ in range(rnd.randint(0, 3))]
        return "[" + ", ".join(items) + "]"
    keys = [rnd.choice(["a", "b", "c", "é", ""]) for _ in range(rnd.randint(0, 3))]
    if not wild:
        keys = list(dict.fromkeys(keys))      # a key twice: left to jsonb
    return "{" + ", ".join(f"{enc_string(rnd, k)}: {gen_value(rnd, depth + 1, True, wild)}" for k in keys) + "}"


def gen_record(rnd, wild):
    keys = [c for c in COLS if rnd.random() < 0.7]
    rnd.shuffle(keys)
    members = []
    for k in keys:
        name = k.upper() if rnd.random() < 0.1 else k
        members.append((name, gen_value(rnd, nested=(k == "meta"), wild=wild)))
    if rnd.random() < 0.3:
        members.append(("extra", gen_value(rnd, nested=True, wild=wild)))
    if wild and rnd.random() < 0.1 and members:
        members.append(members[0])        # a key twice
    sep = rnd.choice([", ", ",", ",\n  "])
    return "{" + sep.join(f"{enc_string(rnd, k)}{rnd.choice([':', ': ', ' : '])}{v}" for k, v in members) + "}"


def gen_page(rnd):
    wild = rnd.random() < 0.4
    recs = [gen_record(rnd, wild) for _ in range(rnd.randint(0, 12))]
    parts = [f'"value": [{", ".join(recs)}]']
    if rnd.random() < 0.5:
        parts.insert(rnd.randint(0, 1), f'"@odata.count": {len(recs)}')
    if rnd.random() < 0.3:
        parts.append(f'"other": {gen_value(rnd, nested=True, wild=wild)}')
    ws = rnd.choice(["", " ", "\n", "\r\n\t"])
    return ws + "{" + ", ".join(parts) + "}" + ws


def mutate(rnd, text):
    for _ in range(rnd.randint(1, 3)):
        if not text:
            break
        i = rnd.randrange(len(text))
        op = rnd.random()
        if op < 0.3:
            text = text[:i] + text[i + 1:]
        elif op < 0.6:
            text = text[:i] + rnd.choice('{}[]",:\\ 0e-.nult\x00\x7f') + text[i:]
        elif op < 0.8:
            j = min(len(text), i + rnd.randint(1, 8))
            text = text[:i] + text[i:j] + text[i:]
        else:
            text = text[:i] + rnd.choice("\"\\u{0[") + text[i + 1:]
    return text


def copy_fields(line):
    """A COPY text line's fields, decoded (\\N: None)."""
    out = []
    for field in line.split("\t"):
        if field == "\\N":
            out.append(None)
            continue
        s, i = [], 0
        while i < len(field):
            ch = field[i]
            if ch == "\\" and i + 1 < len(field):
                nxt = field[i + 1]
                simple = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}
                if nxt in simple:
                    s.append(simple[nxt])
                    i += 2
                    continue
                raise AssertionError(f"unexpected escape \\{nxt} in {field!r}")
            s.append(ch)
            i += 1
        out.append("".join(s))
    return out


def as_json(text):
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def check(doc, scanned, ref):
    """None when the reader's result agrees with jsonb's, else why not."""
    if scanned is None:
        return None                     # left to the jsonb path: always allowed
    header, _, body = scanned.partition("\n")
    seen, header = header[:1] == "+", header[1:]
    if ref == "missing":
        # nothing at records_path: the caller says so, with the body's keys
        return None if not seen and header == "" and body == "" else f"records at a path jsonb does not have: {scanned!r}"
    if ref in ("invalid", "shape"):
        return f"the reader took a page jsonb calls {ref}"
    if not seen:
        return "the reader did not find the records jsonb finds"
    present = header.split(",") if header else []
    if present != ref["present"]:
        return f"columns {present} != {ref['present']}"
    lines = body.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(ref["rows"]) and not (present == [] and len(ref["rows"]) == len(lines)):
        return f"{len(lines)} records != {len(ref['rows'])}"
    for n, (line, want) in enumerate(zip(lines, ref["rows"])):
        got = copy_fields(line) if present else []
        if len(got) != len(want):
            return f"record {n}: {len(got)} fields != {len(want)}"
        for col, g, w in zip(present, got, want):
            if COLS.index(col) == 5 and g is not None and w is not None:
                if as_json(g) != as_json(w):
                    return f"record {n} column {col}: {g!r} != {w!r}"
            elif g != w:
                return f"record {n} column {col}: {g!r} != {w!r}"
    return None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_page_reader_agrees_with_jsonb_on_generated_and_mutated_pages(db, seed):
    rnd = random.Random(seed)
    docs = []
    for _ in range(1000):
        page = gen_page(rnd)
        docs.append(page)
        docs.append(mutate(rnd, page))
    cur = db.conn.cursor()
    cur.execute(REFERENCE)
    taken = invalid_refused = compared = 0
    problems = []
    for start in range(0, len(docs), 500):
        batch = docs[start:start + 500]
        # text with a NUL cannot be a text value: those stay in Python only
        batch = [d for d in batch if "\x00" not in d]
        cur.execute("""SELECT d, _etl_scan_page(d, '$.value[*]', %s, %s), pg_temp.reference(d, %s, %s)
                       FROM unnest(%s::text[]) AS d""", (COLS, JSONB, COLS, JSONB, batch))
        for doc, scanned, ref in cur.fetchall():
            why = check(doc, scanned, ref)
            if why:
                problems.append((why, doc))
            taken += scanned is not None
            compared += len(ref["rows"]) if scanned is not None and isinstance(ref, dict) else 0
            invalid_refused += scanned is None and ref == "invalid"
    assert not problems, "\n".join(f"{why}\n  {doc!r}" for why, doc in problems[:10])
    # the comparison means something: the reader took most valid pages, and refused the invalid ones
    assert taken > len(docs) * 0.3, taken
    assert compared > 3000, compared
    assert invalid_refused > 100, invalid_refused
