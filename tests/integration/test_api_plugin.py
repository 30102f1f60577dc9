"""The seed's REST API as the Airflow plugin, against the real API server with the plugin loaded (auth on).

Every route needs Airflow's token; requests become real DAG runs through Airflow's REST API; the
registry and monitoring answers come from the real MLflow server and monitoring store.
"""

from __future__ import annotations

import argparse
import io
import json
import uuid

import airflow_client.client as af
import httpx
import hypothesis
import pytest
import schemathesis
from mlflow import MlflowClient
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from asgard.features import gold
from asgard.features import store as feature_store
from asgard.local import cli
from asgard.local.cli import follow
from asgard.local.examples import CHURN_MODEL_REQUEST
from asgard.local.mlops_client import CliError, MlopsClient
from sample_data.gold_layer import GoldSpec, write_gold_layer
from sample_data.models import SEED_FEATURES, SEED_MONITORING_REQUEST, register_sample_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(embedded_stack):
    return embedded_stack.settings.airflow_url


@pytest.fixture(scope="module")
def auth(embedded_stack):
    return {"Authorization": f"Bearer {embedded_stack.api.token}"}


@pytest.fixture(scope="module")
def viewer(embedded_stack):
    """A read-only user's token (Airflow's viewer role)."""
    from asgard.hooks.airflow_api import fetch_token

    user, password = embedded_stack.manager.credentials("viewer")
    return {"Authorization": f"Bearer {fetch_token(embedded_stack.settings.airflow_url, user, password)}"}


def routes(server: str, prefix: str) -> list[tuple[str, str]]:
    spec = httpx.get(f"{server}{prefix}/openapi.json", timeout=30).json()
    return [(method.upper(), f"{prefix}{path}") for path, methods in spec["paths"].items() for method in methods]


def test_every_route_is_documented_and_refuses_a_missing_or_bad_token(server):
    found = routes(server, "/mlops") + routes(server, "/feast")
    paths = {path for _, path in found}
    assert {
        "/mlops/status",
        "/mlops/health",
        "/mlops/training/upload",
        "/mlops/training/jobs/{job_id}",
        "/mlops/models",
        "/mlops/models/{model_name}",
        "/mlops/registry",
        "/mlops/serve/batch",
        "/mlops/monitoring",
        "/mlops/monitoring/history",
        "/feast/status",
        "/feast/features",
    } <= paths
    for method, path in found:
        url = f"{server}{path.replace('{job_id}', 'train_model--0').replace('{model_name}', 'm')}"
        for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic YTpi"}):
            answer = httpx.request(method, url, headers=headers, json={}, timeout=30)
            assert answer.status_code == 401, (method, path, headers, answer.text)
            assert answer.headers["www-authenticate"] == "Bearer"


def test_health_and_status_name_mlflow_and_the_job_dags(server, auth):
    assert httpx.get(f"{server}/mlops/health", headers=auth).json() == {"status": "healthy"}
    status = httpx.get(f"{server}/mlops/status", headers=auth, timeout=60).json()
    assert status["status"] == "healthy" and status["mlflow"]["reachable"] and status["profile"] == "embedded"
    assert all(dag["available"] for dag in status["dags"].values()), status["dags"]


def test_registry_models_and_model_details_come_from_mlflow(embedded_stack, server, auth):
    source = f"api_source_{uuid.uuid4().hex[:6]}"
    version = register_sample_model(embedded_stack.settings.mlflow_url, source, customers=500)
    mlflow = MlflowClient(embedded_stack.settings.mlflow_url, embedded_stack.settings.mlflow_url)
    run_id = mlflow.get_model_version(source, version).run_id
    name = f"api_registered_{uuid.uuid4().hex[:6]}"
    body = {"model_name": name, "run_id": run_id, "description": "Q4 2025 model", "tags": {"validated": "true"}}

    registered = httpx.post(f"{server}/mlops/registry", headers=auth, json=body, timeout=60)
    assert registered.status_code == 201, registered.text
    assert registered.json() == {
        "model_name": name,
        "version": "1",
        "run_id": run_id,
        "model_uri": f"models:/{name}/1",
        "status": "registered",
    }
    again = httpx.post(f"{server}/mlops/registry", headers=auth, json=body, timeout=60).json()
    assert again["version"] == "1" and again["status"] == "already_registered"  # a retried call adds nothing
    assert mlflow.get_model_version(name, "1").description == "Q4 2025 model"

    listed = httpx.get(f"{server}/mlops/models", headers=auth, timeout=60).json()
    assert {name, source} <= {model["model_name"] for model in listed["models"]}
    details = httpx.get(f"{server}/mlops/models/{name}", headers=auth, timeout=60).json()
    assert details["latest_version"] == "1" and details["versions"][0]["run_id"] == run_id
    assert details["versions"][0]["tags"]["validated"] == "true"

    unknown_model = httpx.get(f"{server}/mlops/models/no_such_model", headers=auth, timeout=60)
    assert unknown_model.status_code == 404 and "'no_such_model' is not registered" in unknown_model.text
    unknown_run = httpx.post(f"{server}/mlops/registry", headers=auth, json={**body, "run_id": "0" * 32}, timeout=60)
    assert unknown_run.status_code == 404 and "0" * 32 in unknown_run.json()["detail"]
    bad = httpx.post(f"{server}/mlops/registry", headers=auth, json={"model_name": name}, timeout=60)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "run_id"]


