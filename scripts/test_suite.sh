#!/usr/bin/env bash
# The whole test suite (./asgard test with no arguments), in two pytest processes at once: the
# end-to-end tests (tests/e2e: whole stacks started by ./asgard run, mostly waiting on Airflow's
# scheduling and process starts) beside all the others: each stream then fills time the other
# spends waiting. The two streams share nothing a test writes: each test has its own ASGARD_HOME, ports,
# Docker engine, Postgres databases (a prefix of its own) and Redis databases (by number; see
# tests/plugins/test_kubernetes_target.py), and the machine-level build caches take a lock per key
# (asgard.core.build_cache).
# The end-to-end stream's output is printed after the other's; its exit status counts the same.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Two benchmark smoke runs that start no shared stack join the end-to-end stream, so the two streams
# end at about the same time (the rest of the suite is the longer one without them).
# (Not the materialize or by-id benchmarks: they share Redis databases 14 and 15.)
beside_e2e=(tests/bench/test_benchmarks.py::test_batch_scoring_bench_smoke
  tests/bench/test_benchmarks.py::test_monitoring_bench_smoke)

# The end-to-end stream's output, kept in a file while it runs (tail it to follow) and printed at the end.
e2e_log="$(mktemp /tmp/asgard-e2e-tests.XXXXXX.log)"
echo "==> tests/e2e run beside the rest of the suite; their output follows it (live: $e2e_log)"
# No cache plugin: the two processes would write .pytest_cache at once.
python -m pytest -p no:cacheprovider tests/e2e "${beside_e2e[@]}" >"$e2e_log" 2>&1 &
e2e_pid=$!
# The end-to-end stream stops with this script, whatever stops it.
trap 'kill -TERM "$e2e_pid" 2>/dev/null || true' EXIT

python -m pytest --ignore=tests/e2e "${beside_e2e[@]/#/--deselect=}"
status=$?
wait "$e2e_pid"
e2e_status=$?
trap - EXIT

echo
echo "==> tests/e2e (exit status $e2e_status)"
cat "$e2e_log"
rm -f "$e2e_log"
if [ "$status" -ne 0 ] || [ "$e2e_status" -ne 0 ]; then
  echo "==> failed: the rest of the suite exited $status, tests/e2e $e2e_status" >&2
  exit 1
fi
