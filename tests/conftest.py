"""Test configuration shared by the whole suite.

Airflow reads its configuration at import time, so the environment for in-process DAG parsing is
set here, before any test module imports airflow: a throwaway AIRFLOW_HOME, no examples, and the
project's dags/ and plugins/ folders. Tests that need running services start their own (see
tests/integration/conftest.py) on free ports under a temporary ASGARD_HOME.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

_airflow_home = Path(tempfile.mkdtemp(prefix="asgard-test-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_airflow_home)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO_ROOT / "plugins")
# Never let a developer's running stack leak into tests through the environment.
os.environ.setdefault("ASGARD_HOME", str(Path(tempfile.mkdtemp(prefix="asgard-test-home-"))))
