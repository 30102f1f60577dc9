"""The train_model steps against a real MLflow server, real Feast and the real Iceberg gold layer.

Each framework and model type trains, registers and gets an alias, and beats the trivial baseline;
the gate keeps a worse challenger out and lets a better one in; each bad request fails naming the
problem and creates no model version. (The DAG through the REST API: test_train_model_dag.py.)
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from asgard.core.errors import InputError
from asgard.features import gold
from asgard.features import store as feature_store
from asgard.hooks.mlflow import MlflowHook
from asgard.registry.metrics import LOWER_IS_BETTER
from asgard.registry.models import ModelRegistry
from asgard.registry.versions import CHALLENGER, CHAMPION
from asgard.training import pipeline as training
from sample_data.gold_layer import GoldSpec, write_gold_layer

pytestmark = pytest.mark.integration

# The tasks run here in-process as the scheduler runs them, for a run the admin triggered (Airflow's own
# DagRun fields that say who acts: asgard.core.teams.run_actor).
ADMIN_RUN = SimpleNamespace(triggering_user_name="admin", run_type="manual")
SPEC = GoldSpec(customers=1500, days=3, end="2026-11-01T00:00:00+00:00", seed=5)


@pytest.fixture(scope="module")
def stack(embedded_stack):
    """The session's stack, a gold layer big enough to learn from, and this process pointed at both."""
    settings = embedded_stack.settings
    write_gold_layer(SPEC, gold.GoldLocation.for_settings(settings), log=lambda _: None)
    feature_store.apply_repo(settings)
    conn = {"conn_type": "http", "host": settings.bind_host, "port": settings.mlflow_port}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ASGARD_HOME", str(settings.home))
        patch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps(conn))
        yield embedded_stack


def request_for(framework: str, model_type: str, **changes) -> dict:
    request = {
        "experiment_name": "training-tests",
        "model_name": f"m_{uuid.uuid4().hex[:8]}",
        "framework": framework,
        "model_type": model_type,
        "algorithm": None,
        "data_source": {
            "feature_views": ["customer_features"],
            "target_column": "churned" if model_type == "classification" else "spend_next_30d",
        },
        "hyperparameters": {"params": {"n_estimators": 60, "random_state": 7}},
        "tags": {"team": "data-science"},
        "promotion": {},
        "test_size": 0.25,
        "random_state": 42,
    }
    request.update(changes)
    return request


def train(request: dict, run_id: str | None = None) -> dict:
    """The DAG's tasks in order, as the scheduler runs them (same functions, same XCom shapes)."""
    dag_id, run_id = "train_model", run_id or f"manual__{uuid.uuid4().hex[:8]}"
    checked = training.validate_request(request, ADMIN_RUN)
    dataset = training.build_training_set(checked, dag_id=dag_id, run_id=run_id)
    fitted = training.fit_model(checked, dataset)
    registered = training.register_model(checked, dataset, fitted, dag_id=dag_id, run_id=run_id)
    decision = training.gate_model(checked, dataset, fitted, registered)
    return {"request": checked, "dataset": dataset, "fitted": fitted, "registered": registered, "decision": decision}


@pytest.mark.parametrize("framework", ["sklearn", "xgboost", "lightgbm"])
@pytest.mark.parametrize("model_type", ["classification", "regression"])
def test_each_framework_and_model_type_trains_registers_and_beats_the_baseline(stack, framework, model_type):
    result = train(request_for(framework, model_type))
    metric = result["request"]["promotion"]["metric"]
    score, baseline = result["fitted"]["metrics"][metric], result["fitted"]["baseline"][metric]
    assert (score < baseline) if metric in LOWER_IS_BETTER else (score > baseline), (metric, score, baseline)

    client = MlflowHook().client
    name, version = result["registered"]["model_name"], result["registered"]["version"]
    registered = client.get_model_version(name, version)
    assert registered.run_id == result["dataset"]["mlflow_run_id"]
    assert registered.tags["airflow.dag_id"] == "train_model"
    assert registered.tags["feast.feature_views"] == "customer_features"
    assert json.loads(registered.tags["gold.snapshots"])["customer_labels"] is not None
    assert client.get_model_version_by_alias(name, CHAMPION).version == version  # first version: no champion yet

    run = client.get_run(result["dataset"]["mlflow_run_id"])
    assert run.data.params["framework"] == framework
    assert set(result["fitted"]["metrics"]) <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "reference")}
    assert artifacts == {"reference/profile.json", "reference/features.json", "reference/sample.parquet"}
    model = MlflowHook().load_model(f"models:/{name}@{CHAMPION}")
    assert hasattr(model, "predict_proba") == (model_type == "classification")


