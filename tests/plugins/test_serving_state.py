"""Serving state from what runs: route ownership per profile, the router's own routes only, and what
``/mlops/models`` and the Models page say serves (from the targets, not only the registry's tags)."""

from __future__ import annotations

import json

from starlette.testclient import TestClient

from asgard.api import models_page
from asgard.core.settings import Settings
from asgard.deploy.routes import INSTALL_LABEL, PROFILE_LABEL, RouteTable, owner_of
from asgard.deploy.serving_state import (
    Observation,
    Served,
    observe,
    targets_recorded,
    targets_to_ask,
    with_serving_state,
)
from asgard.local.router import create_app
from conftest import free_port


def test_each_profile_of_one_home_has_its_own_routes_and_labels(tmp_path):
    embedded = Settings(home=tmp_path, profile="embedded")
    production = Settings(home=tmp_path, profile="production")
    other_home = Settings(home=tmp_path / "other", profile="embedded")
    assert embedded.routes_file != production.routes_file and embedded.routes_file.name == "routes.json"
    assert owner_of(embedded)["install"] == owner_of(production)["install"] != owner_of(other_home)["install"]

    mine, theirs = RouteTable.for_settings(embedded), RouteTable.for_settings(production)
    assert mine.owner_labels() == {PROFILE_LABEL: "embedded", INSTALL_LABEL: owner_of(embedded)["install"]}
    # Even written to one file (a table shared before routes had owners), each reads only its own.
    shared = RouteTable(embedded.routes_file, owner_of(production))
    mine.set("churn", {"upstream": "http://10.0.0.1:8080", "version": "1", "container": "c-embedded"})
    shared.set("other", {"upstream": "http://10.0.0.2:8080", "version": "7", "container": "c-production"})
    assert set(mine.routes()) == {"churn"} and set(shared.routes()) == {"other"}
    assert json.loads(embedded.routes_file.read_text())["churn"]["owner"] == owner_of(embedded)
    mine.set("other", None)  # not its route: left alone
    assert set(shared.routes()) == {"other"}
    assert theirs.routes() == {}


def test_routes_written_before_owners_are_nobodys_until_their_containers_say_whose(tmp_path):
    """An older table was shared by both profiles: its ownerless routes are served by neither until the
    reconcile adopts each one its container belongs to, and drops the other profile's."""
    embedded, production = Settings(home=tmp_path, profile="embedded"), Settings(home=tmp_path, profile="production")
    mine = RouteTable.for_settings(embedded)
    mine.set("churn", {"upstream": "http://10.0.0.1:8080", "version": "1", "container": "c-embedded"})
    raw = json.loads(embedded.routes_file.read_text())
    containers = {
        "c-old-embedded": {"profile": "embedded"},  # told by its online store (SQLite)
        "c-old-production": {"profile": "production"},  # told by its online store (the door's socket)
        "c-other-home": {"profile": "embedded", "install": "0123456789ab"},
        "c-unlabelled": {},
        "c-gone": None,
    }
    for container in containers:
        raw[container.removeprefix("c-")] = {"upstream": "http://10.0.0.9:8080", "version": "2", "container": container}
    embedded.routes_file.write_text(json.dumps(raw))
    assert set(mine.routes()) == {"churn"}  # none of them is forwarded to before it is adopted

    done = mine.adopt_unowned(containers.get)
    assert set(mine.routes()) == {"churn", "old-embedded", "unlabelled", "gone"}
    assert sorted(line.split(":")[0] for line in done if "dropped" in line) == ["old-production", "other-home"]
    written = json.loads(embedded.routes_file.read_text())
    assert set(written) == {"churn", "old-embedded", "unlabelled", "gone"}
    assert all(route["owner"] == owner_of(embedded) for route in written.values())
    assert mine.adopt_unowned(containers.get) == []  # nothing left to adopt: the file is left as it is
    assert RouteTable.for_settings(production).adopt_unowned(containers.get) == []  # it has no table yet


def test_the_router_forwards_to_its_own_profiles_routes_only(tmp_path):
    embedded = Settings(home=tmp_path, profile="embedded")
    foreign = RouteTable(embedded.routes_file, owner_of(Settings(home=tmp_path, profile="production")))
    foreign.set("churn", {"upstream": "http://127.0.0.1:9", "version": "3", "container": "c-production"})
    with TestClient(create_app(embedded.routes_file, owner_of(embedded))) as router:
        assert router.get("/routes").json() == {}
        answer = router.post("/models/churn/predict", json={})
        assert answer.status_code == 404 and "no model named 'churn'" in answer.text
        assert router.get("/health?profile=embedded").json()["profile"] == "embedded"
        other = router.get("/health?profile=production")
        assert other.status_code == 409 and "embedded profile's routes" in other.json()["detail"]