def test_monitoring_records_and_history_have_the_seed_shapes(server, auth):
    model = f"api_monitored_{uuid.uuid4().hex[:6]}"
    seed = {**SEED_MONITORING_REQUEST, "model_name": model}
    logged = httpx.post(f"{server}/mlops/monitoring", headers=auth, json=seed)
    assert logged.status_code == 201, logged.text
    record = logged.json()
    assert record["alert_triggered"] and record["alerts"] == [
        "drift_score drift detected: 0.150",
        "js_divergence drift detected: 0.120",
    ]
    quiet = {**seed, "metric_type": "data_quality", "metrics": {"missing_rate": 0.01}}
    assert httpx.post(f"{server}/mlops/monitoring", headers=auth, json=quiet).json()["alert_triggered"] is False

    history = httpx.post(
        f"{server}/mlops/monitoring/history", headers=auth, json={"model_name": model, "model_version": "1"}
    ).json()
    assert history["total_records"] == 2 and history["records"][0]["monitoring_id"] != record["monitoring_id"]
    assert history["summary"]["total_alerts"] == 1
    assert history["summary"]["metric_types"] == ["data_quality", "prediction_drift"]
    only_drift = httpx.post(
        f"{server}/mlops/monitoring/history",
        headers=auth,
        json={"model_name": model, "metric_type": "prediction_drift", "limit": 5},
    ).json()
    assert [r["monitoring_id"] for r in only_drift["records"]] == [record["monitoring_id"]]

    bad = httpx.post(f"{server}/mlops/monitoring", headers=auth, json={**seed, "metrics": {"psi": "high"}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "metrics", "psi"]
    bad_limit = httpx.post(f"{server}/mlops/monitoring/history", headers=auth, json={"model_name": model, "limit": 0})
    assert bad_limit.status_code == 422 and bad_limit.json()["detail"][0]["loc"] == ["body", "limit"]


def test_a_conf_the_params_refuse_is_a_422_naming_the_param_and_starts_no_run(embedded_stack, server, auth):
    api = embedded_stack.api
    before = api.list_run_ids("train_model")
    body = {**CHURN_MODEL_REQUEST, "test_size": 7}
    refused = httpx.post(f"{server}/mlops/models", headers=auth, json=body, timeout=60)
    assert refused.status_code == 422 and "test_size" in refused.json()["detail"], refused.text
    missing = httpx.post(f"{server}/mlops/models", headers=auth, json={**body, "framework": "torch"}, timeout=60)
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "framework"]
    assert api.list_run_ids("train_model") == before
    unknown = httpx.get(f"{server}/mlops/training/jobs/train_model--0123456789abcdef", headers=auth, timeout=60)
    assert unknown.status_code == 404 and "does not exist" in unknown.text
    foreign = httpx.get(f"{server}/mlops/training/jobs/{before[0] if before else 'x'}", headers=auth, timeout=60)
    assert foreign.status_code == 404


