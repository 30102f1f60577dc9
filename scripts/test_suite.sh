#!/usr/bin/env bash
# The whole test suite (./asgard test with no arguments) in three pytest processes at once. A serial
# run keeps two cores about a third busy: most of its time is spent waiting on Airflow's scheduling,
# process starts, image builds and the Docker engine.
#   1. tests/integration: the DAGs on the session's embedded stack (tests/conftest.py);
#   2. the end-to-end tests (whole stacks started by ./asgard run), the smoke runs of the benchmarks that
#      need no stack, the supervision tests (a Docker engine of their own) and the bounded fuzzing runs;
#   3. the rest: unit tests of plugins/asgard, include/serving, the security tests and the DAG checks
#      (with a session stack of their own where a test needs one), and on that stack the integration
#      tests of teams, namespaces and feature exposure, and the smoke runs of the benchmarks that
#      measure the stack's DAGs, images and start-up.
#
# The streams share nothing a test writes: each test has its own ASGARD_HOME, ports, Docker engine
# and PostgreSQL databases (a prefix of its own); Redis databases are taken by number so that no two
# tests of different streams use one (production e2e 8-9; materialize bench 10, 14, 15; by-id bench 7;
# the features, online-reading, online-door, feature-exposure, Trino and kubernetes tests 11-13, all in
# the third stream); the machine-level build caches take a lock per key (asgard.core.build_cache).
# Timing checks of the pipeline itself (a canary's p99) tolerate the jitter a shared core adds
# (p99_tolerance_ms).
#
# The first stream's output is printed as it runs; the others' are kept in files while they run (tail
# them to follow) and printed after it. Any stream failing fails the suite.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Integration tests that run in the third stream instead (with the session stack it starts for the security
# tests): the streams' lengths stay close.
beside_unit=(
  tests/integration/test_kubernetes_namespace_dag.py
  tests/integration/test_serving_feature_exposure.py
  tests/integration/test_teams.py
)
# The benchmarks' smoke runs on a session stack (tests/bench/test_stack_benchmarks.py) run in the third stream.
end_to_end=(tests/e2e tests/bench/test_benchmarks.py tests/fuzz tests/plugins/test_supervision.py)
ignored=() not_here=()
for path in "${end_to_end[@]}"; do
  ignored+=("--ignore=$path")
done
for path in tests/integration/test_*.py; do
  if [[ " ${beside_unit[*]} " == *" $path "* ]]; then
    not_here+=("--ignore=$path")
  else
    ignored+=("--ignore=$path")
  fi
done

declare -a pids=() logs=() names=()
# No cache plugin: the processes would write .pytest_cache at once.
start_stream() {  # name, pytest arguments...
  local name="$1" log
  shift
  log="$(mktemp "/tmp/asgard-tests-${name}.XXXXXX.log")"
  echo "==> $name: $* (beside the integration tests; live: $log)"
  python -m pytest -p no:cacheprovider "$@" >"$log" 2>&1 &
  pids+=("$!")
  logs+=("$log")
  names+=("$name")
}
start_stream end-to-end "${end_to_end[@]}"
start_stream unit "${ignored[@]}"
# The other streams (and what they started) stop with this script, whatever stops it.
trap 'for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done' EXIT

integration_log="$(mktemp /tmp/asgard-tests-integration.XXXXXX.log)"
python -m pytest -p no:cacheprovider tests/integration "${not_here[@]}" 2>&1 | tee "$integration_log"
status=$?
failed=() failed_logs=()
if [ "$status" -ne 0 ]; then
  failed+=("integration ($status)")
  failed_logs+=("$integration_log")
fi
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"
  stream_status=$?
  echo
  echo "==> ${names[$i]} (exit status $stream_status)"
  cat "${logs[$i]}"
  if [ "$stream_status" -eq 0 ]; then
    rm -f "${logs[$i]}"
  else
    failed+=("${names[$i]} ($stream_status)")
    failed_logs+=("${logs[$i]}")
  fi
done
trap - EXIT
if [ "${#failed[@]}" -ne 0 ]; then
  # Last, so that whoever reads only the end of a long output still sees what failed and why: each
  # failed test's name and the last of its assertion lines ("E ...": where a failed command's output
  # ends, its error is), from every stream that failed.
  echo
  echo "==> what failed (the whole output of each stream is above)"
  for log in "${failed_logs[@]}"; do
    awk '/^___+ .* ___+$/ { flush(); print; next }
         /^E  / { lines[n++ % 25] = substr($0, 1, 400) }
         function flush(  i) { for (i = (n > 25 ? n - 25 : 0); i < n; i++) print lines[i % 25]; n = 0 }
         END { flush() }' "$log"
    grep -E '^(FAILED|ERROR) ' "$log" | cut -c1-400
    rm -f "$log"
  done
  echo "==> failed: ${failed[*]}" >&2
  exit 1
fi
rm -f "$integration_log"
