# Shared settings of the test harness: sourced by the scripts in test/.
# Everything runs on 127.0.0.1 / a Unix socket, in a throwaway cluster.
# PG_MAJOR picks the PostgreSQL major (Debian's postgresql-PG_MAJOR): 15 on
# the Debian 12 host, 17 and 18 in test/compat.sh's chroots.
export PG_MAJOR="${PG_MAJOR:-15}"
export ETL_TEST_ROOT="${ETL_TEST_ROOT:-/tmp/etl_exec_test}"
export PGBIN="${PGBIN:-/usr/lib/postgresql/$PG_MAJOR/bin}"
export PGDATA="$ETL_TEST_ROOT/pgdata"
export PGHOST="$ETL_TEST_ROOT/socket"
export PGPORT="${PGPORT:-55432}"
export PGUSER=postgres
export PGDATABASE="${PGDATABASE:-postgres}"
export MOCK_API_PORT="${MOCK_API_PORT:-18080}"
export MOCK_API="http://127.0.0.1:$MOCK_API_PORT"
# Debian's interpreter: the python3-* packages the tests use live there.
export PYTHON=/usr/bin/python3
