#!/usr/bin/env bash
# test/check_module_graph.sh: which of etl_exec's object files call which,
# from their symbols (nm: what each defines, what each leaves undefined),
# printed as "file -> files it calls"; exits 1 when the graph has a cycle
# (a strongly connected component of more than one file) or when a symbol
# of ours is left undefined.  Builds the objects first unless NO_BUILD=1.
#   PG_CONFIG   pg_config of the server to build against (default: the
#               one on PATH, else PostgreSQL 15's)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

if [ "${NO_BUILD:-0}" != 1 ]; then
    PG_CONFIG="${PG_CONFIG:-$(command -v pg_config || echo /usr/lib/postgresql/15/bin/pg_config)}"
    make -s PG_CONFIG="$PG_CONFIG" >/dev/null
fi

shopt -s nullglob
objs=(src/*.o)
[ ${#objs[@]} -gt 0 ] || { echo "no src/*.o: build first" >&2; exit 2; }

# one line per symbol: "<object> <D|U> <symbol>"
for o in "${objs[@]}"; do
    name="$(basename "$o" .o)"
    nm --defined-only -g "$o" | awk -v f="$name" 'NF >= 3 { print f, "D", $3 }'
    nm --undefined-only "$o" | awk -v f="$name" '{ print f, "U", $NF }'
done | python3 -c '
import sys
from collections import defaultdict

defined = {}
undefined = defaultdict(set)
files = set()
for line in sys.stdin:
    f, kind, sym = line.split()
    files.add(f)
    if kind == "D":
        defined[sym] = f
    else:
        undefined[f].add(sym)

calls = {f: set() for f in files}
dangling = []
for f, syms in undefined.items():
    for s in syms:
        g = defined.get(s)
        if g is not None and g != f:
            calls[f].add(g)
        elif g is None and s.startswith("etl_"):
            dangling.append((f, s))

# Tarjan: strongly connected components
index, low, on, stack, sccs, n = {}, {}, set(), [], [], [0]
def visit(v):
    index[v] = low[v] = n[0]; n[0] += 1
    stack.append(v); on.add(v)
    for w in sorted(calls[v]):
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        sccs.append(comp)
sys.setrecursionlimit(10000)
for v in sorted(files):
    if v not in index:
        visit(v)

# depth: 0 for leaves, else 1 + the deepest callee (a DAG when no cycle)
depth = {}
def d(v, seen=()):
    if v in depth:
        return depth[v]
    if v in seen:
        return 0
    depth[v] = 1 + max((d(w, seen + (v,)) for w in calls[v]), default=-1)
    return depth[v]
for v in files:
    d(v)

print("module graph (file -> files it calls), top down:")
for v in sorted(files, key=lambda v: (-depth[v], v)):
    print("  %-14s -> %s" % (v, ", ".join(sorted(calls[v])) or "(leaf)"))

status = 0
cycles = [sorted(c) for c in sccs if len(c) > 1]
for c in cycles:
    print("CYCLE: " + " <-> ".join(c))
    status = 1
for f, s in sorted(dangling):
    print("UNDEFINED: %s uses %s, which no object defines" % (f, s))
    status = 1
if status == 0:
    print("no cycle: %d files, %d calls between them" % (len(files), sum(len(c) for c in calls.values())))
sys.exit(status)
'
