# etl_exec — PGXS build.  `make && make install && make installcheck`.
MODULE_big = etl_exec
OBJS = \
	src/api.o \
	src/etl_exec.o \
	src/settings.o \
	src/run_lock.o \
	src/launcher.o \
	src/worker.o \
	src/http_client.o \
	src/url.o \
	src/redact.o \
	src/pagination.o \
	src/json_path.o \
	src/page_scan.o \
	src/loader.o \
	src/checkpoint.o \
	src/secrets.o

EXTENSION = etl_exec
DATA = $(wildcard sql/etl_exec--*.sql)
PGFILEDESC = "etl_exec - resumable ETL from paginated HTTP APIs"

# pg_regress suites (sql/<name>.sql, expected/<name>.out); run them with
# test/run_tests.sh, which starts the cluster and mock API they expect.
REGRESS = jobs_validation functions_bad_input checkpoint_bookkeeping

PG_CONFIG ?= pg_config
PG_CPPFLAGS = -I$(srcdir)/src
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers
SHLIB_LINK = -lcurl

# no JIT bitcode: it needs clang and buys nothing for this module
override with_llvm = no

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every module includes the shared header
$(OBJS): src/etl_exec.h
