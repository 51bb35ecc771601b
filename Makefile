# etl_exec — PGXS build.  `make && make install && make installcheck`.
MODULE_big = etl_exec
OBJS = \
	src/etl_exec.o \
	src/api.o \
	src/caller.o \
	src/select_check.o \
	src/launcher.o \
	src/worker.o \
	src/page.o \
	src/http_client.o \
	src/subxact.o \
	src/role_switch.o \
	src/oauth.o \
	src/secrets.o \
	src/page_scan.o \
	src/page_records.o \
	src/csv_scan.o \
	src/pagination.o \
	src/job.o \
	src/loader.o \
	src/page_table.o \
	src/rejects.o \
	src/run_store.o \
	src/host_budget.o \
	src/rate_headers.o \
	src/run_clock.o \
	src/run_lock.o \
	src/ext_schema.o \
	src/target_kind.o \
	src/type_infer.o \
	src/json_path.o \
	src/key_resolver.o \
	src/copy_text.o \
	src/url.o \
	src/redact.o \
	src/settings.o

EXTENSION = etl_exec
DATA = $(wildcard sql/etl_exec--*.sql)
PGFILEDESC = "etl_exec - resumable ETL from paginated HTTP APIs"

# pg_regress suites (sql/<name>.sql, expected/<name>.out); run them with
# test/run_tests.sh, which starts the cluster and mock API they expect.
REGRESS = jobs_validation functions_bad_input checkpoint_bookkeeping

# TAP tests (PostgreSQL::Test::Cluster: clusters of their own, killed and
# restarted): `make prove_installcheck`, as a user other than root, with
# PYTHON and MOCK_API_SCRIPT (test/mock_api.py) in the environment;
# test/tap/run.sh does all that.  With TAP_TESTS set, PGXS's `make
# installcheck` runs them after pg_regress too; `make installcheck
# TAP_TESTS=` runs pg_regress alone.
TAP_TESTS = 1
PROVE_TESTS = test/tap/*.pl

PG_CONFIG ?= pg_config
PG_CPPFLAGS = -I$(srcdir)/src
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers
SHLIB_LINK = -lcurl

EXTRA_CLEAN = src/*.gcno src/*.gcda

# `make coverage` (test/coverage.sh) builds with COVERAGE=1: gcov counts
ifdef COVERAGE
PG_CFLAGS += --coverage -O0
SHLIB_LINK += --coverage
endif

# no JIT bitcode: it needs clang and buys nothing for this module
override with_llvm = no

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# (after the include, which empties it) one line per TAP assertion
PROVE_FLAGS = --verbose --timer
# PGXS defines the recipe, not a target of this name
.PHONY: prove_installcheck
prove_installcheck:
	$(prove_installcheck)

# line coverage of src/ from the whole suite (gcov): test/coverage.sh
.PHONY: coverage
coverage:
	bash test/coverage.sh

# libFuzzer harnesses for the parsers of untrusted bytes (test/fuzz/README.md):
# builds each and runs it FUZZ_SECONDS; non-zero on any finding
FUZZ_SECONDS ?= 20
.PHONY: fuzz fuzz-regress sanitize
fuzz:
	$(MAKE) -C test/fuzz fuzz FUZZ_SECONDS=$(FUZZ_SECONDS) PG_CONFIG=$(PG_CONFIG)
# each harness once over its committed corpus (seconds)
fuzz-regress:
	$(MAKE) -C test/fuzz regress PG_CONFIG=$(PG_CONFIG)
# the integration suite against a build with ASan and UBSan, in a real server
sanitize:
	bash test/sanitize.sh

# the zip PGXN takes (META.json at its top), of the committed tree
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" $(srcdir)/etl_exec.control)
.PHONY: dist
dist:
	git archive --format zip --prefix=etl_exec-$(EXTVERSION)/ -o etl_exec-$(EXTVERSION).zip HEAD

# every module includes the shared header
$(OBJS): src/etl_exec.h