def test_feature_registration_batch_scoring_and_monitoring_runs_are_jobs(embedded_stack, server, auth, data_folder):
    settings = embedded_stack.settings
    write_gold_layer(
        GoldSpec(customers=300, days=2, end="2026-11-01T00:00:00+00:00", seed=5),
        gold.GoldLocation.for_settings(settings),
        log=lambda _: None,
    )
    feature_store.apply_repo(settings)
    client = MlopsClient(server, embedded_stack.api.token)
    view = f"api_view_{uuid.uuid4().hex[:6]}"
    request = {
        "name": view,
        "entities": ["customer_id"],
        "features": [{"name": "support_tickets_count", "dtype": "int64"}],
        "source": {"table_name": "customer_features", "timestamp_field": "event_timestamp"},
        "ttl_days": 30,
    }
    submitted = httpx.post(f"{server}/feast/features", headers=auth, json=request, timeout=60)
    assert submitted.status_code == 202, submitted.text
    job = follow(client, submitted.json()["job_id"], deploy=False, timeout=300)
    assert job["status"] == "completed" and job["result"]["feature_view"] == view
    listed = httpx.get(f"{server}/feast/features", headers=auth, timeout=60).json()["feature_views"]
    registered = next(found for found in listed if found["name"] == view)
    assert registered["features"] == [{"name": "support_tickets_count", "dtype": "Int64"}]
    assert view in httpx.get(f"{server}/feast/status", headers=auth, timeout=60).json()["feature_views"]

    # The seed's POST /mlops/models: a train_model job, followed to its gate decision.
    trained_name = f"api_trained_{uuid.uuid4().hex[:6]}"
    submitted = httpx.post(
        f"{server}/mlops/models", headers=auth, json={**CHURN_MODEL_REQUEST, "model_name": trained_name}, timeout=60
    )
    assert submitted.status_code == 202 and submitted.json()["model_name"] == trained_name, submitted.text
    trained = follow(client, submitted.json()["job_id"], deploy=False, timeout=600)
    assert trained["status"] == "completed" and trained["model_version"] == "1" and trained["promoted"] is True
    assert trained["result"]["reason"] == "no current champion" and "fit_model" in trained["tasks"]
    details = client.get(f"/models/{trained_name}")
    assert details["aliases"] == {"champion": "1"} and details["versions"][0]["metrics"]["roc_auc"] > 0.5
    assert details["versions"][0]["aliases"] == ["champion"]  # each version's own, not only the model's map
    # The Models page (the UI's view of the same) lists it, and its page shows the version and its gate.
    index = httpx.get(f"{server}/mlops/ui/models", headers=auth, timeout=60)
    assert index.status_code == 200 and f"href='models/{trained_name}'" in index.text
    page = httpx.get(f"{server}/mlops/ui/models/{trained_name}", headers=auth, timeout=60).text
    assert "<td>v1</td>" in page and "no current champion" in page and "Not monitored yet" in page
    assert httpx.get(f"{server}/mlops/ui/models/{trained_name}", timeout=60).status_code == 401
    for name in ("..%2F..%2Fetc", "v1-x.html"):
        assert httpx.get(f"{server}/mlops/ui/reports/{trained_name}/{name}", headers=auth).status_code == 404

    model = f"api_batch_{uuid.uuid4().hex[:6]}"
    version = register_sample_model(settings.mlflow_url, model, customers=500)
    output = data_folder / "scored.parquet"  # the model is the default team's (registered untagged)
    batch = {
        "model_name": model,
        "model_version": version,
        "entities_df": {"customer_id": [1, 2, 3], **{name: [1.0, 20.0, 300.0] for name in SEED_FEATURES}},
        "feature_source": "input",
        "output_path": str(output),
    }
    answer = httpx.post(f"{server}/mlops/serve/batch", headers=auth, json=batch, timeout=60).json()
    assert answer["model_version"] == version and answer["output_path"] == str(output)
    done = follow(client, answer["job_id"], deploy=False, timeout=600)
    assert done["status"] == "completed" and done["result"]["rows"] == 3 and output.exists()

    # A model without a training reference: the job fails, and its logs say why.
    monitored = httpx.post(
        f"{server}/mlops/monitoring/run", headers=auth, json={"model_name": model, "model_version": version}
    ).json()
    with pytest.raises(CliError, match=rf"failed in check\[{model}\]:\n(.|\n)*has no reference profile"):
        follow(client, monitored["job_id"], deploy=False, timeout=600)
    job = client.get(f"/jobs/{monitored['job_id']}")
    assert job["status"] == "failed" and job["tasks"]["alert"] == "upstream_failed"
    assert f"MonitoringError: {model} v{version} has no reference profile" in job["logs"]
    # The status says why without the logs: the task that failed first and its exception.
    assert job["error"]["task"] == f"check[{model}]"
    assert job["error"]["message"].startswith(f"MonitoringError: {model} v{version} has no reference profile")
    printed = io.StringIO()
    cli.run(
        argparse.Namespace(command="job", job_id=monitored["job_id"], run_id=None, logs=False, json=True),
        client,
        printed,
    )
    assert json.loads(printed.getvalue())["error"] == job["error"]


def test_a_read_only_user_reads_but_every_write_is_a_403(server, viewer):
    writes = [(method, path) for method, path in routes(server, "/mlops") + routes(server, "/feast") if method != "GET"]
    assert len(writes) >= 8
    bodies = {"/mlops/monitoring/history": {"model_name": "m"}}
    for method, path in writes:
        answer = httpx.request(method, f"{server}{path}", headers=viewer, json=bodies.get(path, {}), timeout=60)
        if path == "/mlops/monitoring/history":  # a read, though a POST (the seed's shape)
            assert answer.status_code == 200, answer.text
        else:
            assert answer.status_code == 403, (method, path, answer.text)
            assert "viewer may not" in answer.json()["detail"]
    assert httpx.get(f"{server}/mlops/models", headers=viewer, timeout=60).status_code == 200
    assert httpx.get(f"{server}/feast/features", headers=viewer, timeout=60).status_code == 200


