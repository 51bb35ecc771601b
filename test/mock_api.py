#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
mock_api.py -- a deterministic mock paginated JSON HTTP API for the etl_exec
test suite.  Python 3 standard library only (tested with Debian 12's
/usr/bin/python3, 3.11).

RUNNING
=======
    /usr/bin/python3 test/mock_api.py [--port 18080] [--host 127.0.0.1]
                                      [--pidfile FILE] [--verbose]
                                      [--token-ttl SECONDS]
    /usr/bin/python3 test/mock_api.py --dump N

  --port P        TCP port (default 18080; 0 = let the OS choose; the real
                  port is printed in the banner).
  --host H        bind address (default 127.0.0.1).
  --pidfile F     write the server's pid to F once bound; removed on exit.
  --verbose       log every request to stderr (silent by default).
  --token-ttl E   lifetime in seconds of tokens issued by /oauth/token
                  (default 3600).
  --dump N        print records 1..N as JSON lines (one
                  json.dumps(record, ensure_ascii=False) per line, UTF-8)
                  and exit without starting a server.

Once listening, "mock_api listening on HOST:PORT" is printed (and flushed) on
stdout -- after the pidfile has been written.  SIGTERM / SIGINT make the
server exit cleanly (status 0, pidfile removed).

The server is a ThreadingHTTPServer (daemon threads) speaking HTTP/1.1 with
keep-alive; every response carries Content-Length.

DATA SET
========
record(i), i = 1..n (n = query parameter "n", default 20000, 0..10000000):

    {"PatientId": i,
     "Name": "Patient <i>" + VARIETY[(i-1) % 9],
     "BirthDate": date(1950,1,1) + (i*37 % 20000) days    -> "YYYY-MM-DD",
     "Score": round((i*7919 % 100000) / 100, 2),
     "Active": i % 3 != 0,
     "CreatedAt": 2020-01-01T00:00:00Z + i*61 seconds     -> "YYYY-MM-DDTHH:MM:SSZ",
     "Visits": i % 17,
     "Notes": null if i % 5 == 0 else "note <i>",
     "Meta": {"source": "mock", "bucket": i % 10},
     "Tags": ["t" + str(i % 3), 'q"uote', None],
     "Codes": [i % 7, i % 11]}

VARIETY = "", " Müller", " O'Brien", ' "Quoted"', " line\\nbreak",
          " tab\\there", " back\\\\slash", " 日本", " emoji 😀"
(so record 1 is "Patient 1", record 2 "Patient 2 Müller", ..., record 10
"Patient 10" again).

All JSON responses: Content-Type "application/json; charset=utf-8", body =
json.dumps(obj, ensure_ascii=False) encoded as UTF-8.  With the query switch
gzip=1 AND a request header "Accept-Encoding" that lists gzip, the body is
gzipped and "Content-Encoding: gzip" is sent (Content-Length is then the
compressed length).  Without gzip=1 bodies are never compressed.

"offset" below always means the 0-based index of the first record of a page
(page starting at offset S holds records S+1 ..).  Fault switches *_at=K match
on that offset.

DATA ENDPOINTS (GET only; POST/other -> 405; unknown path -> 404 {"error":..})
==============
1. /odata/Patients?$skip=S&$top=T              (defaults S=0, T=100, T>=0)
       -> {"@odata.count": n, "value": [records S+1 .. min(S+T, n)]}
   skip_name=NAME / top_name=NAME  rename the $skip / $top parameters, e.g.
       /odata/Patients?skip_name=offset&top_name=limit&offset=0&limit=100
   no_count=1   omit "@odata.count".
   Non-integer / negative skip or top -> 400 {"error": "..."}.

2. /paged/Patients?page=P&per_page=T           (P 1-based, T>=1, default 100)
       -> {"total": n, "page": P, "per_page": T, "items": [...]}
   first_page=0 makes pages 0-based (any integer F >= 0 is accepted: page F
   is the first page).  page < first page -> 400.  no_count=1 omits "total".

3. /nextlink/Patients?$top=T                   (T>=1, default 100)
       -> {"value": [...], "@odata.nextLink": URL}
   URL = absolute "http://<Host header>/nextlink/Patients?$skiptoken=TOK&$top=T&
   <all other switches of the current request>"; TOK is opaque (base64url of
   the offset).  The last page has no "@odata.nextLink".
   relative=1       the link is relative: "Patients?$skiptoken=TOK&$top=T&..."
   trailing_empty=1 the last page holding data still gets a nextLink; it
                    leads to a page with "value": [] and no nextLink.
   cycle_link=1     the third page links back to the second (a cycle)
   repeat_link=1    the second page (the one reached through the first link)
                    carries a nextLink identical to the link that led to it.
   Bad/unknown $skiptoken -> 400 {"error": "invalid skiptoken"}.

4. /fhir/Patient?_count=T[&_offset=O]          (T>=1, default 100; O default 0)
       -> {"resourceType": "Bundle", "type": "searchset", "total": n,
           "link": [{"relation": "self", "url": <this request, absolute>},
                    {"relation": "next", "url": <same URL with _offset=O+T>}],
           "entry": [{"fullUrl": "http://<host>/fhir/Patient/<i>",
                      "resource": {"resourceType": "Patient", "id": "<i>",
                                   ...all record(i) fields...}}, ...]}
   The last page has no "next" link.  no_count=1 omits "total".

5. /linked/Patients?page=P&per_page=T          (P>=1 default 1, T>=1 default 100)
       -> bare JSON array of records, plus a header
          Link: <http://host/linked/Patients?page=P+1&per_page=T&...>; rel="next",
                <...page=LAST...>; rel="last", <...page=1...>; rel="first"
                [, <...page=P-1...>; rel="prev"]
   No rel="next" on (or beyond) the last page.  LAST = max(1, ceil(n/T)).
   split_link=1   send each link as its own "Link:" header line.

6. /cursor/Patients?limit=T[&cursor=C]         (T>=1, default 100)
       -> {"data": [...], "meta": {"next_cursor": "<opaque token>" | null}}
   A missing or empty cursor means the first page.  Unknown cursor -> 400
   {"error": "unknown cursor"}.
   repeat_cursor=1  any request that carries a cursor answers with that very
                    cursor as next_cursor, forever (loop-detection test).

7. /single/Patients                            -> {"value": [all n records]}

8. /array/Patients?offset=S&limit=T            (defaults 0 / 100, T>=0)
       -> bare JSON array of records S+1 .. min(S+T, n)

9. /parents/Customers?$skip=S&$top=T           (n customers)
       -> {"@odata.count": n, "value": [{"CustomerId": i, "Name": "Customer i"}]}
   /parents/Customers/<id>/Orders?$skip=S&$top=T&per_parent=M (default 10)
       -> {"@odata.count": M, "value": [records (id-1)*M+S+1 .. (id-1)*M+min(S+T, M)]}
   gone=3,17   those customers are gone: 404 {"error": "customer 3 is gone"}.
   (Fault switches match on the record offset (id-1)*M+S.)

10. /events/Patients?from=F&to=T&$skip=S&$top=T  (F, T ISO 8601 with a zone)
       record i happened at 2024-01-01T00:00:00Z + i hours; the ones in
       [F, T) -> {"@odata.count": k, "value": [...]}, offset paging.

   format=ndjson|csv (/odata, /array, /linked): the page's records alone, no envelope
   (so no "@odata.count"), rendered from the same records:
     ndjson  one json.dumps(record, ensure_ascii=False) per line, each
             ending "\n"; Content-Type application/x-ndjson.
     csv     Python's csv.writer (QUOTE_MINIMAL, lines ending "\r\n"): a
             header row PatientId,Name,BirthDate,Score,Active,CreatedAt,
             Visits,Notes,Meta,Tags,Codes, then one row per record; true/false
             for booleans, JSON text for Meta, Tags and Codes (quoted: they
             hold commas and quotes), an empty unquoted field for null; a
             Name with a quote, a line break or a tab is quoted (the quote
             doubled, the line break inside the field).  An empty page is
             the header row alone.  Content-Type text/csv.
     csv_delimiter=C   the delimiter (default ",").
     csv_null=TEXT     null is written as TEXT (default: an empty field).
     csv_header=NAMES  comma-separated header names to use instead (same
                       order; e.g. "id,full name,..." for column_map tests).
     blank_lines=1     a blank line ("\n" for ndjson, "\r\n" for csv)
                       after every record.
     badline_at=K      the page at offset K has a bad second record: ndjson
                       line 2 is '{"PatientId": 2,' (cut short); the csv row
                       of the second record has one field too many.
     badvalue_at=K     the page at offset K: the third record's BirthDate is
                       "not-a-date" (both formats).

   bad_records=1 (every data endpoint, every format): seven records of the
   data set carry a value a typical target refuses (on_bad_record tests),
   the rest are as always:
       record     7  "BirthDate": "n/a"             (not a date)
       record   150  "BirthDate": "2021-02-30"      (no such day)
       record  2500  "Name": "Patient 2500" + 300 "x" (too long for varchar(200))
       record  5001  "Score": -1                    (fails CHECK (score >= 0))
       record  9999  "Visits": "many"               (not an integer)
       record 14000  "PatientId": null              (fails NOT NULL)
       record 19876  "Visits": 99999999999          (out of range for integer)
   (BAD_RECORDS below; n=20000 holds all seven, 19,993 good records.)

   short_at=K&short_by=M (/odata, /array): the page at offset K holds M
   records fewer than asked, though it is not the last (a server that
   returns fewer rows than asked mid-stream); the next offset is K + T - M.

