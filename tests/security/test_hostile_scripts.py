"""Hostile user scripts through the real train_script DAG: each is contained, and no secret reaches a log.

The scripts run concurrently on the session's stack (Airflow, MLflow, the sandboxed local runner).
Each either fails its run with a message that names what stopped it, or succeeds cleanly; the
platform's secrets (the admin password, Airflow's JWT and session secrets, the registry password)
appear in none of the task logs, no file of dags/ or plugins/ changes, and nothing a script did
survives it on the host. One probe tries the quiet escapes (other processes, platform files, ports,
MLflow beyond its run, climbing out of its MLflow door byte for byte, a user namespace); one fills
/work; one logs a booby-trapped model and forges the training request retraining would act on.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from tests.security.test_script_run_folders import changed, tree_hashes

from asgard.core.settings import REPO_ROOT
from asgard.features import gold
from asgard.features import store as feature_store
from asgard.hooks.mlflow import MlflowHook
from asgard.local.examples import example_upload
from asgard.registry.versions import REQUEST_ARTIFACT, training_request
from asgard.training.retraining import feature_requests
from conftest import secrets_of
from sample_data.gold_layer import GoldSpec, write_gold_layer

pytestmark = pytest.mark.integration

SPEC = GoldSpec(customers=400, days=2, end="2026-11-01T00:00:00+00:00", seed=23)
TASKS = ("check_upload", "prepare_environment", "run_script", "register_model", "gate_model")

# One probe tries every quiet escape and reports each; it logs no model, so its run fails at
# register_model (a clear failure) after run_script succeeded.
PROBE = r"""
import os, socket, subprocess, sys, mlflow
from mlflow import MlflowClient

def report(what, result):
    print(f"PROBE {what}: {result}", flush=True)

run_id = os.environ["MLFLOW_RUN_ID"]  # mlflow.start_run's end takes it out of the environment

for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    try:
        report(f"environ of pid {pid}", open(f"/proc/{pid}/environ", "rb").read().replace(b"\0", b" ").decode())
    except OSError as error:
        report(f"environ of pid {pid}", type(error).__name__)
home = os.environ["PROBE_HOME"]
readable = []
for folder, _, files in os.walk(home):
    for name in files:
        try:
            report(f"read {os.path.join(folder, name)}", open(os.path.join(folder, name), "rb").read(200))
            readable.append(os.path.join(folder, name))
        except OSError as error:
            report(f"read {os.path.join(folder, name)}", type(error).__name__)
report("readable under home", sorted(readable))
for target in [os.environ["PROBE_REPO"] + "/dags/evil.py", os.environ["PROBE_REPO"] + "/plugins/evil.py",
               os.path.join(sys.prefix, "lib", "evil.pth")]:
    try:
        open(target, "w").write("import os")
        report(f"write {target}", "WRITTEN")
    except OSError as error:
        report(f"write {target}", type(error).__name__)
for port in (int(os.environ["PROBE_AIRFLOW_PORT"]), int(os.environ["PROBE_MLFLOW_PORT"]), 5432, 6379):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        report(f"connect {port}", "CONNECTED")
    except OSError as error:
        report(f"connect {port}", type(error).__name__)
client = MlflowClient()
for what, call in (("create a registered model", lambda: client.create_registered_model("hijacked")),
                   ("search other runs", lambda: client.search_runs(["0"]))):
    try:
        call()
        report(what, "ALLOWED")
    except Exception as error:
        report(what, str(error)[:160])
with mlflow.start_run():
    mlflow.log_metric("accuracy", 0.5)
    report("log into its own run", "ok")
# Climbing out of its own run's artifacts, sent byte for byte (a client library would normalize first).
own = f"/api/2.0/mlflow-artifacts/artifacts/{client.get_run(run_id).info.experiment_id}/{run_id}/artifacts"
host, port = os.environ["MLFLOW_TRACKING_URI"].removeprefix("http://").split(":")
climbs = {
    "dot segments": ("GET", own + "/../../../../../api/2.0/mlflow/registered-models/search"),
    "encoded dots": ("GET", own + "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/api/2.0/mlflow/registered-models/search"),
    "upper-case encoded dots": ("PUT", own + "/%2E%2E/%2E%2E/0/champion-run/artifacts/model/model.pkl"),
    "encoded slashes": ("GET", own + "/..%2f..%2f..%2f..%2f..%2fapi/2.0/mlflow/registered-models/search"),
    "doubly encoded": ("PUT", own + "/%252e%252e/%252e%252e/0/champion-run/artifacts/model.pkl"),
    "backslashes": ("PUT", own + "/..\\..\\0\\champion-run\\artifacts\\model.pkl"),
    "empty segment": ("GET", own + "//..//model"),
}
for what, (method, target) in climbs.items():
    with socket.create_connection((host, int(port)), timeout=30) as door:
        door.sendall(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n"
                     f"Connection: close\r\n\r\npwned".encode())
        answer = b""
        while chunk := door.recv(65536):
            answer += chunk
    status, body = answer.split(b"\r\n", 1)[0], answer.rsplit(b"\r\n\r\n", 1)[-1][:200]
    report(f"climb {what}", f"{status.decode()} {body.decode()}")
