"""The fuzzers' bounded runs (CI's budget): atheris drives each harness for a fixed number of inputs and
reports no crash. Longer runs are documented in each harness."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNS = {
    ("fuzz_serving_requests.py",): 3000,
    ("fuzz_serving_requests.py", "--native"): 1500,
    ("fuzz_entity_ids.py",): 20000,
}


@pytest.mark.parametrize("harness", list(RUNS), ids=lambda harness: "-".join(harness).removesuffix(".py"))
def test_a_bounded_fuzzing_run_finds_no_crash(harness, tmp_path):
    script, *options = harness
    paths = [REPO / "plugins", REPO / "include", REPO / "include" / "serving"]
    # TMPDIR: the harnesses' scratch folders (a model bundle, an online store, the seed corpus) land in
    # the test's own folder, which pytest cleans up.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths)), "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "fuzz" / script),
            *options,
            f"-runs={RUNS[harness]}",
            "-rss_limit_mb=4096",
            f"-artifact_prefix={tmp_path}/",  # a crash's input lands here (and is printed), not in the checkout
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert f"Done {RUNS[harness]} runs in" in output, output[-2000:]
