#!/usr/bin/env bash
# The whole test suite (./asgard test with no arguments) in two pytest processes at once. A serial
# run keeps two cores about a third busy: most of its time is spent waiting on Airflow's scheduling,
# process starts, image builds and the Docker engine. The second stream is the end-to-end tests
# (whole stacks started by ./asgard run) and the tests that start no shared stack of their own;
# the first is the rest, around the session's embedded stack (tests/conftest.py).
#
# The streams share nothing a test writes: each test has its own ASGARD_HOME, ports, Docker engine
# and PostgreSQL databases (a prefix of its own); Redis databases are taken by number so that no two
# tests of different streams use one (production e2e 8-9; materialize bench 10, 14, 15; by-id bench 7;
# the features, online-reading, online-door and kubernetes tests 11-13); the machine-level build
# caches take a lock per key (asgard.core.build_cache). Timing checks of the pipeline itself (a
# canary's p99) tolerate the jitter a shared core adds (p99_tolerance_ms).
#
# The second stream's output is kept in a file while it runs (tail it to follow) and printed after
# the first's; either failing fails the suite.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Tests besides tests/e2e that join the second stream: the benchmarks' smoke runs (those that need a
# stack start the session's own in this process), the supervision tests (a Docker engine of their
# own) and the bounded fuzzing runs. What is left in the first stream holds the tests that share
# Redis databases 11-13.
beside_e2e=(
  tests/bench
  tests/fuzz
  tests/plugins/test_supervision.py
)

e2e_log="$(mktemp /tmp/asgard-e2e-tests.XXXXXX.log)"
echo "==> tests/e2e ${beside_e2e[*]} run beside the rest of the suite; their output follows it (live: $e2e_log)"
# No cache plugin: the two processes would write .pytest_cache at once.
python -m pytest -p no:cacheprovider tests/e2e "${beside_e2e[@]}" >"$e2e_log" 2>&1 &
e2e_pid=$!
# The second stream (and what it started) stops with this script, whatever stops it.
trap 'kill -TERM "$e2e_pid" 2>/dev/null || true' EXIT

python -m pytest -p no:cacheprovider --ignore=tests/e2e "${beside_e2e[@]/#/--ignore=}"
status=$?
wait "$e2e_pid"
e2e_status=$?
trap - EXIT

echo
echo "==> tests/e2e and the tests beside it (exit status $e2e_status)"
cat "$e2e_log"
rm -f "$e2e_log"
if [ "$status" -ne 0 ] || [ "$e2e_status" -ne 0 ]; then
  echo "==> failed: the rest of the suite exited $status, the end-to-end stream $e2e_status" >&2
  exit 1
fi
