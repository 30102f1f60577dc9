"""Which requests to Airflow's own REST API change runs of the platform's model DAGs, and which runs
(``asgard.api.run_guard``); the guard itself runs in the real API server in tests/integration/test_teams.py."""

from __future__ import annotations

import pytest

from asgard.api.run_guard import ANY, Change, _route_path, _token, changes_of, changes_platform_pool, needs_body

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


def test_a_read_of_one_model_run_names_it_and_reads_of_many_are_redacted():
    from asgard.api.run_reads import read_of_one_run, redacts

    for path in (BASE, f"{BASE}/taskInstances/train/logs/1", f"{BASE}/taskInstances/train/xcomEntries/out",
                 f"{BASE}/hitlDetails", f"{BASE}/upstreamAssetEvents"):  # fmt: skip
        assert read_of_one_run("GET", path).run_id == RUN, path
    assert read_of_one_run("POST", f"{BASE}/taskInstances/list").run_id == RUN
    assert read_of_one_run("GET", f"/api/v2/dags/~/dagRuns/{RUN}/hitlDetails").dag_id == "~"  # any model DAG's
    assert read_of_one_run("GET", "/api/v2/dags/train_model/dagRuns/list").run_id == "list"  # a run named so
    for method, path in (
        ("GET", "/api/v2/dags/train_model/dagRuns"),  # many runs: answered redacted
        ("GET", "/api/v2/dags/train_model/dagRuns/~/taskInstances"),
        ("POST", "/api/v2/dags/~/dagRuns/list"),
        ("GET", f"/api/v2/dags/check_platform/dagRuns/{RUN}"),  # not a model DAG
        ("PATCH", BASE),  # a change: the guard's other half
    ):
        assert read_of_one_run(method, path) is None, (method, path)
    assert redacts("GET", "/api/v2/dags/~/dagRuns") and redacts("GET", "/api/v2/eventLogs")
    assert redacts("GET", "/api/v2/assets/events") and redacts("POST", "/api/v2/dags/~/dagRuns/list")
    assert not redacts("POST", "/api/v2/dags/x/dagRuns") and not redacts("GET", "/mlops/models")
    assert not redacts("GET", "/execution/task-instances/x") and not redacts("GET", "/api/v2/config")


def test_what_another_teams_runs_tell_is_withheld_from_a_list_and_the_rest_is_kept():
    """Each list an answer may be: a run's conf, a task instance's rendered fields, an audit entry's extra, an
    approval's evidence and an Asset event's extra; the caller's own (and other DAGs') are kept as they are.
    Whose a run is comes from Airflow's database (here: a reader told which runs are the caller's), never
    from the answer: an item planted in a conf is not looked at."""
    from asgard.api.run_reads import RunReader, redact
    from asgard.core.teams import Actor

    class Reader(RunReader):
        def read_runs(self, runs):
            self.batch = sorted(runs)

        def may_read_run(self, dag_id, run_id):
            self.asked.append((dag_id, run_id))
            return run_id == "mine"

        def team_of(self, model):
            return {"own_model": "beta", "x": "alpha"}.get(model)  # as MLflow's registry says

    reader = Reader(Actor("bob", frozenset({"beta"})))
    reader.asked = []
    planted = {"dag_id": "train_model", "dag_run_id": "theirs", "conf": {"model_name": "own_model"}}
    answer = {
        "dag_runs": [
            {"dag_id": "train_model", "dag_run_id": "theirs", "conf": {"model_name": "x"}, "note": "n"},
            {"dag_id": "train_model", "dag_run_id": "mine", "conf": {"model_name": "own_model", "p": planted}},
            {"dag_id": "check_platform", "dag_run_id": "r3", "conf": {"anything": 1}},
        ],
        "task_instances": [
            {"dag_id": "score_batch", "dag_run_id": "theirs", "rendered_fields": {"o": 1}, "rendered_map_index": "x"},
            {"dag_id": "score_batch", "dag_run_id": "mine", "rendered_fields": {"op": "y"}},
        ],
        "event_logs": [
            {"dag_id": "train_model", "run_id": None, "event": "trigger_dag_run", "owner": "alice", "extra": "{..}"},
            {"dag_id": "train_model", "run_id": None, "event": "trigger_dag_run", "owner": "bob", "extra": "{..}"},
        ],
        "hitl_details": [
            {"task_instance": {"dag_id": "deploy_model", "dag_run_id": "theirs"}, "body": "evidence",
             "params_input": {"reason": "r"}, "subject": "Deploy x v2?", "chosen_options": ["Approve"]},
        ],
        "asset_events": [
            {"source_dag_id": "monitor_model", "source_run_id": "mine", "extra": {"model_name": "x", "conf": {}}},
            {"source_dag_id": "train_model", "source_run_id": "mine", "extra": {"model_name": "own_model"}},
            # Handed on by another team's deploy run: the event is still the model's team's.
            {"source_dag_id": "deploy_model", "source_run_id": "theirs", "extra": {"model_name": "own_model", "v": 2}},
            # Naming no registered model: the run that sent it decides.
            {"source_dag_id": "monitor_model", "source_run_id": "mine", "extra": {"model_name": "new", "v": 1}},
            {"source_dag_id": "monitor_model", "source_run_id": "theirs", "extra": {"model_name": "new", "v": 1}},
        ],
    }  # fmt: skip
    redact(answer, reader)
    runs, instances, logs, approvals, events = answer.values()
    assert runs[0]["conf"] == {} and runs[0]["note"] is None and runs[0]["dag_run_id"] == "theirs"
    assert runs[1]["conf"]["p"] == planted and runs[2]["conf"] == {"anything": 1}
    assert instances[0]["rendered_fields"] == {} and instances[0]["rendered_map_index"] is None
    assert instances[1]["rendered_fields"] == {"op": "y"}
    assert logs[0]["extra"] is None and logs[1]["extra"] == "{..}"  # bob's own entry stays
    assert approvals[0]["body"] is None and approvals[0]["params_input"] == {} and approvals[0]["subject"]
    assert approvals[0]["chosen_options"] == []
    assert events[0]["extra"] == {} and events[1]["extra"] == {"model_name": "own_model"}  # a model of another team
    assert events[2]["extra"] == {"model_name": "own_model", "v": 2}
    assert events[3]["extra"] == {"model_name": "new", "v": 1} and events[4]["extra"] == {}
    assert ("check_platform", "r3") not in reader.asked and reader.asked.count(("train_model", "theirs")) == 1
    # One query reads every run the items name (and only the model DAGs' runs).
    named = {("train_model", "theirs"), ("train_model", "mine"), ("score_batch", "theirs"), ("score_batch", "mine")}
    assert set(reader.batch) == named | {
        ("deploy_model", "theirs"),
        ("monitor_model", "mine"),
        ("monitor_model", "theirs"),
    }


