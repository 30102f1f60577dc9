"""How the benchmarks' smoke runs start a benchmark of ``bench/``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, stack=None, timeout: float = 600) -> str:
    """Run a benchmark; with ``stack``, against the session's running services (``--reuse-services``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO / "include")])}
    if stack is not None:
        env.update(stack.settings.as_env())
        args = (*args, "--reuse-services")
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