def test_a_target_that_does_not_answer_is_unknown_not_a_crash(tmp_path):
    settings = Settings(home=tmp_path, profile="embedded", router_port=free_port(), docker_host="unix:///nonexistent")
    observation = observe(settings)
    assert observation.served == [] and set(observation.unknown) == {"docker"}
    model = {"model_name": "churn", "aliases": {"champion": "2"}, "versions": [_version("2", "serving")], **UPDATED}
    shown = with_serving_state(model, observation)
    assert shown["serving"] == [] and shown["serving_state"]["state"] == "unknown"
    assert shown["versions"][0]["serving"]["state"] == "unknown"
    assert "did not answer" in shown["versions"][0]["serving"]["reason"]
    page = models_page.models_index([shown])
    assert "<span class='unknown'>unknown</span> on docker" in page


UPDATED = {"latest_version": "4", "updated_at": "2026-12-05T10:00:00+00:00"}


def _version(number: str, status: str | None = None, target: str = "docker", **deployment) -> dict:
    recorded = {"status": status, "target": target, **deployment} if status else None
    return {"version": number, "aliases": [], "tags": {}, "gate": {}, "metrics": {}, "run_id": None,
            "deployment": recorded}  # fmt: skip


def test_serving_comes_from_the_targets_with_roles_and_what_is_not_the_champion():
    versions = [
        _version("4", "rolled_back"),
        _version("3", "serving"),
        _version("2", "serving"),  # a stale tag: nothing runs it
        _version("1", "replaced", replaced_by="2", replaced_at="2026-12-05T10:00:00+00:00"),
    ]
    model = {"model_name": "churn", "aliases": {"champion": "4"}, "versions": versions, **UPDATED}
    endpoint = "http://127.0.0.1:8700/models/churn"
    observation = Observation(
        served=[
            Served("churn", "3", "docker", "stable", endpoint, "c3"),
            Served("churn", "4", "docker", "canary", endpoint, "c4"),
            Served("other", "9", "docker", "stable", "x", "c9"),
        ],
        asked={"docker"},
    )
    shown = with_serving_state(model, observation)
    assert [(item["version"], item["role"]) for item in shown["serving"]] == [("3", "stable"), ("4", "canary")]
    states = {version["version"]: version["serving"] for version in shown["versions"]}
    assert states["3"]["state"] == "serving" and "serves without being @champion" in states["3"]["note"]
    assert states["4"]["state"] == "serving" and states["4"]["role"] == "canary" and states["4"]["champion"]
    assert states["2"]["state"] == "not_serving" and "nothing there runs it now" in states["2"]["note"]
    assert states["1"]["state"] == "not_serving" and states["1"]["recorded_status"] == "replaced"
    page = models_page.model_page(shown, {"records": []}, mlflow_url="http://mlflow")
    assert "<b class='serving'>serving</b> (canary on docker)" in page
    assert "replaced by v2 at 2026-12-05T10:00:00+00:00" in page
    index = models_page.models_index([shown])
    assert "v3</span> stable on docker" in index and "v4</span> canary on docker" in index
    # The targets asked: those versions were deployed to, and the embedded profile's Docker target always.
    embedded, production = Settings(profile="embedded"), Settings(profile="production")
    assert targets_recorded(versions) == {"docker"} and targets_recorded([_version("6")]) == set()
    assert targets_to_ask(production, targets_recorded([_version("5", "serving", target="kubernetes")])) == {
        "kubernetes"
    }
    assert targets_to_ask(embedded, set()) == {"docker"} and targets_to_ask(production, set()) == set()
    unasked = with_serving_state({**model, "versions": [_version("5", "serving", target="kubernetes")]}, observation)
    assert unasked["versions"][0]["serving"]["state"] == "unknown"


def test_a_regression_trial_shows_its_differences_and_a_classifiers_its_agreement():
    regression = {
        "decision": "promoted",
        "reason": "within limits",
        "model_type": "regression",
        "measure": "relative_p95_abs_difference",
        "requests": "120",
        "mean_abs_difference": "0.8",
        "p95_abs_difference": "2.5",
        "stable_std": "10.1",
        "relative_p95_abs_difference": "0.2475",
        "max_difference": "1.0",
    }
    classifier = {"decision": "rolled_back", "reason": "breach", "agreement": "0.8", "requests": "50"}
    versions = [_version("2", "serving", shadow=regression), _version("1", "rolled_back", shadow=classifier)]
    page = models_page.model_page(
        {"model_name": "diabetes", "aliases": {}, "versions": versions}, {"records": []}, mlflow_url="http://mlflow"
    )
    assert "mean_abs_difference 0.8, p95_abs_difference 2.5, stable_std 10.1" in page
    assert "relative_p95_abs_difference 0.2475, max_difference 1.0" in page
    assert "agreement 0.8" in page and "agreement" not in page.split("v2")[1].split("</tr>")[0]
