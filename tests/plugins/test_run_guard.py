"""Which requests to Airflow's own REST API change runs of the platform's model DAGs, and which runs
(``asgard.api.run_guard``); the guard itself runs in the real API server in tests/integration/test_teams.py."""

from __future__ import annotations

import pytest

from asgard.api.run_guard import ANY, Change, _route_path, _token, changes_of, needs_body

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
        # Keys named like the routes that pass are still this run's entries.
        ("PATCH", f"{BASE}/taskInstances/train/xcomEntries/list", "PATCH taskInstances/train/xcomEntries/list"),
        ("PUT", f"{BASE}/taskInstances/t/state-store/hitlDetails/x", "PUT taskInstances/t/state-store/hitlDetails/x"),
    ],
)  # fmt: skip
def test_a_change_of_one_run_names_that_run(method, path, what):
    assert changes_of(method, path) == [Change("train_model", RUN, what)]


def test_run_ids_are_read_as_airflow_reads_them_decoded_once_by_the_server():
    # The ASGI path is decoded already: a run id holding "%41" is that run's, not "A"'s.
    assert changes_of("POST", f"/api/v2/dags/deploy_model/dagRuns/{RUN}/clear") == [
        Change("deploy_model", RUN, "POST clear")
    ]
    assert changes_of("POST", "/api/v2/dags/train_model/dagRuns/run%41/clear")[0].run_id == "run%41"


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
        # A task instance's state or clear that reaches earlier and later runs too.
        ("PATCH", f"{BASE}/taskInstances/train", {"new_state": "failed", "include_future": True}),
        ("PATCH", f"{BASE}/taskGroupInstances/group", {"new_state": "failed", "include_past": True}),
        ("POST", "/api/v2/dags/train_model/clearTaskInstances", {"dag_run_id": RUN, "include_past": True}),
        # Backfills of a model DAG run finished runs again with their own conf; Assets start runs.
        ("POST", "/api/v2/backfills", {"dag_id": "monitor_model", "from_date": "2026-01-01T00:00:00Z"}),
        ("PUT", "/api/v2/backfills/7/cancel", None),
        ("POST", "/api/v2/assets/events", {"asset_id": 1, "extra": {"model_name": "theirs"}}),
        ("DELETE", "/api/v2/assets/3/queuedEvents", None),
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
    assert needs_body("PATCH", f"{BASE}/taskInstances/train")  # include_past / include_future
    assert not needs_body("DELETE", f"{BASE}/taskInstances/train")
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


def test_a_bulk_body_names_its_runs_whatever_dag_the_path_names():
    """Airflow acts on each entity's own DAG and run: a path of another DAG does not hide them."""
    mark = {"actions": [{"action": "update", "entities": [{"dag_id": "train_model", "dag_run_id": RUN}]}]}
    runs = changes_of("PATCH", "/api/v2/dags/check_platform/dagRuns", mark)
    assert [(change.dag_id, change.run_id) for change in runs] == [("train_model", RUN)]
    entity = {"dag_id": "train_model", "dag_run_id": RUN, "task_id": "train", "new_state": "failed"}
    tasks = changes_of("PATCH", "/api/v2/dags/nope/dagRuns/nope/taskInstances", {"actions": [{"entities": [entity]}]})
    assert [(change.dag_id, change.run_id) for change in tasks] == [("train_model", RUN)]
    later = {**entity, "include_future": True}
    assert changes_of("PATCH", f"{BASE}/taskInstances", {"actions": [{"entities": [later]}]})[0].run_id is None
    assert needs_body("PATCH", "/api/v2/dags/check_platform/dagRuns") and needs_body("PATCH", f"{BASE}/taskInstances/t")
    assert changes_of("PATCH", "/api/v2/dags/check_platform/dagRuns", {"actions": []}) == []  # no model DAG's


def test_other_dags_backfills_and_backfill_previews_pass():
    assert changes_of("POST", "/api/v2/backfills", {"dag_id": "a_teams_own_dag"}) == []
    assert changes_of("POST", "/api/v2/backfills/dry_run", {"dag_id": "train_model"}) == []
    assert changes_of("GET", "/api/v2/assets/events") == []


def test_the_token_and_path_are_read_as_airflow_reads_them():
    def scope(*headers: tuple[str, str], path: str = BASE, root: str = "") -> dict:
        raw = [(name.encode(), value.encode()) for name, value in headers]
        return {"type": "http", "method": "PATCH", "path": path, "root_path": root, "headers": raw, "query_string": b""}

    # The first Authorization header, as Airflow's HTTPBearer takes it; a second one changes nothing.
    assert _token(scope(("authorization", "Bearer bob"), ("authorization", "Bearer x"))) == "bob"
    assert _token(scope(("authorization", "Basic eDp5"), ("cookie", "_token=bob"))) == "bob"
    # Cookies as Starlette parses them, across headers and past values Python's SimpleCookie gives up on.
    for cookies in (("x[1]=2; _token=bob",), ("path=/; _token=bob",), ('a="b; _token=bob',), ("_token=bob", "a=b")):
        assert _token(scope(*(("cookie", value) for value in cookies))) == "bob", cookies
    assert _token(scope()) is None
    # A root path ([api] base_url with a prefix) is not part of the route Airflow matches.
    assert _route_path(scope(path=f"/airflow{BASE}", root="/airflow")) == BASE