def test_a_better_model_takes_champion_and_a_worse_one_does_not(stack):
    name = f"gate_{uuid.uuid4().hex[:8]}"
    weak_params = {"hyperparameters": {"params": {"n_estimators": 1, "max_depth": 1, "random_state": 3}}}
    weak = train(request_for("sklearn", "classification", model_name=name, **weak_params))
    assert weak["decision"].promoted and weak["decision"].reason == "no current champion"

    strong = train(request_for("sklearn", "classification", model_name=name))
    client = MlflowHook().client
    assert strong["decision"].promoted, strong["decision"].reason
    assert strong["decision"].champion_version == weak["registered"]["version"]
    assert client.get_model_version_by_alias(name, CHAMPION).version == strong["registered"]["version"]

    worse = train(request_for("sklearn", "classification", model_name=name, **weak_params))
    assert not worse["decision"].promoted
    assert worse["decision"].champion_version == strong["registered"]["version"]
    # The champion was scored again on the challenger's holdout (the same split: same seed and data).
    assert worse["decision"].champion_score == pytest.approx(strong["fitted"]["metrics"]["roc_auc"])
    assert client.get_model_version_by_alias(name, CHAMPION).version == strong["registered"]["version"]
    assert client.get_model_version_by_alias(name, CHALLENGER).version == worse["registered"]["version"]
    tags = client.get_model_version(name, worse["registered"]["version"]).tags
    assert tags["gate.decision"] == "challenger" and "not better than" in tags["gate.reason"]
    assert float(tags["gate.champion_score"]) == pytest.approx(worse["decision"].champion_score)


def test_min_improvement_keeps_an_equal_model_out(stack):
    name = f"equal_{uuid.uuid4().hex[:8]}"
    first = train(request_for("sklearn", "classification", model_name=name))
    same = train(request_for("sklearn", "classification", model_name=name, promotion={"min_improvement": 0.01}))
    assert first["decision"].promoted and not same["decision"].promoted
    assert same["decision"].champion_score == pytest.approx(same["decision"].score)  # identical model, same holdout


def test_two_gates_of_one_model_at_once_take_turns(stack):
    """Two runs reach the gate together: the second compares with the first's outcome, never with
    the champion both saw when they started (else the later alias write wins whatever the scores)."""
    name = f"turns_{uuid.uuid4().hex[:8]}"
    weak_params = {"hyperparameters": {"params": {"n_estimators": 1, "max_depth": 1, "random_state": 3}}}
    first = train(request_for("sklearn", "classification", model_name=name, **weak_params))
    registry = ModelRegistry(MlflowHook())
    scores = {first["registered"]["version"]: first["fitted"]["metrics"]["roc_auc"]}
    contenders = {}
    medium = {"n_estimators": 3, "max_depth": 2, "random_state": 7}
    for label, params in (("strong", {"random_state": 7}), ("medium", medium)):
        request = training.validate_request(
            request_for("sklearn", "classification", model_name=name, hyperparameters={"params": params}), ADMIN_RUN
        )
        run_id = f"manual__{uuid.uuid4().hex[:8]}"
        dataset = training.build_training_set(request, dag_id="train_model", run_id=run_id)
        fitted = training.fit_model(request, dataset)
        version = training.register_model(request, dataset, fitted, dag_id="train_model", run_id=run_id)["version"]
        contenders[label] = version
        scores[version] = fitted["metrics"]["roc_auc"]

    def slow_champion_score(champion) -> float:
        time.sleep(1.0)  # scoring a real champion takes a while: both gates are inside at once
        return scores[str(champion.version)]

    def gate(version: str):
        return registry.gate(name, version, metric="roc_auc", score=scores[version], score_champion=slow_champion_score)

    with ThreadPoolExecutor(2) as pool:
        decisions = dict(zip(contenders.values(), pool.map(gate, contenders.values()), strict=True))

    best = max(contenders.values(), key=scores.get)
    assert scores[contenders["strong"]] > scores[contenders["medium"]] > scores[first["registered"]["version"]]
    assert MlflowHook().client.get_model_version_by_alias(name, CHAMPION).version == best
    # One gate went first against v1; the other then met that gate's outcome as the champion.
    champions_met = sorted(decision.champion_version for decision in decisions.values())
    assert champions_met[0] == first["registered"]["version"] and champions_met[1] in contenders.values()


