"""Which requests to Airflow's own REST API change runs of the platform's model DAGs, and which runs
(``asgard.api.run_guard``); the guard itself runs in the real API server in tests/integration/test_teams.py."""

from __future__ import annotations

import pytest

from asgard.api.run_guard import ANY, Change, changes_of, needs_body

RUN = "manual__2026-12-06T10:00:00+00:00"
BASE = f"/api/v2/dags/train_model/dagRuns/{RUN}"


@pytest.mark.parametrize(
    ("method", "path", "what"),
    [
        ("POST", f"{BASE}/clear", "POST clear"),
        ("PATCH", BASE, "PATCH the run"),
        ("DELETE", BASE, "DELETE the run"),
        ("PATCH", f"{BASE}/taskInstances/train", "PATCH taskInstances/train"),
        ("PATCH", f"{BASE}/taskInstances/train/-1/dry_run", "PATCH taskInstances/train/-1/dry_run"),
        ("DELETE", f"{BASE}/taskInstances/train", "DELETE taskInstances/train"),
        ("PATCH", f"{BASE}/taskGroupInstances/group", "PATCH taskGroupInstances/group"),
        ("PATCH", f"{BASE}/taskInstances/train/xcomEntries/out", "PATCH taskInstances/train/xcomEntries/out"),
        ("PUT", f"{BASE}/taskInstances/train/state-store/key", "PUT taskInstances/train/state-store/key"),
    ],
)  # fmt: skip
def test_a_change_of_one_run_names_that_run(method, path, what):
    assert changes_of(method, path) == [Change("train_model", RUN, what)]


def test_encoded_run_ids_are_read_as_airflow_reads_them():
    encoded = "/api/v2/dags/deploy_model/dagRuns/manual__2026-12-06T10%3A00%3A00%2B00%3A00/clear"
    assert changes_of("POST", encoded) == [Change("deploy_model", RUN, "POST clear")]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", BASE, None),  # reads
        ("POST", "/api/v2/dags/train_model/dagRuns/list", None),
        ("POST", "/api/v2/dags/~/dagRuns/~/taskInstances/list", None),
        ("POST", "/api/v2/dags/train_model/dagRuns", None),  # a trigger: the run's first task checks the team
        ("POST", "/api/v2/dags/train_model/favorite", None),  # the user's own star
        ("PATCH", "/api/v2/dags/train_model", {"is_paused": False}),  # unpausing: every team's runs go on
        ("PATCH", f"{BASE}/taskInstances/approve_deployment/-1/hitlDetails", None),  # the approval task checks
        ("POST", f"/api/v2/dags/materialize_features/dagRuns/{RUN}/clear", None),  # feature jobs are every team's
        ("POST", "/api/v2/backfills", None),
        ("POST", "/execution/task-instances/x/run", None),
    ],
)
def test_reads_triggers_and_other_dags_are_not_changes(method, path, body):
    assert changes_of(method, path, body) == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/api/v2/dags/train_model", {"is_paused": True}),  # pause: every team's runs wait
        ("PATCH", "/api/v2/dags/train_model", {"is_paused": False, "owners": ["bob"]}),
        ("DELETE", "/api/v2/dags/train_model", None),
        ("PATCH", "/api/v2/dags", None),  # pause by pattern
        ("POST", "/api/v2/dags/train_model/clearDagRuns", None),
        ("POST", "/api/v2/dags/train_model/clearPartitions", None),
        ("DELETE", "/api/v2/dags/train_model/assets/queuedEvents", None),
        ("POST", "/api/v2/dags/train_model/clearTaskInstances", {"only_failed": True}),  # every run
        ("POST", "/api/v2/dags/train_model/clearTaskInstances", {"dag_run_id": ANY}),
        ("PATCH", f"/api/v2/dags/~/dagRuns/{RUN}/taskInstances/train", None),
        ("PATCH", "/api/v2/dags/train_model/dagRuns", {"not": "a bulk body"}),
    ],
)
def test_changes_of_several_runs_or_of_the_dag_name_no_run(method, path, body):
    changes = changes_of(method, path, body)
    assert changes and all(change.run_id is None for change in changes), changes


def test_bodies_are_read_only_where_they_name_the_runs():
    assert needs_body("POST", "/api/v2/dags/train_model/clearTaskInstances")
    assert needs_body("PATCH", "/api/v2/dags/train_model")  # an unpause passes, a pause does not
    assert needs_body("PATCH", "/api/v2/dags/~/dagRuns")
    assert needs_body("PATCH", f"{BASE}/taskInstances")
    assert not needs_body("PATCH", f"{BASE}/taskInstances/train")
    assert not needs_body("POST", "/api/v2/dags/train_model/dagRuns")
    clear = changes_of("POST", "/api/v2/dags/train_model/clearTaskInstances", {"dag_run_id": RUN, "dry_run": True})
    assert clear == [Change("train_model", RUN, "clear task instances")]


def test_a_bulk_change_names_each_entitys_own_run():
    updates = [{"dag_run_id": "a", "state": "failed"}, {"dag_id": "deploy_model", "dag_run_id": "b"}]
    feature_run = {"dag_id": "materialize_features", "dag_run_id": "d"}  # not a model DAG's
    body = {
        "actions": [
            {"action": "update", "entities": updates},
            {"action": "delete", "entities": ["c"]},
            {"action": "update", "entities": [feature_run]},
            {"action": "delete", "entities": [{"dag_id": "~", "dag_run_id": "e"}]},
        ]
    }
    runs = [(change.dag_id, change.run_id) for change in changes_of("PATCH", "/api/v2/dags/train_model/dagRuns", body)]
    assert runs == [("train_model", "a"), ("deploy_model", "b"), ("train_model", "c"), (ANY, None)]
    # Task instances of one run: bare task ids stay in the path's run; an entity may name another run.
    body = {"actions": [{"action": "delete", "entities": ["train", {"task_id": "gate", "dag_run_id": "other"}]}]}
    runs = [(change.dag_id, change.run_id) for change in changes_of("PATCH", f"{BASE}/taskInstances", body)]
    assert runs == [("train_model", RUN), ("train_model", "other")]
