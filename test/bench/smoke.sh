#!/usr/bin/env bash
# The CI smoke run of the benchmark (test/run_tests.sh calls it when it is
# executable): 20,000 records, one round, no 3x-records memory run; setup is
# already done by the test runner.  Checks every stage (run statuses, row
# counts, stored values) and exits non-zero on a failure, never on a speed.
exec bash "$(dirname "$0")/run.sh" --records 20000 --smoke --no-setup "$@"