def test_retrying_register_never_creates_a_second_version(stack):
    result = train(request_for("sklearn", "classification"))
    again = training.register_model(
        result["request"],
        result["dataset"],
        result["fitted"],
        dag_id="train_model",
        run_id=MlflowHook().client.get_run(result["dataset"]["mlflow_run_id"]).data.tags["airflow.run_id"],
    )
    assert again["version"] == result["registered"]["version"] and not again["created"]
    name = result["registered"]["model_name"]
    assert len(MlflowHook().client.search_model_versions(f"name = '{name}'")) == 1


def test_retrying_fit_reuses_the_model_the_first_try_logged(stack):
    result = train(request_for("sklearn", "classification"))
    again = training.fit_model(result["request"], result["dataset"])
    assert again["model_uri"] == result["fitted"]["model_uri"]
    assert again["metrics"] == pytest.approx(result["fitted"]["metrics"])
    run = MlflowHook().client.get_run(result["dataset"]["mlflow_run_id"])
    assert len(run.outputs.model_outputs) == 1


def test_entities_restrict_the_training_set(stack):
    request = request_for("sklearn", "classification")
    request["data_source"]["entities"] = {"customer_id": list(range(1, 401))}
    result = train(request)
    assert result["dataset"]["lineage"]["rows"] == 400


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data_source": {"feature_views": ["nope"], "target_column": "churned"}}, "unknown feature view(s) nope"),
        (
            {"data_source": {"feature_views": ["customer_features"], "target_column": "tenure"}},
            "target column 'tenure' is not in label table 'customer_labels'",
        ),
        (
            {"hyperparameters": {"params": {"n_estimators": 10, "learning_rat": 0.1}}},
            "does not accept hyperparameter(s) learning_rat",
        ),
        ({"hyperparameters": {"params": {"n_estimators": -3}}}, "n_estimators"),
        ({"algorithm": "ridge"}, "algorithm 'ridge' is not available for sklearn classification"),
        ({"promotion": {"metric": "rmse"}}, "metric 'rmse' does not apply to classification"),
    ],
    ids=[
        "unknown-view",
        "missing-target",
        "unknown-hyperparameter",
        "bad-hyperparameter",
        "bad-algorithm",
        "bad-metric",
    ],
)
def test_bad_requests_fail_before_anything_is_created(stack, changes, message):
    request = request_for("sklearn", "classification", **changes)
    with pytest.raises(InputError) as raised:
        training.validate_request(request, ADMIN_RUN)
    assert message in str(raised.value)
    assert not MlflowHook().client.search_model_versions(f"name = '{request['model_name']}'")


def test_empty_training_set_is_refused(stack):
    request = request_for("sklearn", "classification")
    request["data_source"]["entities"] = {"customer_id": [10**9]}
    checked = training.validate_request(request, ADMIN_RUN)
    with pytest.raises(InputError, match="empty training set: label table 'customer_labels' has no rows"):
        training.build_training_set(checked, dag_id="train_model", run_id="manual__empty")


def test_one_class_target_is_refused(stack):
    labels = gold.load_table("customer_labels").scan().to_pandas()
    stayed = labels.loc[labels["churned"] == 0, "customer_id"].head(50).tolist()
    request = request_for("sklearn", "classification")
    request["data_source"]["entities"] = {"customer_id": stayed}
    checked = training.validate_request(request, ADMIN_RUN)
    with pytest.raises(InputError, match="target 'churned' has a single class"):
        training.build_training_set(checked, dag_id="train_model", run_id="manual__oneclass")