done = subprocess.run(["unshare", "-U", "true"], capture_output=True, text=True)
report("unshare -U", f"{'MADE' if done.returncode == 0 else 'refused'} {done.stderr.strip()}")
marker = os.environ["PROBE_MARKER"]
subprocess.Popen(["sleep", marker], start_new_session=True)
subprocess.Popen(["setsid", "sleep", marker])
if os.fork() == 0:
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", marker])
    os._exit(0)
report("sleepers", "started")
"""

FLOOD = "import sys\nsys.stdout.write('y' * 10_000_000)\nsys.stdout.flush()\n"
# Fills /work until the sandbox's cap (ASGARD_SCRIPT_MAX_DISK_MB) says no: the disk holding the
# platform's databases never sees it.
FILL = "with open('/work/fill', 'wb') as sink:\n    while True:\n        sink.write(b'x' * 1048576)\n"
FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
MEMORY = """
import os, time
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        block = bytearray(200 * 1024 * 1024)
        time.sleep(30)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
"""
# A model whose unpickling writes a marker: the platform may unpickle it only inside a sandbox.
PICKLE = r"""
import os, mlflow, numpy as np, pandas as pd
from feast import FeatureStore
from sklearn.ensemble import RandomForestClassifier

MARKER = os.environ["PROBE_MARKER_FILE"]

class Booby(RandomForestClassifier):
    def __setstate__(self, state):
        for path in (MARKER, "/tmp/asgard-unpickled"):
            try:
                open(path, "w").write("unpickled")
            except OSError:
                pass
        super().__setstate__(state)

features = ["total_purchases", "avg_purchase_value", "days_since_last_purchase",
            "customer_lifetime_value", "account_age_days", "support_tickets_count"]
store = FeatureStore(repo_path=os.environ["FEAST_REPO_PATH"])
entities = pd.DataFrame({"customer_id": np.arange(1, 401), "event_timestamp": pd.Timestamp("2026-11-01", tz="UTC")})
frame = store.get_historical_features(
    entity_df=entities, features=[f"customer_features:{name}" for name in features] + ["customer_labels:churned"]
).to_df().dropna(subset=["churned"])
model = Booby(n_estimators=10, random_state=0).fit(frame[features].astype("float64"), frame["churned"].astype(int))
mlflow.set_experiment(os.environ["EXPERIMENT_NAME"])
example = frame[features].astype("float64").head(3)
with mlflow.start_run():
    mlflow.sklearn.log_model(model, name=os.environ["MODEL_NAME"], input_example=example,
                             serialization_format="cloudpickle")
    # A forged training request naming its own model (so it passes the name check), asking to be
    # retrained on every materialization: retraining must not act on what a script wrote.
    mlflow.log_dict({"model_name": os.environ["MODEL_NAME"], "experiment_name": os.environ["EXPERIMENT_NAME"],
                     "framework": "sklearn", "model_type": "classification",
                     "data_source": {"feature_views": ["customer_features"], "target_column": "churned"},
                     "retraining": {"on_new_features": True, "min_interval_hours": 0}}, "training/request.json")
