"""Every DAG file imports cleanly without any service running and follows the house policies."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from asgard.core.dag_defaults import PLATFORM_TAG

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS_FOLDER.glob("*.py") if not p.name.startswith("_"))
# The public interface (SPEC §2) plus the platform's own checks, by dag_id.
EXPECTED_DAG_IDS = {
    "check_platform",
    "materialize_features",
    "register_features",
    "train_model",
    "train_script",
    "deploy_model",
    "score_batch",
    "monitor_model",
    "retrain_model",
}


class NetworkAtParseTime(AssertionError):
    pass


@pytest.fixture(scope="module")
def dagbag():
    """The DagBag, parsed while any attempt to open a network connection raises."""
    from airflow.dag_processing.dagbag import DagBag

    real_connect = socket.socket.connect

    def refuse(self, address):
        raise NetworkAtParseTime(f"DAG parsing tried to connect to {address}")

    socket.socket.connect = refuse
    try:
        return DagBag(str(DAGS_FOLDER))
    finally:
        socket.socket.connect = real_connect


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}, f"import errors: {dagbag.import_errors}"


def test_expected_dags_present(dagbag):
    assert set(dagbag.dag_ids) >= EXPECTED_DAG_IDS, f"missing: {EXPECTED_DAG_IDS - set(dagbag.dag_ids)}"


def test_one_dag_per_file_named_after_it(dagbag):
    for dag in dagbag.dags.values():
        assert Path(dag.fileloc).stem == dag.dag_id, f"{dag.dag_id} is defined in {dag.fileloc}"
    assert len(dagbag.dags) == len(DAG_FILES)


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.stem)
def test_dag_files_stay_thin(dag_file):
    # Logic belongs in plugins/asgard; a DAG file only wires (STYLE.md: > ~100 lines is a smell).
    lines = len(dag_file.read_text().splitlines())
    assert lines <= 120, f"{dag_file.name} has {lines} lines"


def test_policies(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert PLATFORM_TAG in dag.tags, f"{dag_id} lacks the {PLATFORM_TAG!r} tag"
        assert dag.doc_md and len(dag.doc_md.strip()) > 40, f"{dag_id} has no doc_md"
        for task in dag.tasks:
            assert task.owner and task.owner != "airflow", f"{dag_id}.{task.task_id} has no owner"
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has retries={task.retries}"


def test_params_are_schemas(dagbag):
    # Every conf key is a Param with a JSON-schema type, so the UI draws a form and the API answers 400.
    for dag_id, dag in dagbag.dags.items():
        for name in dag.params:
            schema = dag.params.get_param(name).schema
            assert "type" in schema, f"{dag_id} param {name!r} has no JSON-schema type: {schema}"


def test_every_form_field_says_what_it_is(dagbag):
    # The trigger form shows each field's title and description, grouped by section.
    for dag_id, dag in dagbag.dags.items():
        for name in dag.params:
            param = dag.params.get_param(name)
            assert param.schema.get("title") and param.schema.get("section"), f"{dag_id}.{name}: no title/section"
            assert param.description and len(param.description) > 20, f"{dag_id}.{name}: no description"


# What pressing Trigger on an untouched form does on a fresh install (the main job's sample data).
FILLED_FORMS = {
    "train_model",
    "score_batch",
    "register_features",
    "materialize_features",
    "monitor_model",
    "check_platform",
}
# The forms that wait for what only the user knows: the script and what to call its model.
FORMS_TO_FILL = {"train_script": {"script_name", "script_content", "experiment_name", "model_name"}}


def test_forms_open_filled_where_a_default_does_something_useful(dagbag):
    from airflow.sdk.definitions.param import ParamsDict

    for dag_id in FILLED_FORMS:
        params = dagbag.dags[dag_id].params
        assert ParamsDict(params).validate(), dag_id  # the defaults as they are pass the schemas
    train = dagbag.dags["train_model"].params
    assert (train["model_name"], train["framework"]) == ("churn_predictor", "sklearn")
    assert dagbag.dags["register_features"].params["name"] == "customer_support"
    score = dagbag.dags["score_batch"].params
    assert (score["model_name"], score["entities_df"]) == ("churn_predictor", {"customer_id": [1, 2, 3]})
    for dag_id, required in FORMS_TO_FILL.items():
        params = dagbag.dags[dag_id].params
        # A key that may stay empty (a nullable one, like a new model's team) asks nothing of the user.
        unset = {name for name in params if not params.get_param(name).has_value}
        nullable = {name for name in unset if "null" in str(params.get_param(name).schema.get("type"))}
        assert unset - nullable == required, dag_id


def _assets(items) -> set[str]:
    return {item.name for item in items}


def _scheduled_by(dag) -> set[str]:
    return {asset.name for asset in getattr(dag.timetable.asset_condition, "objects", [])}


def test_assets_chain_the_lifecycle_where_data_drives_it(dagbag):
    """What a task publishes is what the next DAG waits for: a promotion deploys, drift and new
    features retrain, and monitoring reads the batch outputs score_batch published."""
    from asgard.features.store import FEATURE_VIEWS_ALIAS
    from asgard.registry.models import CHAMPION_MODELS_ALIAS
    from asgard.scoring.plan import BATCH_PREDICTIONS_ALIAS
    from asgard.training.retraining import RETRAINING_REQUESTS

    def task(dag_id: str, task_id: str):
        return dagbag.dags[dag_id].get_task(task_id)

    for producer in ("train_model", "train_script"):
        assert _assets(task(producer, "gate_model").outlets) == {CHAMPION_MODELS_ALIAS}
    assert _scheduled_by(dagbag.dags["deploy_model"]) == {CHAMPION_MODELS_ALIAS}
    assert _assets(task("monitor_model", "request_retraining").outlets) == {RETRAINING_REQUESTS}
    assert _assets(task("materialize_features", "materialize").outlets) == {FEATURE_VIEWS_ALIAS}
    assert _scheduled_by(dagbag.dags["retrain_model"]) == {RETRAINING_REQUESTS, FEATURE_VIEWS_ALIAS}
    assert task("retrain_model", "train").partial_kwargs.get("trigger_dag_id") == "train_model"
    assert _assets(task("score_batch", "publish").outlets) == {BATCH_PREDICTIONS_ALIAS}
    assert _assets(task("monitor_model", "check").inlets) == {BATCH_PREDICTIONS_ALIAS}


def test_tasks_that_hold_large_frames_take_the_memory_pool_by_the_gib(dagbag):
    from asgard.core import memory_pool
    from asgard.core.settings import get_settings

    held = {
        (dag.dag_id, task.task_id): task.pool_slots
        for dag in dagbag.dags.values()
        for task in dag.tasks
        if task.pool == memory_pool.MEMORY_POOL
    }
    assert held == {
        ("train_model", "build_training_set"): memory_pool.TRAINING_SET_GB,
        ("train_model", "fit_model"): memory_pool.FIT_GB,
        ("train_script", "run_script"): memory_pool.script_gb(get_settings()),
        ("score_batch", "score_partition"): memory_pool.SCORING_GB,
        ("monitor_model", "check"): memory_pool.MONITORING_GB,
        ("materialize_features", "materialize"): memory_pool.MATERIALIZATION_GB,
    }
    # Every other task stays in Airflow's default pool: a pool nothing creates would hold it for ever.
    others = {task.pool for dag in dagbag.dags.values() for task in dag.tasks} - {memory_pool.MEMORY_POOL}
    assert others == {"default_pool"}