def test_filters_and_orders_that_would_tell_a_withheld_field_are_named():
    from asgard.api.run_reads import telling_filter

    assert telling_filter("conf_contains=%22lr%22&limit=5", None) == "conf_contains"
    assert telling_filter("order_by=-conf", None) == "order_by=-conf"
    assert telling_filter("order_by=id&order_by=extra", None) == "order_by=extra"
    assert telling_filter("", {"conf_contains": "x"}) == "conf_contains"
    assert telling_filter("", {"order_by": ["run_after", "-note"]}) == "order_by=-note"
    assert telling_filter("body_search=evidence", None) == "body_search"
    assert telling_filter("order_by=-run_after&limit=50&conf_contains=", {"page_limit": 100}) is None


def test_a_promotions_deploy_run_is_read_by_the_team_it_deploys_for_and_changed_only_by_all_it_carries():
    """Two teams' promotions landed in one scheduler loop start one deploy_model run: it deploys the newest and
    hands the other on to a run of its own. The deployed model's team reads it (seen: bob refused his own
    approval's page because alice's promotion rode along); a change of it (a clear, a mark, a delete) needs
    every team it carries (bob must not drop or re-announce alice's promotion). Any other run is read and
    changed by every team its events name. The choice does not depend on the order the events come in."""
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from asgard.api.run_subjects import named_models, read_models

    at = datetime(2026, 12, 7, tzinfo=UTC)
    alice = SimpleNamespace(extra={"model_name": "alpha_model", "version": "3"}, timestamp=at)
    bob = SimpleNamespace(extra={"model_name": "beta_model", "version": "1"}, timestamp=at + timedelta(seconds=2))
    forged = SimpleNamespace(extra={"model_name": "gamma_model", "version": "²"}, timestamp=at + timedelta(seconds=9))
    for events in ([alice, bob, forged], [forged, bob, alice]):
        assert read_models("deploy_model", events) == ["beta_model"]
        assert sorted(named_models(events)) == ["alpha_model", "beta_model", "gamma_model"]
    assert read_models("deploy_model", [forged]) == []  # names no model it could deploy: admins only
    assert read_models("retrain_model", [alice, bob]) == ["alpha_model", "beta_model"]
    tied = SimpleNamespace(extra={"model_name": "delta_model", "version": "1"}, timestamp=bob.timestamp)
    assert read_models("deploy_model", [tied, bob]) == read_models("deploy_model", [bob, tied]) == ["delta_model"]


def test_the_platform_pool_is_changed_by_its_own_path_or_a_bulk_change_of_pools():
    for method, path in (
        ("PATCH", "/api/v2/pools/asgard_memory"),
        ("DELETE", "/api/v2/pools/asgard_memory/"),
        ("PATCH", "/api/v2/pools"),
    ):
        assert changes_platform_pool(method, path), (method, path)
    for method, path in (
        ("GET", "/api/v2/pools/asgard_memory"),
        ("POST", "/api/v2/pools"),  # a new pool of another name: asgard_memory exists, a second is a 409
        ("PATCH", "/api/v2/pools/olaf_pool"),
        ("DELETE", "/api/v2/pools/asgard_memory_2"),
    ):
        assert not changes_platform_pool(method, path), (method, path)
