"""Teams (issue 51): who belongs to which team, and the one check of who may act on a model, against a
real MLflow registry (SQLite). The whole matrix through the real Airflow: tests/integration/test_teams.py."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from asgard.core.errors import InputError
from asgard.core.settings import Settings
from asgard.core.teams import Actor, TeamRefusal, directory, parse_team_members, run_actor, user_actor
from conftest import sqlite_mlflow_home

USERS = "admin:admin:default,alice:user:alpha,bob:user:beta,carol:user:alpha|beta,vic:viewer"


@pytest.fixture
def users(monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", USERS)
    return Settings()


def test_the_directory_is_the_auth_managers_users_with_their_teams(users):
    members = directory(users)
    assert members["alice"].teams == {"alpha"} and not members["alice"].admin
    assert members["carol"].teams == {"alpha", "beta"}
    assert members["admin"].admin and members["vic"].teams == frozenset()


def test_team_members_setting_names_bad_entries():
    assert parse_team_members("alice=alpha;root=*")["root"].admin
    with pytest.raises(ValueError, match=r"'mallory' is not 'user=team1\|team2'"):
        parse_team_members("alice=alpha;mallory")
    with pytest.raises(ValueError, match="airflow_users"):
        Settings(airflow_users="eve:superuser:alpha")


def test_a_run_acts_as_the_user_who_triggered_it_or_for_the_model(users):
    alice = run_actor(SimpleNamespace(triggering_user_name="alice", run_type="manual"), users)
    assert alice.teams == {"alpha"} and not alice.for_the_model
    # Runs a TriggerDagRunOperator starts keep the user (Airflow copies it); an Asset's run has none.
    assert run_actor(SimpleNamespace(triggering_user_name="bob", run_type="operator_triggered"), users).teams == {
        "beta"
    }
    promotion = run_actor(SimpleNamespace(triggering_user_name=None, run_type="asset_triggered"), users)
    assert promotion.for_the_model and promotion.may_act_for("beta")
    # A retraining: retrain_model (an Asset's run, no user) starts train_model through its operator.
    retraining = run_actor(SimpleNamespace(triggering_user_name=None, run_type="operator_triggered"), users)
    assert retraining.for_the_model and retraining.may_act_for("beta") and not retraining.teams
    nobody = run_actor(SimpleNamespace(triggering_user_name=None, run_type="manual"), users)
    assert not nobody.may_act_for("default")
    assert not user_actor("mallory", users).may_act_for("a")


def test_a_new_models_team(users):
    assert user_actor("alice", users).team_for_new_model(None, users) == "alpha"
    assert user_actor("admin", users).team_for_new_model(None, users) == "default"
    with pytest.raises(TeamRefusal, match="several teams"):
        user_actor("carol", users).team_for_new_model(None, users)
    assert user_actor("carol", users).team_for_new_model("beta", users) == "beta"
    with pytest.raises(TeamRefusal, match="not a member of team 'beta'"):
        user_actor("alice", users).team_for_new_model("beta", users)
    with pytest.raises(TeamRefusal, match="belongs to no team"):
        user_actor("vic", users).team_for_new_model(None, users)
    assert Actor("root", frozenset(), admin=True).team_for_new_model(None, users) == users.default_team


def test_a_model_belongs_to_the_team_that_registered_it_first(users, tmp_path):
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.ownership import check_access, claim, model_team

    with sqlite_mlflow_home(tmp_path):
        hook, settings = MlflowHook(), Settings()
        alice, bob = user_actor("alice", settings), user_actor("bob", settings)
        assert check_access(hook, "churn", alice, settings, may_create=True) == "alpha"
        assert check_access(hook, "churn", bob, settings) is None  # not registered yet: the caller's 404 applies
        assert claim(hook, "churn", "alpha", settings) is True
        assert claim(hook, "churn", "alpha", settings) is False  # a retry finds its own
        with pytest.raises(
            TeamRefusal, match=r"bob \(teams: beta\) may not act on model 'churn': it belongs to team 'alpha'"
        ):
            check_access(hook, "churn", bob, settings, may_create=True)
        with pytest.raises(TeamRefusal, match="belongs to team 'alpha': team 'beta' may not register into it"):
            claim(hook, "churn", "beta", settings)
        admin = user_actor("admin", settings)
        assert check_access(hook, "churn", admin, settings) == "alpha"
        # A look-alike name ("churn" and a newline: the Params' "$" lets it through) is no model name.
        with pytest.raises(InputError, match="is not a model name"):
            check_access(hook, "churn\n", alice, settings, may_create=True)
        # A model from before teams (no tag) is the default team's.
        hook.client.create_registered_model("legacy")
        assert model_team(hook, "legacy", settings) == settings.default_team
        with pytest.raises(TeamRefusal):
            check_access(hook, "legacy", alice, settings)


def test_a_found_team_is_kept_a_while_for_reads_and_writes_ask_each_time(users, tmp_path, monkeypatch):
    """The API server guards every read by the model's team: for reads, a registered model's team is asked of
    MLflow once a minute, not per request; a name not registered yet is asked every time, and so is every write.
    A model an operator deleted and another team registered again is the new team's for writes at once, and
    for reads from the first write's look on."""
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry import ownership

    with sqlite_mlflow_home(tmp_path):
        hook, settings = MlflowHook(), Settings()
        asked: list[str] = []
        real = hook.client.get_registered_model
        monkeypatch.setattr(hook.client, "get_registered_model", lambda name: asked.append(name) or real(name))

        def read() -> str | None:
            return ownership.model_team(hook, "fresh", settings, fresh=False)

        assert read() is None and read() is None
        assert ownership.claim(hook, "fresh", "alpha", settings) is True
        assert [read() for _ in range(3)] == ["alpha"] * 3
        assert asked == ["fresh"] * 3  # twice missing, then once found
        assert ownership.model_team(hook, "fresh", settings) == "alpha"  # a write's look: MLflow again
        assert asked == ["fresh"] * 4
        monkeypatch.setattr(ownership, "KNOWN_TEAM_SECONDS", 0.0)
        assert read() == "alpha" and asked == ["fresh"] * 5
        monkeypatch.setattr(ownership, "KNOWN_TEAM_SECONDS", 60.0)

        alice, bob = user_actor("alice", settings), user_actor("bob", settings)
        assert read() == "alpha"  # known for reads
        hook.client.delete_registered_model("fresh")  # an operator, in MLflow itself
        assert ownership.claim(hook, "fresh", "beta", settings) is True  # registered again, by beta
        with pytest.raises(TeamRefusal, match="it belongs to team 'beta'"):
            ownership.check_access(hook, "fresh", alice, settings, may_create=True)  # a write: no stale team
        assert ownership.check_access(hook, "fresh", bob, settings) == "beta"
        assert read() == "beta"  # the writes' looks updated what reads know