REQUEST SHAPES BEYOND GET (POST bodies, header cursors, has_more)
======================
The endpoints below take every fault switch above and below (query string);
their "offset" is that of the page's first record.  A POST endpoint wants a
JSON body (Content-Type containing "json", else 415; bad JSON or a field of
the wrong JSON type -> 400 {"error": ...}); GET/other -> 405.

 9. POST /search/Patients  -- a search API paged in the body
       body {"from": S, "size": T, "query": {...}, "search_after": [ID, "kID"]}
       (S, T, ID JSON numbers; defaults 0 / 100; "from" and "search_after"
       are not both allowed).  "query": {"range": {"PatientId": {"lte": L}}}
       (L a number) keeps records 1..min(n, L) only.  search_after [ID,
       "kID"] (exactly that array) gives the records after record ID.
       -> {"took": 1, "hits": {"total": {"value": N', "relation": "eq"},
                               "hits": [records]},
           "next_search_after": [last ID, "k<last ID>"] | null}
       (null once the last record is in this page, or the page is empty).

10. POST /graphql  -- GraphQL-style cursor paging
       body {"query": "... items ...", "variables": {"first": T, "after": C}}
       (T a JSON number, default 100; C a string or null/absent: the first
       page; the query must mention "items").  Unknown cursor -> 400
       {"errors": [{"message": "bad cursor"}]}.
       -> {"data": {"items": {"nodes": [records],
                              "pageInfo": {"endCursor": C' | null,
                                           "hasNextPage": bool}}}}

11. /hcursor/Patients?limit=T[&cursor=C]  -- the next page in headers
       -> {"data": [records]} with headers X-Next-Cursor: C' and X-Next-Url:
       <absolute URL of the next page>, both left out on the last page.
       Unknown cursor -> 400 {"error": "unknown cursor"}.

12. /stripe/customers?limit=T[&starting_after=ID]  -- Stripe-style lists
       -> {"object": "list", "url": "/v1/customers", "has_more": bool,
           "data": [records after ID]}; starting_after must be a record's
       PatientId (1..n), else 400 {"error": {"type": "invalid_request_error",
       "message": "No such customer: ..."}}.

13. /tricky/Things?$skip=S&$top=T   (defaults 0 / 5; n default 10)
       -> {"value": [tricky(S+1) .. tricky(min(S+T, n))]}: values that
       make type inference work (test_schema.py).  tricky(i):
         {"id": i, "amount": i if i <= 5 else i + 0.5,
          "big": i if i <= 5 else 10**20 + i,
          "at": "2024-01-DDT10:00:00Z" (DD = i), "local": "2024-01-DDT10:00:00",
          "mixedAt": with "+02:00" for odd i, without a zone for even i,
          "day": "2024-02-DD", "uid": UUID 00000000-0000-4000-8000-<i, 12 hex>,
          "nothing": null, "sometimes": null for odd i else "s<i>",
          "nested": {"a": i, "b": [i]}, "ints": [i, i + 1],
          "words": ["w<i>", null], "mixedArr": [i, "x"], "emptyArr": [],
          "Name": "N<i>", "name": "n<i>", "Patient ID": "P-<i>",
          "birthDate": "1990-01-DD", "flag": i % 2 == 0,
          "numOrStr": i for odd i else "<i>", "group": i % 2}

14. /drift/Patients?$skip=S&$top=T   (OData-style, as /odata/Patients)
       -> {"value": [records]}, where every record from new_key_at=K on
       (0-based record offset, default 0) also carries the keys new_keys=A,B
       (comma-separated, default "Extra"), each with the value 10 * i; with
       format=ndjson|csv the page in that format (csv: the new keys' columns
       after CSV_FIELDS, empty before K).

   Every data request's method, Content-Type and parsed JSON body show in
   /__stats headers_seen ("method", "Content-Type", "body").

   max_top=K (all endpoints except /single): the server caps the page size at
   K records whatever was asked.  For page-number style endpoints (/paged,
   /linked) the capped size is also used to compute the page's offset, as a
   real server clamping per_page would do; links keep the requested size.

FAULT SWITCHES (query parameters, valid on every data endpoint, per request)
=============
Processing order: count request -> delay_ms -> redirect -> auth (token,
apikey, oauth, apikey_query, basic) -> echo_url -> parameter validation
(400) -> fail_every -> fail_at ->
render (badjson_at / nokey_at / oversize_at) -> gzip -> send (stall, truncate).

  delay_ms=D            sleep D ms before answering (any answer, incl. errors).
  stall_after_bytes=B&stall_ms=D
                        send headers + first B body bytes, flush, sleep D ms
                        (default 1000), send the rest.  Content-Length is
                        correct.  Applies to every response of the request.
  fail_at=K&fail_status=S[&fail_times=M][&retry_after=R]
                        the page whose offset == K answers S (default 500) with
                        {"error": "injected failure"} -- the first M times it
                        is asked (default: always).  Counted per (path, K) in a
                        process-wide dict (cleared by /__reset).  429 and 503
                        carry "Retry-After: R" (default "1").
  fail_every=E&fail_status=S[&retry_after=R]
                        per path, among requests carrying fail_every, every
                        E-th fails once with S; the following request (the
                        retry) always succeeds (so E=1 fails every other one).
  truncate_at=K         page at offset K: full Content-Length sent, but the
                        connection is closed after half of the body.
  badgzip_at=K          page at offset K: "Content-Encoding: gzip" with a
                        body whose gzip trailer (CRC) is wrong: it does not
                        decompress ("incorrect data check"), every time.
  badjson_at=K          page at offset K: 200 with body
                        '{"value": [ {"PatientId": 1,' (invalid JSON).
  nokey_at=K            page at offset K: {"items_wrong_key": [], "other": 1}.
  oversize_at=K&oversize_bytes=B
                        page at offset K gets a "padding" string field ("xxx..")
                        so the (uncompressed) body is >= B bytes.  For bare-array
                        endpoints the field goes into the first record (or a
                        {"padding": ...} element if the page is empty).
  redirect=1            answer 302, Location = same path and query on
                        http://localhost:PORT with redirect=1 removed.
  redirect_status=S     ... with status S instead of 302 (301, 303, 307, 308).
  gone_at=K[&gone_status=S]
                        the page at offset K answers S (default 404) with
                        {"error": "gone"} (response-rule tests: ignore).
  errorbody_at=K[&errorbody_times=M]
                        the page at offset K answers 200 with
                        {"status": "error", "message": "backend unavailable"}
                        -- the first M times (default: always), counted per
                        (path, K) like fail_at (response-rule tests).
  token=XYZ             require "Authorization: Bearer XYZ", else 401
                        {"error": "unauthorized", "detail": ...}.
  apikey=XYZ            require "X-Api-Key: XYZ", else 401 (same body).
  oauth=1               require "Authorization: Bearer <token>" with a token
                        issued by /oauth/token and not yet expired, else 401.
  apikey_query=XYZ      require the query parameter api_key=XYZ, else 401
                        {"error": "unauthorized", "detail": "bad or missing
                        api_key"}.
  apikey_query_sha256=H the same, with H the hex SHA-256 of the key (so that
                        the key itself need not be in the URL).
  basic=USER:PASS       require "Authorization: Basic base64(USER:PASS)",
                        else 401 {"error": "unauthorized", "detail": "bad or
                        missing basic credentials"} with WWW-Authenticate
                        Basic.
  basic_sha256=H        the same, with H the hex SHA-256 of "USER:PASS".
  echo_url=1            (after the auth switches) answer 404 {"error": "no
                        such page", "url": <the request's URL, absolute, as
                        received>}, as some APIs do.
  link_host=H[:P]       /nextlink: absolute links point at http://H[:P]
                        instead of the Host header (a next link to another
                        origin; the other switches, api_key included, are
                        carried as always).
  n=N                   size of the data set (default 20000).
  gzip=1                allow gzip (see above).
  echo_header_as_birthdate=H
                        record 3's BirthDate is the value of request header H
                        (an API that echoes a header into a record).
  echo_headers=1        answer 400 with the request's headers in the body
                        ({"error": "bad request", "request_headers": {...}}),
                        as some APIs do in their error pages.

  Every integer switch must be a non-negative integer, else 400.

RATE LIMITS (query switches; state per bucket, shared by every request that
names the same rate_key, default "default" -- two jobs against one "host")
===========
Checked right after the request is counted, before delay_ms.

  rate_limit=N[&rate_window=W]
                        the bucket accepts N requests per fixed window of W
                        seconds (default 1), windows aligned on the epoch
                        (floor(time / W)); beyond that it answers 429
                        {"error": "rate limited"} with "Retry-After: S"
                        (S = whole seconds to the window's end, rounded up).
                        Every answer of the bucket (200 and 429) carries the
                        quota headers that rate_headers picks:
  rate_headers=x        X-RateLimit-Limit: N, X-RateLimit-Remaining: R,
                        X-RateLimit-Reset: epoch seconds of the window's end
                        (default)
               x_delta  ... X-RateLimit-Reset: seconds to go (rounded up)
               x_epoch_ms ... X-RateLimit-Reset: epoch milliseconds
               ietf     RateLimit-Limit / RateLimit-Remaining /
                        RateLimit-Reset (seconds to go) and
                        RateLimit-Policy: N;w=W
               ietf_dict  RateLimit: limit=N, remaining=R, reset=S
               ietf_list  RateLimit: "default";r=R;t=S and
                        RateLimit-Policy: "default";q=N;w=W
               none     no quota headers (429s still say Retry-After)
  storm=M[&storm_retry_after=S]
                        a "429 storm": the first M requests of the bucket
                        (since /__reset) answer 429 {"error": "storm"} with
                        "Retry-After: S" (default 1) and no other quota header.

The mock records per bucket (GET /__stats -> "rate": {key: ...}):
"events": [[arrival time (epoch seconds, float), status], ...] (last 20000),
"per_window": {"<window start>": requests seen in that 1-second window},
"throttled": 429s sent, "max_in_flight": the most requests of the bucket
being answered at once.  "max_in_flight" at the top level counts all data
requests.

CONTROL ENDPOINTS (not counted as data requests)
=================
  GET /endless?max_mb=M     -> 200, a body that never ends ({"value": ["xx..",
                               ...), until the client hangs up or M MiB
                               (default 2048) are sent; no Content-Length
                               (memory-bound tests).
  GET /__health             -> {"ok": true}
  GET|POST /__reset         -> {"ok": true}; clears request counters,
                               headers_seen, fail_at and fail_every memory.
                               Issued OAuth tokens stay valid.
  GET /__stats              -> {"requests": <data requests since start/reset>,
                                "by_path": {path: count},
                                "headers_seen": [last 50 data requests:
                                   {"path": ..., "query": ...,
                                    "Authorization": value|null,
                                    "X-Api-Key": value|null,
                                    "User-Agent": value|null,
                                    "Host": value|null}],
                                "unknown_paths": [paths asked for that are
                                   no endpoint (a smuggled request, say)],
                                "token_requests": <POSTs to /oauth/token>,
                                "inflight_max": <most data requests being
                                   answered at once, until their answer
                                   starts>,
                                "past_end": <data requests for an offset at
                                   or past the last record (n > 0)>,
                                "fail_at": {"<path>@<K>": times asked}}
  POST /oauth/token         form body grant_type=client_credentials&client_id=
                            ID&client_secret=SECRET (or a JSON object with the
                            same keys, or HTTP Basic auth ID:SECRET)
                            -> {"access_token": "<random>",
                                "token_type": "Bearer", "expires_in": E}
                            E = --token-ttl, or the query switch ?ttl=E on the
                            token URL.  Only etl / s3cret is accepted, else 401
                            {"error": "invalid_client"}; another grant_type ->
                            400 {"error": "unsupported_grant_type"}.
                            grant_type=refresh_token&refresh_token=RT&
                            client_id=etl[&client_secret=s3cret] (client_secret
                            optional, but s3cret when given): any RT that starts
                            with "rt-" and was not rotated away is accepted,
                            else 400 {"error": "invalid_grant"}.  With ?rotate=1
                            on the token URL the answer also carries a new
                            "refresh_token" ("rt-<random>") and RT stops
                            working.  /__stats adds "refresh_grants" (refresh
                            grants answered 200) and "refresh_tokens_issued"
                            (the rotated-to tokens, oldest first); rotated-away
                            tokens stay refused across /__reset.
"""

import argparse
import base64
import binascii
import collections
import csv
import datetime
import gzip
import hashlib
import io
import json
import math
import os
import re
import secrets
import signal
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, unquote_plus, urlsplit

# ---------------------------------------------------------------------------
# The data set
# ---------------------------------------------------------------------------

VARIETY = ["", " Müller", " O'Brien", ' "Quoted"', " line\nbreak",
           " tab\there", " back\\slash", " 日本", " emoji 😀"]
_BIRTH_EPOCH = datetime.date(1950, 1, 1)
_CREATED_EPOCH = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)

DEFAULT_N = 20000
MAX_N = 10_000_000
DEFAULT_PAGE = 100


# bad_records=1: record number -> the bad value it carries (see DATA SET)
BAD_RECORDS = {
    7: ("BirthDate", "n/a"),
    150: ("BirthDate", "2021-02-30"),
    2500: ("Name", "Patient 2500" + "x" * 300),
    5001: ("Score", -1),
    9999: ("Visits", "many"),
    14000: ("PatientId", None),
    19876: ("Visits", 99999999999),
}

# the switches of the request this thread answers that record() obeys
_REQUEST = threading.local()


def record(i):
    """Return record number i (1-based) of the deterministic data set."""
    rec = _record(i)
    if getattr(_REQUEST, "bad_records", False) and i in BAD_RECORDS:
        key, value = BAD_RECORDS[i]
        rec[key] = value
    echoed = getattr(_REQUEST, "echo_birthdate", None)
    if echoed is not None and i == 3:
        rec["BirthDate"] = echoed
    return rec


def _record(i):
    return {
        "PatientId": i,
        "Name": "Patient " + str(i) + VARIETY[(i - 1) % len(VARIETY)],
        "BirthDate": (_BIRTH_EPOCH
                      + datetime.timedelta(days=(i * 37) % 20000)).isoformat(),
        "Score": round((i * 7919 % 100000) / 100, 2),
        "Active": i % 3 != 0,
        "CreatedAt": (_CREATED_EPOCH + datetime.timedelta(seconds=i * 61)
                      ).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "Visits": i % 17,
        "Notes": None if i % 5 == 0 else "note " + str(i),
        "Meta": {"source": "mock", "bucket": i % 10},
        "Tags": ["t" + str(i % 3), 'q"uote', None],
        "Codes": [i % 7, i % 11],
    }


def records(offset, count, n):
    """Records offset+1 .. min(offset+count, n): O(page size)."""
    end = min(offset + count, n)
    return [record(i) for i in range(offset + 1, end + 1)]


# ---------------------------------------------------------------------------
# Opaque tokens (skiptoken / cursor): base64url("<kind>:<offset>"), no '='
# ---------------------------------------------------------------------------

def encode_token(kind, offset):
    raw = ("%s:%d" % (kind, offset)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(kind, tok, n):
    """Offset encoded in tok, or None if tok is not a valid token of kind."""
    try:
        raw = base64.urlsafe_b64decode(tok + "=" * (-len(tok) % 4)).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    m = re.fullmatch(re.escape(kind) + r":(\d+)", raw)
    if not m:
        return None
    off = int(m.group(1))
    return off if off <= n else None


# ---------------------------------------------------------------------------
# Process-wide mutable state (counters, fault memory, OAuth tokens)
# ---------------------------------------------------------------------------

class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.generation = 0         # bumped by reset(): see _answered()
        self.tokens = {}            # access_token -> expiry (time.monotonic())
        self.rotated_away = set()   # refresh tokens that no longer work
        self.reset()

    def reset(self):
        # Caller holds the lock (or we are in __init__).
        self.generation = getattr(self, "generation", 0) + 1
        self.requests = 0
        self.by_path = {}
        self.headers_seen = collections.deque(maxlen=50)
        self.token_requests = 0
        self.refresh_grants = 0
        self.refresh_tokens_issued = []
        self.fail_at_counts = {}    # (path, K) -> times asked
        self.errorbody_counts = {}  # (path, K) -> times asked
        self.fail_every_counts = {}  # path -> requests carrying fail_every
        self.fail_every_last = {}   # path -> did the previous one fail?
        self.unknown_paths = []
        self.inflight = 0
        self.inflight_max = 0
        self.past_end = 0
        self.rate = {}              # rate_key -> RateBucket
        self.in_flight = 0
        self.max_in_flight = 0

    def bucket(self, key):
        # Caller holds the lock.
        b = self.rate.get(key)
        if b is None:
            b = self.rate[key] = RateBucket()
        return b


class RateBucket:
    """What one rate_key's requests did: see RATE LIMITS in the docstring."""

    def __init__(self):
        self.events = collections.deque(maxlen=20000)   # [t, status]
        self.per_window = {}        # floor(t) -> requests seen
        self.window_counts = {}     # (W, floor(t / W)) -> requests accepted
        self.throttled = 0
        self.storm_sent = 0
        self.in_flight = 0
        self.max_in_flight = 0

    def as_json(self):
        return {"events": [list(e) for e in self.events],
                "per_window": {str(k): v for k, v in sorted(self.per_window.items())},
                "throttled": self.throttled,
                "max_in_flight": self.max_in_flight}


class BadRequest(Exception):
    """Raised while parsing parameters -> 400 {"error": message}."""


class Gone(Exception):
    """A parent that no longer exists -> 404 {"error": message}."""


# ---------------------------------------------------------------------------
# Query string helper
# ---------------------------------------------------------------------------

_INT_RE = re.compile(r"[0-9]+")


class Query:
    def __init__(self, raw):
        self.raw = raw
        self.d = {}
        for k, v in parse_qsl(raw, keep_blank_values=True):
            self.d.setdefault(k, v)      # first occurrence wins

    def has(self, k):
        return k in self.d

    def get(self, k, default=None):
        return self.d.get(k, default)

    def flag(self, k):
        """A boolean switch: on when given as 1/true/yes/on."""
        return self.d.get(k, "").strip().lower() in ("1", "true", "yes", "on")

    def int(self, k, default=None, minimum=0, maximum=None):
        """Non-negative integer parameter; BadRequest on anything else."""
        v = self.d.get(k)
        if v is None:
            return default
        v = v.strip()
        if not _INT_RE.fullmatch(v):
            raise BadRequest("invalid value for %s: %r (expected a "
                             "non-negative integer)" % (k, v))
        iv = int(v)
        if iv < minimum or (maximum is not None and iv > maximum):
            raise BadRequest("value for %s out of range: %d" % (k, iv))
        return iv

    def rebuilt(self, drop=(), add=(), add_first=True):
        """The raw query with parameters named in drop removed (raw encoding
        of the others preserved) and (name, value) pairs of add inserted."""
        keep = [p for p in self.raw.split("&")
                if p and unquote_plus(p.split("=", 1)[0]) not in drop]
        new = ["%s=%s" % (quote(str(k), safe="$"), quote(str(v), safe=""))
               for k, v in add]
        return "&".join(new + keep if add_first else keep + new)


# ---------------------------------------------------------------------------
# Data endpoints.  Each parses its parameters (raising BadRequest) and returns
# (offset, render, is_array) where render() -> (json_obj, [extra headers]).
# ---------------------------------------------------------------------------

def _short(q, offset, size):
    """Apply the short_at=K&short_by=M switch."""
    if q.has("short_at") and q.int("short_at") == offset:
        return max(0, size - q.int("short_by", 1))
    return size


def _cap(q, size):
    """Apply the max_top=K switch."""
    if q.has("max_top"):
        return min(size, q.int("max_top", minimum=1))
    return size


def ep_odata(h, q, n):
    skip_name = q.get("skip_name") or "$skip"
    top_name = q.get("top_name") or "$top"
    skip = q.int(skip_name, 0)
    top = _short(q, skip, _cap(q, q.int(top_name, DEFAULT_PAGE)))
    no_count = q.flag("no_count")

    def render():
        obj = {}
        if not no_count:
            obj["@odata.count"] = n
        obj["value"] = records(skip, top, n)
        return obj, []
    return skip, render, False


def ep_paged(h, q, n):
    first = q.int("first_page", 1)
    page = q.int("page", first, minimum=first)
    per = _cap(q, q.int("per_page", DEFAULT_PAGE, minimum=1))
    offset = (page - first) * per
    no_count = q.flag("no_count")

    def render():
        obj = {}
        if not no_count:
            obj["total"] = n
        obj["page"] = page
        obj["per_page"] = per
        obj["items"] = records(offset, per, n)
        return obj, []
    return offset, render, False


def ep_nextlink(h, q, n):
    top = q.int("$top", DEFAULT_PAGE, minimum=1)
    eff = _cap(q, top)
    tok = q.get("$skiptoken")
    if tok is None:
        offset = 0
    else:
        offset = decode_token("skip", tok, n)
        if offset is None:
            raise BadRequest("invalid skiptoken")

    def link(off):
        qs = q.rebuilt(drop=("$skiptoken", "$top"),
                       add=(("$skiptoken", encode_token("skip", off)),
                            ("$top", top)))
        if q.flag("relative"):
            return h.path_only.rsplit("/", 1)[-1] + "?" + qs
        if q.has("link_host"):
            return "http://" + q.get("link_host") + h.path_only + "?" + qs
        return h.base_url() + h.path_only + "?" + qs

    def render():
        obj = {"value": records(offset, eff, n)}
        end = min(offset + eff, n)
        if q.flag("repeat_link") and tok is not None and offset == eff:
            # second page: repeat the link that led here
            obj["@odata.nextLink"] = link(offset)
        elif q.flag("cycle_link") and offset == 2 * eff:
            # third page: back to the second (A -> B -> C -> B ...)
            obj["@odata.nextLink"] = link(eff)
        elif end < n:
            obj["@odata.nextLink"] = link(end)
        elif q.flag("trailing_empty") and offset < n:
            obj["@odata.nextLink"] = link(n)   # leads to an empty page
        return obj, []
    return offset, render, False


def ep_fhir(h, q, n):
    count = _cap(q, q.int("_count", DEFAULT_PAGE, minimum=1))
    offset = q.int("_offset", 0)
    no_count = q.flag("no_count")

    def render():
        base = h.base_url()
        self_url = base + h.path_only + ("?" + q.raw if q.raw else "")
        links = [{"relation": "self", "url": self_url}]
        if offset + count < n:
            qs = q.rebuilt(drop=("_offset",),
                           add=(("_offset", offset + count),), add_first=False)
            links.append({"relation": "next",
                          "url": base + h.path_only + "?" + qs})
        entries = []
        for rec in records(offset, count, n):
            res = {"resourceType": "Patient", "id": str(rec["PatientId"])}
            res.update(rec)
            entries.append({"fullUrl": "%s/fhir/Patient/%d"
                            % (base, rec["PatientId"]),
                            "resource": res})
        obj = {"resourceType": "Bundle", "type": "searchset"}
        if not no_count:
            obj["total"] = n
        obj["link"] = links
        obj["entry"] = entries
        return obj, []
    return offset, render, False


def ep_linked(h, q, n):
    per_req = q.int("per_page", DEFAULT_PAGE, minimum=1)
    per = _cap(q, per_req)
    page = q.int("page", 1, minimum=1)
    offset = (page - 1) * per
    last = max(1, math.ceil(n / per))

    def render():
        def url(p):
            qs = q.rebuilt(drop=("page", "per_page"),
                           add=(("page", p), ("per_page", per_req)))
            return h.base_url() + h.path_only + "?" + qs
        links = []
        if page < last:
            links.append('<%s>; rel="next"' % url(page + 1))
        links.append('<%s>; rel="last"' % url(last))
        links.append('<%s>; rel="first"' % url(1))
        if page > 1:
            links.append('<%s>; rel="prev"' % url(min(page - 1, last)))
        if q.flag("split_link"):
            headers = [("Link", v) for v in links]
        else:
            headers = [("Link", ", ".join(links))]
        return records(offset, per, n), headers
    return offset, render, True


def ep_cursor(h, q, n):
    limit = _cap(q, q.int("limit", DEFAULT_PAGE, minimum=1))
    cur = q.get("cursor") or None          # empty cursor = first page
    if cur is None:
        offset = 0
    else:
        offset = decode_token("cursor", cur, n)
        if offset is None:
            raise BadRequest("unknown cursor")

    def render():
        if q.flag("repeat_cursor") and cur is not None:
            nxt = cur                       # the same cursor, forever
        elif offset + limit < n:
            nxt = encode_token("cursor", offset + limit)
        else:
            nxt = None
        return {"data": records(offset, limit, n),
                "meta": {"next_cursor": nxt}}, []
    return offset, render, False


def ep_single(h, q, n):
    return 0, (lambda: ({"value": records(0, n, n)}, [])), False


def ep_array(h, q, n):
    offset = q.int("offset", 0)
    limit = _short(q, offset, _cap(q, q.int("limit", DEFAULT_PAGE)))
    return offset, (lambda: (records(offset, limit, n), [])), True


def tricky(i):
    """Record i of /tricky/Things: values that make type inference work."""
    dd = "%02d" % (1 + (i - 1) % 28)
    return {
        "id": i,
        "amount": i if i <= 5 else i + 0.5,
        "big": i if i <= 5 else 10 ** 20 + i,
        "at": "2024-01-%sT10:00:00Z" % dd,
        "local": "2024-01-%sT10:00:00" % dd,
        "mixedAt": "2024-01-%sT10:00:00%s" % (dd, "+02:00" if i % 2 else ""),
        "day": "2024-02-%s" % dd,
        "uid": "00000000-0000-4000-8000-%012x" % i,
        "nothing": None,
        "sometimes": None if i % 2 else "s%d" % i,
        "nested": {"a": i, "b": [i]},
        "ints": [i, i + 1],
        "words": ["w%d" % i, None],
        "mixedArr": [i, "x"],
        "emptyArr": [],
        "Name": "N%d" % i,
        "name": "n%d" % i,
        "Patient ID": "P-%d" % i,
        "birthDate": "1990-01-%s" % dd,
        "flag": i % 2 == 0,
        "numOrStr": i if i % 2 else str(i),
        "group": i % 2,
    }


def ep_tricky(h, q, n):
    skip = q.int("$skip", 0)
    top = q.int("$top", 5)
    n = q.int("n", 10)
    return skip, (lambda: ({"value": [tricky(i) for i in range(skip + 1, min(skip + top, n) + 1)]},
                           [])), False


def drift_keys(q):
    """The keys /drift/Patients adds, and the offset they start at."""
    return (q.get("new_keys") or "Extra").split(","), q.int("new_key_at", 0)


def drift_records(q, offset, count, n):
    keys, at = drift_keys(q)
    recs = records(offset, count, n)
    for k, r in enumerate(recs):
        if offset + k >= at:
            for key in keys:
                r[key] = 10 * r["PatientId"]
    return recs


def ep_drift(h, q, n):
    skip = q.int("$skip", 0)
    top = q.int("$top", DEFAULT_PAGE)
    return skip, (lambda: ({"value": drift_records(q, skip, top, n)}, [])), False


def ep_customers(h, q, n):
    """/parents/Customers: n customers, OData-style offset paging."""
    skip = q.int("$skip", 0)
    top = q.int("$top", DEFAULT_PAGE)

    def render():
        rows = [{"CustomerId": i, "Name": "Customer %d" % i}
                for i in range(skip + 1, min(skip + top, n) + 1)]
        return {"@odata.count": n, "value": rows}, []
    return skip, render, False


def ep_orders(customer, h, q, n):
    """/parents/Customers/<id>/Orders: the customer's per_parent records
    (patients (id-1)*per_parent+1 .. id*per_parent), offset paging."""
    per = q.int("per_parent", 10)
    skip = q.int("$skip", 0)
    top = q.int("$top", DEFAULT_PAGE)
    gone = [int(x) for x in (q.get("gone") or "").split(",") if x.strip()]
    if customer in gone:
        raise Gone("customer %d is gone" % customer)
    base = (customer - 1) * per

    def render():
        rows = [record(base + i) for i in range(skip + 1, min(skip + top, per) + 1)]
        return {"@odata.count": per, "value": rows}, []
    return base + skip, render, False


EVENTS_EPOCH = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


def ep_events(h, q, n):
    """/events/Patients?from=..&to=..: patient i happened at 2024-01-01T00Z
    + i hours; the ones in [from, to), OData-style offset paging."""
    def when(name):
        text = q.get(name)
        if text is None:
            raise BadRequest("%s is required (ISO 8601, e.g. 2024-01-02T00:00:00Z)" % name)
        try:
            t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest("%s is not an ISO 8601 timestamp: %s" % (name, text))
        if t.tzinfo is None:
            raise BadRequest("%s has no time zone: %s" % (name, text))
        return (t - EVENTS_EPOCH).total_seconds() / 3600.0
    lo, hi = when("from"), when("to")
    first = max(1, int(-(-lo // 1)))
    last = min(n, int(-(-hi // 1)) - 1)
    count = max(0, last - first + 1)
    skip = q.int("$skip", 0)
    top = q.int("$top", DEFAULT_PAGE)

    def render():
        rows = [record(first + i) for i in range(skip, min(skip + top, count))]
        return {"@odata.count": count, "value": rows}, []
    return first - 1 + skip, render, False


def _json_int(obj, key, default, minimum=0):
    """A member that must be a JSON number (an int), else BadRequest."""
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise BadRequest("%s must be a JSON integer >= %d, not %r" % (key, minimum, v))
    return v


def ep_search(h, q, n):
    body = h.json_body
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    size = _json_int(body, "size", DEFAULT_PAGE)
    start = _json_int(body, "from", 0)
    rng = (((body.get("query") or {}).get("range") or {}).get("PatientId") or {})
    if "lte" in rng:
        n = min(n, _json_int(rng, "lte", 0))
    after = body.get("search_after")
    if after is not None:
        if "from" in body and start:
            raise BadRequest("from and search_after together")
        if not (isinstance(after, list) and len(after) == 2 and isinstance(after[0], int)
                and not isinstance(after[0], bool) and after[1] == "k%d" % after[0]):
            raise BadRequest("search_after must be [ID, \"kID\"], not %r" % (after,))
        start = after[0]
    size = _short(q, start, _cap(q, size))

    def render():
        recs = records(start, size, n)
        last = recs[-1]["PatientId"] if recs else None
        nxt = [last, "k%d" % last] if recs and last < n else None
        return {"took": 1,
                "hits": {"total": {"value": n, "relation": "eq"}, "hits": recs},
                "next_search_after": nxt}, []
    return start, render, False


def ep_graphql(h, q, n):
    body = h.json_body
    if not isinstance(body, dict) or "items" not in str(body.get("query", "")):
        raise BadRequest("a GraphQL body {\"query\": \"... items ...\", \"variables\": {...}}")
    variables = body.get("variables") or {}
    if not isinstance(variables, dict):
        raise BadRequest("variables must be an object")
    first = _cap(q, _json_int(variables, "first", DEFAULT_PAGE, minimum=1))
    after = variables.get("after")
    if after is None:
        offset = 0
    else:
        offset = decode_token("gql", after, n) if isinstance(after, str) else None
        if offset is None:
            raise BadRequest("bad cursor")

    def render():
        recs = records(offset, first, n)
        end = offset + len(recs)
        return {"data": {"items": {"nodes": recs, "pageInfo": {
            "endCursor": encode_token("gql", end) if recs else None,
            "hasNextPage": end < n}}}}, []
    return offset, render, False


def ep_hcursor(h, q, n):
    limit = _cap(q, q.int("limit", DEFAULT_PAGE, minimum=1))
    cur = q.get("cursor") or None
    if cur is None:
        offset = 0
    else:
        offset = decode_token("hcursor", cur, n)
        if offset is None:
            raise BadRequest("unknown cursor")

    def render():
        headers = []
        if offset + limit < n:
            tok = encode_token("hcursor", offset + limit)
            qs = q.rebuilt(drop=("cursor",), add=(("cursor", tok),), add_first=False)
            headers = [("X-Next-Cursor", tok),
                       ("X-Next-Url", h.base_url() + h.path_only + "?" + qs)]
        return {"data": records(offset, limit, n)}, headers
    return offset, render, False


def ep_stripe(h, q, n):
    limit = _cap(q, q.int("limit", DEFAULT_PAGE, minimum=1))
    if q.has("starting_after"):
        after = q.get("starting_after")
        if not _INT_RE.fullmatch(after or "") or not 1 <= int(after) <= n:
            raise BadRequest({"type": "invalid_request_error",
                              "message": "No such customer: %r" % after})
        offset = int(after)
    else:
        offset = 0

    def render():
        recs = records(offset, limit, n)
        return {"object": "list", "url": "/v1/customers",
                "has_more": offset + len(recs) < n, "data": recs}, []
    return offset, render, False


POST_ENDPOINTS = {
    "/search/Patients": ep_search,
    "/graphql": ep_graphql,
}

DATA_ENDPOINTS = {
    "/events/Patients": ep_events,
    "/parents/Customers": ep_customers,
    "/odata/Patients": ep_odata,
    "/paged/Patients": ep_paged,
    "/nextlink/Patients": ep_nextlink,
    "/fhir/Patient": ep_fhir,
    "/linked/Patients": ep_linked,
    "/cursor/Patients": ep_cursor,
    "/single/Patients": ep_single,
    "/array/Patients": ep_array,
    "/hcursor/Patients": ep_hcursor,
    "/stripe/customers": ep_stripe,
    "/tricky/Things": ep_tricky,
    "/drift/Patients": ep_drift,
}

BAD_JSON_BODY = b'{"value": [ {"PatientId": 1,'

CSV_FIELDS = ["PatientId", "Name", "BirthDate", "Score", "Active", "CreatedAt",
              "Visits", "Notes", "Meta", "Tags", "Codes"]


def _csv_text(v, null):
    if v is None:
        return null
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def render_records(fmt, recs, q, offset):
    """format=ndjson|csv: the page's records as that format's body (bytes),
    and its Content-Type."""
    bad_line = q.has("badline_at") and q.int("badline_at") == offset
    if q.has("badvalue_at") and q.int("badvalue_at") == offset and len(recs) >= 3:
        recs = [dict(r) for r in recs]
        recs[2]["BirthDate"] = "not-a-date"
    blank = q.flag("blank_lines")
    if fmt == "ndjson":
        lines = []
        for k, r in enumerate(recs):
            lines.append('{"PatientId": %d,' % r["PatientId"] if bad_line and k == 1
                         else json.dumps(r, ensure_ascii=False))
            if blank:
                lines.append("")
        text = "".join(line + "\n" for line in lines)
        return text.encode(), "application/x-ndjson; charset=utf-8"
    out = io.StringIO()
    w = csv.writer(out, delimiter=q.get("csv_delimiter") or ",", lineterminator="\r\n")
    null = q.get("csv_null") or ""
    header = q.get("csv_header")
    # /drift/Patients: the new keys' columns, from the first record that has them
    fields = CSV_FIELDS + [k for k in drift_keys(q)[0] if any(k in r for r in recs)] \
        if q.has("new_keys") or q.has("new_key_at") else CSV_FIELDS
    w.writerow(header.split(",") if header else fields)
    for k, r in enumerate(recs):
        row = [_csv_text(r.get(f), null) for f in fields]
        if bad_line and k == 1:
            row.append("extra")
        w.writerow(row)
        if blank:
            out.write("\r\n")
    return out.getvalue().encode(), "text/csv; charset=utf-8"


# ---------------------------------------------------------------------------
# HTTP handler
# ---------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"       # keep-alive
    server_version = "mock_api/1.0"
    timeout = 300                       # drop idle keep-alive connections

    # -- logging ------------------------------------------------------------
    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("%s - [%s] %s\n" % (
                self.address_string(), self.log_date_time_string(),
                fmt % args))

    # -- helpers ------------------------------------------------------------
    def base_url(self):
        """http://<Host header> (fallback: the bound address)."""
        host = self.headers.get("Host")
        if not host:
            a = self.server.server_address
            host = "%s:%d" % (a[0], a[1])
        return "http://" + host

    def _accepts_gzip(self):
        ae = self.headers.get("Accept-Encoding", "")
        return any(t.split(";")[0].strip().lower() == "gzip"
                   for t in ae.split(","))

    def send_raw(self, status, body, headers=(), stall=None, truncate=False,
                 content_type="application/json; charset=utf-8"):
        """Send status/headers/body (bytes).  Gzip if allowed for this
        request; stall=(bytes, ms) pauses mid-body; truncate closes the
        connection after half of the body (Content-Length stays full)."""
        self._answered()
        hdrs = [("Content-Type", content_type)]
        if self.gzip_ok or getattr(self, "bad_gzip", False):
            body = gzip.compress(body, mtime=0)
            if getattr(self, "bad_gzip", False):
                # the CRC of the trailer, wrong
                body = body[:-8] + bytes(b ^ 0xFF for b in body[-8:-4]) + body[-4:]
                self.bad_gzip = False
            hdrs.append(("Content-Encoding", "gzip"))
            hdrs.append(("Vary", "Accept-Encoding"))
        hdrs.append(("Content-Length", str(len(body))))
        hdrs.extend(headers)
        self.last_status = status
        self.send_response(status)
        for k, v in hdrs:
            self.send_header(k, v)
        self.end_headers()
        self.headers_sent = True
        if self.command == "HEAD":
            return
        data = body
        if truncate:
            data = body[:len(body) // 2]
            self.close_connection = True   # drop the connection afterwards
        if stall is not None:
            nbytes, ms = stall
            self.wfile.write(data[:nbytes])
            self.wfile.flush()
            time.sleep(ms / 1000.0)
            data = data[nbytes:]
        if data:
            self.wfile.write(data)
        self.wfile.flush()

    def send_json(self, status, obj, headers=(), **kw):
        self.send_raw(status, json.dumps(obj, ensure_ascii=False).encode(),
                      headers, **kw)

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True   # not supported; don't reuse
            return b""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    # -- dispatch -----------------------------------------------------------
    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def _dispatch(self):
        self.headers_sent = False
        self.counted_in_flight = False
        self.gzip_ok = False
        self.bad_gzip = False
        try:
            url = urlsplit(self.path)
            self.path_only = url.path
            q = Query(url.query)
            body = self._read_body() if self.command == "POST" else b""
            path = url.path
            if path == "/__health":
                self.send_json(200, {"ok": True})
            elif path == "/__reset":
                with self.server.state.lock:
                    self.server.state.reset()
                self.send_json(200, {"ok": True})
            elif path == "/__stats":
                self._stats()
            elif path == "/__revoke_tokens":
                # every OAuth token issued so far stops working (-> 401)
                with self.server.state.lock:
                    self.server.state.tokens.clear()
                self.send_json(200, {"ok": True})
            elif path == "/oauth/token":
                if self.command != "POST":
                    self.send_json(405, {"error": "use POST"},
                                   [("Allow", "POST")])
                else:
                    self._oauth_token(q, body)
            elif path == "/endless":
                self._endless(q)
            elif path.startswith("/fixture/"):
                self._fixture(path[len("/fixture/"):], q)
            elif re.fullmatch(r"/parents/Customers/\d+/Orders", path):
                customer = int(path.split("/")[3])
                self._data("/parents/Customers/*/Orders", q,
                           lambda h, q, n: ep_orders(customer, h, q, n))
            elif path in POST_ENDPOINTS:
                self.json_body = None
                if self.command != "POST":
                    self.send_json(405, {"error": "method not allowed"},
                                   [("Allow", "POST")])
                elif "json" not in self.headers.get("Content-Type", "").lower():
                    self.send_json(415, {"error": "Content-Type must be JSON, not %r"
                                         % self.headers.get("Content-Type")})
                else:
                    try:
                        self.json_body = json.loads(body.decode("utf-8"))
                    except ValueError:
                        self.send_json(400, {"error": "the body is not JSON"})
                    else:
                        self._data(path, q, POST_ENDPOINTS[path])
            elif path in DATA_ENDPOINTS:
                self.json_body = None
                if self.command not in ("GET", "HEAD"):
                    self.send_json(405, {"error": "method not allowed"},
                                   [("Allow", "GET")])
                else:
                    self._data(path, q, DATA_ENDPOINTS[path])
            else:
                with self.server.state.lock:
                    self.server.state.unknown_paths.append(path)
                self.send_json(404, {"error": "not found: " + path})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:               # bug in the mock itself
            traceback.print_exc(file=sys.stderr)
            if not self.headers_sent:
                try:
                    self.send_json(500, {"error": "mock_api internal error: "
                                                  + repr(e)})
                except OSError:
                    pass
            self.close_connection = True

    # -- fixtures -----------------------------------------------------------
    def _fixture(self, name, q):
        """/fixture/NAME?$skip=N: test/fixtures/NAME.json as it is (bytes
        untouched) for the first page, an empty OData page after it.
        NAME.csv and NAME.ndjson are served as they are too (any $skip)."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+(\.(csv|ndjson))?", name):
            self.send_json(400, {"error": "bad fixture name"})
            return
        fixture = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                               name if "." in name else name + ".json")
        if "." in name and os.path.exists(fixture):
            with open(fixture, "rb") as f:
                self.send_raw(200, f.read(), content_type="text/csv" if name.endswith(".csv")
                              else "application/x-ndjson")
            return
        if not os.path.exists(fixture):
            self.send_json(404, {"error": "no fixture " + name})
            return
        if (q.get("$skip") or "0") != "0":
            self.send_json(200, {"value": []})
            return
        with open(fixture, "rb") as f:
            self.send_raw(200, f.read())

    def _endless(self, q):
        """/endless?max_mb=M: a 200 whose body never ends (a JSON array that
        goes on), until the client hangs up or M MiB (default 2048) are
        sent; no Content-Length, the connection closes after it."""
        limit = q.int("max_mb", 2048) * 1024 * 1024
        chunk = b'"' + b"x" * 65530 + b'",'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        self.headers_sent = True
        self.close_connection = True
        sent = 0
        self.wfile.write(b'{"value": [')
        while sent < limit:
            self.wfile.write(chunk)
            sent += len(chunk)
        self.wfile.flush()

    # -- control endpoints --------------------------------------------------
    def _stats(self):
        st = self.server.state
        with st.lock:
            obj = {"requests": st.requests,
                   "by_path": dict(st.by_path),
                   "headers_seen": list(st.headers_seen),
                   "unknown_paths": list(st.unknown_paths),
                   "token_requests": st.token_requests,
                   "refresh_grants": st.refresh_grants,
                   "refresh_tokens_issued": list(st.refresh_tokens_issued),
                   "inflight_max": st.inflight_max,
                   "past_end": st.past_end,
                   "fail_at": {"%s@%d" % k: v
                               for k, v in st.fail_at_counts.items()},
                   "rate": {k: b.as_json() for k, b in st.rate.items()},
                   "max_in_flight": st.max_in_flight}
        self.send_json(200, obj)

    def _oauth_token(self, q, body):
        st = self.server.state
        with st.lock:
            st.token_requests += 1
        ctype = self.headers.get("Content-Type", "").lower()
        params = {}
        text = body.decode("utf-8", "replace")
        if "json" in ctype:
            try:
                obj = json.loads(text or "{}")
                if isinstance(obj, dict):
                    params = {str(k): str(v) for k, v in obj.items()}
            except ValueError:
                return self.send_json(400, {"error": "invalid_request"})
        else:
            params = dict(parse_qsl(text, keep_blank_values=True))
        cid = params.get("client_id")
        secret = params.get("client_secret")
        auth = self.headers.get("Authorization", "")
        if cid is None and auth[:6].lower() == "basic ":
            try:
                dec = base64.b64decode(auth[6:].strip()).decode()
                cid, _, secret = dec.partition(":")
            except (binascii.Error, ValueError, UnicodeDecodeError):
                cid = secret = None
        if params.get("grant_type") == "refresh_token":
            return self._refresh_grant(q, params, cid, secret)
        if params.get("grant_type") != "client_credentials":
            return self.send_json(400, {"error": "unsupported_grant_type"})
        if cid != "etl" or secret != "s3cret":
            return self.send_json(401, {"error": "invalid_client"},
                                  [("WWW-Authenticate", 'Basic realm="mock"')])
        try:
            ttl = q.int("ttl", self.server.token_ttl)
        except BadRequest as e:
            return self.send_json(400, {"error": str(e)})
        tok = secrets.token_urlsafe(24)
        with st.lock:
            st.tokens[tok] = time.monotonic() + ttl
        self.send_json(200, {"access_token": tok, "token_type": "Bearer",
                             "expires_in": ttl},
                       [("Cache-Control", "no-store")])

    def _refresh_grant(self, q, params, cid, secret):
        """grant_type=refresh_token (see the docstring): rotate=1 on the
        token URL issues a new refresh token and retires the one used."""
        st = self.server.state
        if cid != "etl" or secret not in (None, "s3cret"):
            return self.send_json(401, {"error": "invalid_client"},
                                  [("WWW-Authenticate", 'Basic realm="mock"')])
        rt = params.get("refresh_token") or ""
        try:
            ttl = q.int("ttl", self.server.token_ttl)
        except BadRequest as e:
            return self.send_json(400, {"error": str(e)})
        answer = {"token_type": "Bearer", "expires_in": ttl}
        with st.lock:
            if not rt.startswith("rt-") or rt in st.rotated_away:
                return self.send_json(400, {"error": "invalid_grant",
                                            "error_description": "the refresh token is invalid, expired or was rotated"})
            tok = secrets.token_urlsafe(24)
            st.tokens[tok] = time.monotonic() + ttl
            answer["access_token"] = tok
            if q.flag("rotate"):
                st.rotated_away.add(rt)
                answer["refresh_token"] = "rt-" + secrets.token_urlsafe(18)
                st.refresh_tokens_issued.append(answer["refresh_token"])
            st.refresh_grants += 1
        self.send_json(200, answer, [("Cache-Control", "no-store")])

    # -- data endpoints -----------------------------------------------------
    def _unauthorized(self, detail, scheme="Bearer"):
        self.send_json(401, {"error": "unauthorized", "detail": detail},
                       [("WWW-Authenticate", scheme + ' realm="mock"')])

    def _query_key_ok(self, q):
        """apikey_query / apikey_query_sha256: the query's api_key."""
        key = q.get("api_key")
        if q.has("apikey_query") and key != q.get("apikey_query"):
            return False
        if q.has("apikey_query_sha256") and (
                key is None or hashlib.sha256(key.encode()).hexdigest() != q.get("apikey_query_sha256")):
            return False
        return True

    def _basic_ok(self, q):
        """basic / basic_sha256: the request's Basic credentials."""
        auth = self.headers.get("Authorization", "")
        scheme, _, value = auth.strip().partition(" ")
        try:
            pair = base64.b64decode(value.strip(), validate=True).decode() \
                if scheme.lower() == "basic" else None
        except (binascii.Error, ValueError, UnicodeDecodeError):
            pair = None
        if q.has("basic") and pair != q.get("basic"):
            return False
        if q.has("basic_sha256") and (
                pair is None or hashlib.sha256(pair.encode()).hexdigest() != q.get("basic_sha256")):
            return False
        return True

    def _bearer(self):
        auth = self.headers.get("Authorization", "")
        scheme, _, value = auth.strip().partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None

    def _inject_failure(self, q, status):
        hdrs = []
        if status in (429, 503):
            hdrs.append(("Retry-After", q.get("retry_after") or "1"))
        self.send_json(status, {"error": "injected failure"}, hdrs)

    def _data(self, path, q, endpoint):
        """A data request, counted in its rate bucket while it is answered."""
        st = self.server.state
        key = q.get("rate_key") or "default"
        with st.lock:
            b = st.bucket(key)
            event = [time.time(), None]
            b.events.append(event)
            sec = int(event[0])
            b.per_window[sec] = b.per_window.get(sec, 0) + 1
            b.in_flight += 1
            b.max_in_flight = max(b.max_in_flight, b.in_flight)
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
            st.inflight += 1
            st.inflight_max = max(st.inflight_max, st.inflight)
        self.counted_in_flight = True
        self.counted_generation = st.generation
        self.rate_bucket = b
        self.last_status = None
        _REQUEST.bad_records = q.flag("bad_records")
        _REQUEST.echo_birthdate = (self.headers.get(q.get("echo_header_as_birthdate"), "")
                                   if q.has("echo_header_as_birthdate") else None)
        try:
            refused = self._rate_check(q, b, event[0])
            if not refused:
                self._data_answer(path, q, endpoint)
        finally:
            self._answered()
            with st.lock:
                event[1] = self.last_status

    def _answered(self):
        """A data request is no longer in flight (the in-flight counts) once
        its answer starts: the client may send its next request as soon as
        it has read this answer, before this thread gets to count it out."""
        if getattr(self, "counted_in_flight", False):
            self.counted_in_flight = False
            st = self.server.state
            with st.lock:
                # A request counted before a /__reset (an earlier test's
                # run still being answered) must not count out of the new
                # counters: they would go negative and hide this test's.
                if self.counted_generation == st.generation:
                    st.inflight -= 1
                    st.in_flight -= 1
                self.rate_bucket.in_flight -= 1

    def _rate_check(self, q, b, now):
        """storm / rate_limit: answer 429 (True) or let it through with the
        quota headers to send (False)."""
        st = self.server.state
        self.rate_headers = []
        try:
            storm = q.int("storm", 0)
            storm_after = q.int("storm_retry_after", 1)
            limit = q.int("rate_limit")
            window = q.int("rate_window", 1, minimum=1)
        except BadRequest as e:
            self.send_json(400, {"error": str(e)})
            return True
        with st.lock:
            if storm and b.storm_sent < storm:
                b.storm_sent += 1
                b.throttled += 1
                hdrs = [("Retry-After", str(storm_after))]
                refused = "storm"
            elif limit is not None:
                w = int(now // window)
                used = b.window_counts.get((window, w), 0)
                ends = (w + 1) * window
                to_go = max(1, math.ceil(ends - now))
                if used >= limit:
                    b.throttled += 1
                    refused = "rate limited"
                    remaining = 0
                else:
                    b.window_counts[(window, w)] = used + 1
                    refused = None
                    remaining = limit - used - 1
                hdrs = self._quota_headers(q.get("rate_headers") or "x", limit, window,
                                           remaining, ends, to_go)
                if refused:
                    hdrs.append(("Retry-After", str(to_go)))
            else:
                return False
        if refused:
            self.send_json(429, {"error": refused}, hdrs)
            return True
        self.rate_headers = hdrs
        return False

    @staticmethod
    def _quota_headers(kind, limit, window, remaining, ends, to_go):
        if kind == "x":
            return [("X-RateLimit-Limit", str(limit)), ("X-RateLimit-Remaining", str(remaining)),
                    ("X-RateLimit-Reset", str(int(ends)))]
        if kind == "x_delta":
            return [("X-RateLimit-Limit", str(limit)), ("X-RateLimit-Remaining", str(remaining)),
                    ("X-RateLimit-Reset", str(to_go))]
        if kind == "x_epoch_ms":
            return [("X-RateLimit-Limit", str(limit)), ("X-RateLimit-Remaining", str(remaining)),
                    ("X-RateLimit-Reset", str(int(ends * 1000)))]
        if kind == "ietf":
            return [("RateLimit-Limit", str(limit)), ("RateLimit-Remaining", str(remaining)),
                    ("RateLimit-Reset", str(to_go)), ("RateLimit-Policy", "%d;w=%d" % (limit, window))]
        if kind == "ietf_dict":
            return [("RateLimit", "limit=%d, remaining=%d, reset=%d" % (limit, remaining, to_go))]
        if kind == "ietf_list":
            return [("RateLimit", '"default";r=%d;t=%d' % (remaining, to_go)),
                    ("RateLimit-Policy", '"default";q=%d;w=%d' % (limit, window))]
        return []

    def _data_answer(self, path, q, endpoint):
        st = self.server.state
        with st.lock:
            st.requests += 1
            st.by_path[path] = st.by_path.get(path, 0) + 1
            st.headers_seen.append({
                "path": path, "query": q.raw,
                "Authorization": self.headers.get("Authorization"),
                "X-Api-Key": self.headers.get("X-Api-Key"),
                "User-Agent": self.headers.get("User-Agent"),
                "Host": self.headers.get("Host"),
                "method": self.command,
                "Content-Type": self.headers.get("Content-Type"),
                "body": getattr(self, "json_body", None)})
        self.gzip_ok = q.flag("gzip") and self._accepts_gzip()
        try:
            # delay_ms: before answering anything
            delay = q.int("delay_ms", 0)
            if delay:
                time.sleep(delay / 1000.0)

            # redirect=1: same URL on http://localhost:PORT without the switch
            if q.flag("redirect"):
                qs = q.rebuilt(drop=("redirect",))
                loc = "http://localhost:%d%s%s" % (
                    self.server.server_address[1], path,
                    "?" + qs if qs else "")
                return self.send_json(q.int("redirect_status", 302, minimum=300, maximum=399),
                                      {"redirect": loc}, [("Location", loc)])

            if q.flag("echo_headers"):
                return self.send_json(400, {"error": "bad request",
                                            "request_headers": dict(self.headers.items())})

            # authentication switches
            if q.has("token") and self._bearer() != q.get("token"):
                return self._unauthorized("bad or missing bearer token")
            if q.has("apikey") and \
                    self.headers.get("X-Api-Key") != q.get("apikey"):
                return self._unauthorized("bad or missing X-Api-Key")
            if q.flag("oauth"):
                tok = self._bearer()
                with st.lock:
                    exp = st.tokens.get(tok) if tok else None
                if exp is None:
                    return self._unauthorized("unknown oauth token")
                if time.monotonic() >= exp:
                    return self._unauthorized("oauth token expired")
            if not self._query_key_ok(q):
                return self._unauthorized("bad or missing api_key")
            if not self._basic_ok(q):
                return self._unauthorized("bad or missing basic credentials", "Basic")

            # echo_url=1: a 404 that shows the URL asked for
            if q.flag("echo_url"):
                return self.send_json(404, {"error": "no such page",
                                            "url": self.base_url() + self.path})

            # parameters
            n = q.int("n", DEFAULT_N, maximum=MAX_N)
            offset, render, is_array = endpoint(self, q, n)
            if n > 0 and offset >= n:
                with st.lock:
                    st.past_end += 1
            fail_status = q.int("fail_status", 500, minimum=100, maximum=599)
            fail_at = q.int("fail_at")
            fail_times = q.int("fail_times")
            fail_every = q.int("fail_every", minimum=1)
            truncate_at = q.int("truncate_at")
            badgzip_at = q.int("badgzip_at")
            badjson_at = q.int("badjson_at")
            nokey_at = q.int("nokey_at")
            oversize_at = q.int("oversize_at")
            oversize_bytes = q.int("oversize_bytes", 0)
            stall_after = q.int("stall_after_bytes")
            stall_ms = q.int("stall_ms", 1000)
            gone_at = q.int("gone_at")
            gone_status = q.int("gone_status", 404, minimum=100, maximum=599)
            errorbody_at = q.int("errorbody_at")
            errorbody_times = q.int("errorbody_times")
        except BadRequest as e:
            err = e.args[0] if e.args and isinstance(e.args[0], dict) else str(e)
            if path == "/graphql":
                return self.send_json(400, {"errors": [{"message": str(e)}]})
            return self.send_json(400, {"error": err})
        except Gone as e:
            return self.send_json(404, {"error": str(e)})

        # gone_at=K: the page at offset K is gone (404)
        if gone_at is not None and offset == gone_at:
            return self.send_json(gone_status, {"error": "gone"})

        # errorbody_at=K: a 200 whose body says error (the first M times)
        if errorbody_at is not None and offset == errorbody_at:
            with st.lock:
                key = (path, errorbody_at)
                c = st.errorbody_counts.get(key, 0) + 1
                st.errorbody_counts[key] = c
            if errorbody_times is None or c <= errorbody_times:
                return self.send_json(200, {"status": "error", "message": "backend unavailable"})

        # fail_every=E: every E-th request (per path) fails once
        if fail_every is not None:
            with st.lock:
                c = st.fail_every_counts.get(path, 0) + 1
                st.fail_every_counts[path] = c
                fail = c % fail_every == 0 and \
                    not st.fail_every_last.get(path, False)
                st.fail_every_last[path] = fail
            if fail:
                return self._inject_failure(q, fail_status)

        # fail_at=K: the page at offset K fails (the first fail_times times)
        if fail_at is not None and offset == fail_at:
            with st.lock:
                key = (path, fail_at)
                c = st.fail_at_counts.get(key, 0) + 1
                st.fail_at_counts[key] = c
            if fail_times is None or c <= fail_times:
                return self._inject_failure(q, fail_status)

        # render the page (with content faults)
        headers = []
        content_type = "application/json; charset=utf-8"
        if badjson_at is not None and offset == badjson_at:
            body = BAD_JSON_BODY
        elif nokey_at is not None and offset == nokey_at:
            body = json.dumps({"items_wrong_key": [], "other": 1}).encode()
        else:
            obj, headers = render()
            if oversize_at is not None and offset == oversize_at:
                if is_array:
                    if not obj:
                        obj.append({})
                    target = obj[0]
                else:
                    target = obj
                target["padding"] = ""
                base = len(json.dumps(obj, ensure_ascii=False).encode())
                target["padding"] = "x" * max(0, oversize_bytes - base)
            body = json.dumps(obj, ensure_ascii=False).encode()
            fmt = q.get("format")
            if fmt in ("ndjson", "csv") and path in ("/odata/Patients", "/array/Patients", "/linked/Patients",
                                                     "/drift/Patients"):
                try:
                    body, content_type = render_records(fmt, obj["value"] if isinstance(obj, dict) else obj,
                                                        q, offset)
                except BadRequest as e:
                    return self.send_json(400, {"error": str(e)})

        stall = (stall_after, stall_ms) if stall_after is not None else None
        truncate = truncate_at is not None and offset == truncate_at
        self.bad_gzip = badgzip_at is not None and offset == badgzip_at
        self.send_raw(200, body, list(headers) + self.rate_headers, stall=stall, truncate=truncate,
                      content_type=content_type)


class MockServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128      # many connections at once (parallel paging)

    def __init__(self, addr, handler, verbose=False, token_ttl=3600):
        super().__init__(addr, handler)
        self.verbose = verbose
        self.token_ttl = token_ttl
        self.state = State()

    def handle_error(self, request, client_address):
        # Client went away etc.: only report when verbose.
        if self.verbose:
            super().handle_error(request, client_address)


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

class _Stop(Exception):
    pass


def _on_signal(signum, frame):
    raise _Stop()


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Mock paginated JSON API for the etl_exec tests "
                    "(see the module docstring for endpoints and switches).")
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--pidfile")
    ap.add_argument("--verbose", action="store_true",
                    help="log requests to stderr")
    ap.add_argument("--token-ttl", type=int, default=3600,
                    help="expires_in of /oauth/token tokens (seconds)")
    ap.add_argument("--dump", type=int, metavar="N",
                    help="print records 1..N as JSON lines and exit")
    args = ap.parse_args(argv)

    if args.dump is not None:
        out = sys.stdout.buffer
        try:
            for i in range(1, args.dump + 1):
                out.write(json.dumps(record(i), ensure_ascii=False)
                          .encode("utf-8") + b"\n")
            out.flush()
        except BrokenPipeError:
            pass
        return 0

    server = MockServer((args.host, args.port), Handler,
                        verbose=args.verbose, token_ttl=args.token_ttl)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write("%d\n" % os.getpid())
    host, port = server.server_address[:2]
    print("mock_api listening on %s:%d" % (host, port), flush=True)
    try:
        server.serve_forever()
    except _Stop:
        pass
    finally:
        server.server_close()
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