def test_sixty_four_concurrent_calls_all_answer_and_airflow_keeps_answering(server, auth):
    """The endpoints call Airflow back on the same server: a burst waits for the endpoints' own threads
    instead of taking all of the server's, so every call answers and Airflow's own API stays up."""
    from concurrent.futures import ThreadPoolExecutor

    def call(index: int) -> int:
        path = "/mlops/status" if index % 2 else "/mlops/models"
        return httpx.get(f"{server}{path}", headers=auth, timeout=300).status_code

    with ThreadPoolExecutor(max_workers=64) as pool:
        answers = pool.map(call, range(64))
        airflow = [httpx.get(f"{server}/api/v2/monitor/health", timeout=30).status_code for _ in range(5)]
        codes = list(answers)
    assert codes == [200] * 64
    assert airflow == [200] * 5


# ----------------------------------------------------------------------------- schemathesis
# Generated requests per operation: enough to cover missing, mistyped and odd values of each field.
FUZZ = hypothesis.settings(max_examples=25, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
JOB_DAGS = ("train_script", "train_model", "score_batch", "monitor_model", "register_features", "materialize_features")


@pytest.fixture(scope="module")
def fuzzed_dags(embedded_stack):
    """Runs a generated request starts are removed afterwards, and the job DAGs left paused as found."""
    api = embedded_stack.api
    before = {dag_id: (api.dag_state(dag_id)["paused"], set(api.list_run_ids(dag_id))) for dag_id in JOB_DAGS}
    yield
    for dag_id, (paused, runs) in before.items():
        api.pause(dag_id) if paused else api.unpause(dag_id)
        for run_id in set(api.list_run_ids(dag_id)) - runs:
            # A running run cannot be deleted: end it first (its tasks stop).
            api.runs.patch_dag_run(dag_id, run_id, af.DAGRunPatchBody(state=af.DagRunMutableStates.FAILED))
            api.runs.delete_dag_run(dag_id, run_id)


def refused_to_a_reader(ctx, response, case):
    """For the read-only user, a write is a 403 whatever its body (the permission is checked before the
    body is validated); a negative case that mangled the token itself gets the 401 of an unknown caller,
    and a body that is not JSON at all is refused by FastAPI as it reads it (``_unreadable_body``)."""
    if case.method == "GET" or case.path == "/monitoring/history":
        return
    sent_token = response.request.headers.get("Authorization") == READER_TOKEN.get("value")
    refused = {403} if sent_token else {401, 403}
    if _unreadable_body(response) or _routed_nowhere(response):
        return
    if response.status_code not in refused:
        raise AssertionError(f"{case.method} {case.path} answered {response.status_code} to a read-only user")


def _routed_nowhere(response) -> bool:
    """The API server's own 404 for a path no route matches: the plugin's mount does not route a path
    parameter holding a newline (Starlette's ``.*``), so the request never reaches the plugin."""
    from urllib.parse import unquote

    path = unquote(str(response.request.url).split("?", 1)[0])
    return response.status_code == 404 and "\n" in path and response.text == '{"detail":"Not Found"}'


READER_TOKEN: dict[str, str] = {}


def _unreadable_body(response) -> bool:
    """FastAPI's own refusal of a body it cannot decode (400) or parse as JSON (422): it reads the body
    before it resolves any dependency, so before the permission check; such a refusal reveals nothing."""
    try:
        details = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return False
    if response.status_code == 400:
        return details == "There was an error parsing the body"
    return (
        response.status_code == 422
        and isinstance(details, list)
        and all(isinstance(item, dict) and item.get("type") == "json_invalid" for item in details)
    )


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda mode: mode.value)
@pytest.mark.parametrize("prefix", ["/mlops", "/feast"])
@pytest.mark.parametrize("user", ["admin", "viewer"])
def test_no_generated_request_gets_a_server_error(user, prefix, mode, server, auth, viewer, fuzzed_dags):
    """Schemathesis cases from the plugin's own OpenAPI: valid ones and invalid ones, for every operation,
    as an admin and as a read-only user (who gets a 403 on every write)."""
    schema = schemathesis.openapi.from_url(f"{server}{prefix}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    headers = auth if user == "admin" else viewer
    READER_TOKEN["value"] = viewer["Authorization"]
    checks = [not_a_server_error] if user == "admin" else [not_a_server_error, refused_to_a_reader]
    for operation in operations:

        @FUZZ
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def call(case):
            case.call_and_validate(base_url=f"{server}{prefix}", headers=headers, checks=checks, timeout=60)

        call()
