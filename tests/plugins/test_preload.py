"""The API server's heap is settled once, out of the collector's way; ASGARD_PRELOAD=0 turns it off. (The
live API server's log line is checked by the soak benchmark's runs; here, a process of its own.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import gc, json, sys, threading
from asgard.core import preload
before = gc.get_freeze_count()
preload.settle_server_heap()
preload.settle_server_heap()  # once per process
threads = [t for t in threading.enumerate() if t.name == "asgard-settle-heap"]
for thread in threads:
    thread.join(timeout=120)
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(), "threads": len(threads),
                  "mlflow": "mlflow" in sys.modules}))
"""


@pytest.mark.parametrize("preload", ["1", "0"])
def test_the_server_heap_is_imported_and_frozen_once_unless_turned_off(preload, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'plugins'}:{REPO / 'include'}", "ASGARD_PRELOAD": preload,
           "ASGARD_HOME": str(tmp_path)}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    if preload == "1":
        assert seen["threads"] == 1 and seen["mlflow"], seen
        assert seen["before"] == 0 and seen["frozen"] > 100_000, seen  # MLflow and everything before it
    else:
        assert seen == {"before": 0, "frozen": 0, "threads": 0, "mlflow": False}, seen