def test_the_run_guards_reads_know_an_unregistered_name_for_seconds_and_its_changes_ask(users, tmp_path, monkeypatch):
    from asgard.api import run_guard, teams
    from asgard.registry.ownership import claim

    with sqlite_mlflow_home(tmp_path):
        teams.platform_mlflow.cache_clear()  # the API server's one hook: this test's MLflow
        try:
            hook = teams.platform_mlflow()
            asked: list[str] = []
            real = hook.client.get_registered_model
            monkeypatch.setattr(hook.client, "get_registered_model", lambda name: asked.append(name) or real(name))
            assert run_guard.team_of("later", fresh=False) is None
            assert run_guard.team_of("later", fresh=False) is None
            assert asked == ["later"]  # a page of runs naming it asks once
            assert claim(hook, "later", "alpha", Settings()) is True
            assert run_guard.team_of("later", fresh=False) is None  # reads: not registered, a few seconds more
            assert run_guard.team_of("later") == "alpha"  # a change of a run asks MLflow
            assert run_guard.team_of("later", fresh=False) == "alpha"
        finally:
            teams.platform_mlflow.cache_clear()
            run_guard._unregistered.clear()


def test_two_teams_claiming_one_new_name_at_once_one_wins(users, tmp_path):
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.ownership import claim

    with sqlite_mlflow_home(tmp_path):
        hook, settings = MlflowHook(), Settings()
        outcomes: dict[str, object] = {}

        def register(team: str) -> None:
            try:
                outcomes[team] = claim(hook, "contested", team, settings)
            except TeamRefusal as error:
                outcomes[team] = error

        threads = [threading.Thread(target=register, args=(team,)) for team in ("alpha", "beta")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(type(outcome).__name__ for outcome in outcomes.values()) == ["TeamRefusal", "bool"]


def test_airflows_database_is_given_every_team_the_users_name():
    from asgard.local.airflow_teams import teams_named

    users = ["admin:admin:default", "alice:user:alpha", "bob:user:beta|gamma", "carl:viewer"]
    assert teams_named(users, "default") == ["alpha", "beta", "default", "gamma"]


def test_a_later_task_refuses_a_hand_off_naming_another_model_or_team(users, tmp_path):
    """What an earlier task handed on (its XCom) can be changed through Airflow's REST API: a task that acts
    asks again, from the run's conf and its user, and refuses a hand-off that disagrees."""
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.ownership import claim, recheck

    alice_run = SimpleNamespace(triggering_user_name="alice", run_type="manual")
    with sqlite_mlflow_home(tmp_path):
        hook, settings = MlflowHook(), Settings()
        claim(hook, "alices", "alpha", settings)
        claim(hook, "bobs", "beta", settings)
        assert recheck(alice_run, "alices", {"model_name": "alices", "team": "alpha"}) == "alpha"
        with pytest.raises(TeamRefusal, match="names 'bobs': refused"):
            recheck(alice_run, "alices", {"model_name": "bobs"})
        with pytest.raises(TeamRefusal, match="is team 'alpha''s, not 'beta' as handed on"):
            recheck(alice_run, "alices", {"model_name": "alices", "team": "beta"})
        with pytest.raises(TeamRefusal, match="it belongs to team 'beta'"):
            recheck(alice_run, "bobs", {"model_name": "bobs"})


def test_the_image_builder_asks_again_before_it_reads_a_model(users, tmp_path):
    """deploy_model's build_image takes the model from resolve_request's hand-off (which Airflow's REST API
    can change): before it reads a byte of the model it asks again, from the run's conf and user."""
    from asgard.deploy.rollout import recheck_image_model
    from asgard.hooks.mlflow import MlflowHook
    from asgard.operators.serving_image import DockerBuildServingImageOperator
    from asgard.registry.ownership import claim

    alice_run = SimpleNamespace(triggering_user_name="alice", run_type="manual")
    build = DockerBuildServingImageOperator(
        task_id="build_image", model_name="bobs", version="1", check_model=recheck_image_model
    )
    with sqlite_mlflow_home(tmp_path):
        hook, settings = MlflowHook(), Settings()
        claim(hook, "alices", "alpha", settings)
        claim(hook, "bobs", "beta", settings)
        context = {"params": {"model_name": "alices"}, "dag_run": alice_run, "triggering_asset_events": {}}
        with pytest.raises(TeamRefusal, match="this run is for model 'alices', but what its earlier task handed on"):
            build.execute(context)  # the hand-off was changed to bob's model: nothing is read or built
        with pytest.raises(TeamRefusal, match="it belongs to team 'beta'"):
            build.execute({**context, "params": {"model_name": "bobs"}})  # nor by naming it in the conf
        recheck_image_model(context, "alices")  # her own model passes