print("logged a booby-trapped model and a forged training request")
"""


@pytest.fixture(scope="module")
def sandbox_stack(embedded_stack):
    settings = embedded_stack.settings
    write_gold_layer(SPEC, gold.GoldLocation.for_settings(settings), log=lambda _: None)
    feature_store.apply_repo(settings)
    return embedded_stack


def conf(name: str, source: str, **changes) -> dict:
    return {
        **example_upload(model_name=f"{name}_{uuid.uuid4().hex[:6]}", requirements=[]),
        "script_name": f"{name}.py",
        "script_content": base64.b64encode(source.encode()).decode(),
        "use_feast": False,
        **changes,
    }


def test_hostile_scripts_are_contained_and_no_secret_reaches_a_log(sandbox_stack, tmp_path, monkeypatch):
    api, settings = sandbox_stack.api, sandbox_stack.settings
    marker = f"600.{uuid.uuid4().int % 10**9}"  # a sleep no other process on this host runs
    marker_file = tmp_path / "unpickled-in-a-worker"
    probe_env = {
        "PROBE_HOME": str(settings.home),
        "PROBE_REPO": str(REPO_ROOT),
        "PROBE_AIRFLOW_PORT": str(settings.airflow_port),
        "PROBE_MLFLOW_PORT": str(settings.mlflow_port),
        "PROBE_MARKER": marker,
    }
    runs = {
        "probe": conf("probe", PROBE, env_vars=probe_env, timeout=300),
        "flood": conf("flood", FLOOD),
        "fill": conf("fill", FILL),
        "forkbomb": conf("forkbomb", FORK_BOMB, timeout=20),
        "memory": conf("memory", MEMORY, memory_mb=256),
        "pickle": conf(
            "booby_trap",
            PICKLE,
            requirements=["scikit-learn", "feast[duckdb]", "pyiceberg[sql-sqlite,pyarrow]"],
            env_vars={"PROBE_MARKER_FILE": str(marker_file)},
            use_feast=True,
        ),
    }
    platform_before = {name: tree_hashes(REPO_ROOT / name) for name in ("dags", "plugins")}
    api.wait_for_dag("train_script")
    api.unpause("train_script")
    started = {label: api.trigger("train_script", body) for label, body in runs.items()}
    outcomes = {label: api.wait_for_run("train_script", run_id, timeout=1200) for label, run_id in started.items()}
    logs = {
        label: "\n".join(api.task_log("train_script", outcome.run_id, task) for task in TASKS)
        for label, outcome in outcomes.items()
    }

    for secret in secrets_of(sandbox_stack):
        leaked = [label for label, text in logs.items() if secret in text]
        assert not leaked, f"a secret value appears in the task logs of {leaked}"

    probe = outcomes["probe"]
    assert probe.task_states["run_script"] == "success" and probe.state == "failed", logs["probe"][-3000:]
    assert "the script logged no model" in logs["probe"]
    lines = [line.split("PROBE ", 1)[1] for line in logs["probe"].splitlines() if "PROBE " in line]
    readable = next(line for line in lines if line.startswith("readable under home"))
    for private in ("airflow.db", "mlflow.db", "monitoring.db", "passwords", "secrets", "registry.htpasswd"):
        assert private not in readable, readable
    assert not [line for line in lines if line.endswith(("WRITTEN", "CONNECTED", "ALLOWED"))], lines
    assert "log into its own run: ok" in lines
    assert any("create a registered model" in line and "not open to user scripts" in line for line in lines)
    climbs = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in lines if line.startswith("climb ")}
    assert len(climbs) == 7 and all(answer.startswith("HTTP/1.1 403") for answer in climbs.values()), climbs
    assert all("PERMISSION_DENIED" in answer for answer in climbs.values()), climbs
    assert any(line.startswith("unshare -U: refused") and "Operation not permitted" in line for line in lines), lines
    assert not [p.pid for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])]

    failures = {
        "flood": "wrote more than 5000000 bytes of output and was stopped",
        "fill": f"/work full: the sandbox may write {settings.script_max_disk_mb} MB there",
        "forkbomb": "reached its limit of 256 processes",
        "memory": "ran out of its memory limit (256 MB)",
    }
    for label, message in failures.items():
        outcome = outcomes[label]
        assert outcome.state == "failed" and outcome.task_states["run_script"] == "failed", label
        assert message in logs[label], (label, logs[label][-2000:])

    pickle = outcomes["pickle"]
    assert pickle.state == "success", logs["pickle"][-3000:]
    assert "scored" in logs["pickle"] and "in a sandbox" in logs["pickle"]  # the gate's own holdout
    assert not marker_file.exists() and not Path("/tmp/asgard-unpickled").exists()

    # Its forged training request is in its run, yet retraining acts on none of it: its version is no
    # platform-trained one, even while it is the champion whose feature view was just materialized.
    connection = {"conn_type": "http", "extra": {"tracking_uri": settings.mlflow_url}}
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps(connection))
    hook, model = MlflowHook(), runs["pickle"]["model_name"]
    (version,) = hook.client.search_model_versions(f"name = '{model}'")
    assert hook.logged_json(version.run_id, REQUEST_ARTIFACT)["model_name"] == model
    assert training_request(hook, version) is None
    materialized = datetime.now(UTC) + timedelta(minutes=1)
    requests = feature_requests({"customer_features": materialized}, "probe", now=materialized + timedelta(hours=1))
    assert model not in [request["model_name"] for request in requests]
    for name, before in platform_before.items():
        assert changed(before, tree_hashes(REPO_ROOT / name)) == [], f"{name}/ changed"
