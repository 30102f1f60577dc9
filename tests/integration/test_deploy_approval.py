"""A promotion's deploy follows its model's policy, on the real embedded stack: ``approve`` waits in
deploy_model's approval task (Airflow's human-in-the-loop), decided in Airflow's UI in a real browser
(Chromium: the Required Actions page or the Models page's link, then the form), with the one-line CLI
and through Airflow's HITL REST API; ``auto`` deploys; ``manual`` does not; no decision in time is a
rejection; the second-person rule.

One train_model run per case, all at once; each promotion's Asset event starts the deploy_model run
the case is about (the path a retrain takes), so the cases share the time they wait.
"""

from __future__ import annotations

import html
import json
import time
import uuid

import httpx
import pytest
from mlflow import MlflowClient
from selenium.webdriver.common.by import By

from asgard.deploy import approval
from asgard.features import gold
from asgard.features import store as feature_store
from asgard.hooks import airflow_hitl as hitl
from asgard.hooks.airflow_api import AirflowApi
from asgard.local.examples import CHURN_MODEL_REQUEST
from asgard.registry.models import model_asset_uri
from e2e.browser import chromium, decide_required_action, log_in, open_required_action, open_the_models_page
from sample_data.gold_layer import GoldSpec, write_gold_layer

pytestmark = pytest.mark.integration

# The same gold layer as test_train_model_dag's (writing it again changes nothing).
SPEC = GoldSpec(customers=800, days=3, end="2026-11-01T00:00:00+00:00", seed=13)
# The case -> the model's policy (through PUT /mlops/models/{name}/deploy-policy).
CASES = {
    "approve": {"policy": "approve"},
    "browser": {"policy": "approve"},
    "reject": {"policy": "approve", "rollout": {"strategy": "canary", "percent": 25, "min_requests": 40}},
    "auto": {"policy": "auto"},
    "manual": {"policy": "manual"},
    # The admin trained it and is the team's only member: no one may decide; 30 s without a decision.
    # Triggered last, so its wait starts after the fixture has seen every training end.
    "second_person": {"policy": "approve", "second_person": True, "approval_timeout": 30},
}


def _policy(stack, name: str, body: dict, token: str | None = None) -> httpx.Response:
    return httpx.put(
        f"{stack.settings.airflow_url}/mlops/models/{name}/deploy-policy",
        json=body,
        headers={"Authorization": f"Bearer {token or stack.api.token}"},
        timeout=60,
    )


@pytest.fixture(scope="module")
def promoted(embedded_stack) -> dict[str, dict]:
    """Per case: the model, the version its train_model run promoted, and the deploy_model run it started."""
    stack, api = embedded_stack, embedded_stack.api
    write_gold_layer(SPEC, gold.GoldLocation.for_settings(stack.settings), log=lambda _: None)
    feature_store.apply_repo(stack.settings)
    suffix = uuid.uuid4().hex[:6]
    cases = {case: {"model_name": f"approval_{case}_{suffix}"} for case in CASES}
    for case, body in CASES.items():
        answer = _policy(stack, cases[case]["model_name"], body)
        assert answer.status_code == 200 and answer.json()["policy"] == body["policy"], answer.text
    api.wait_for_dag("deploy_model")
    api.unpause("deploy_model")
    api.wait_for_dag("train_model")
    api.unpause("train_model")
    for case in cases.values():
        case["train_run"] = api.trigger("train_model", {**CHURN_MODEL_REQUEST, "model_name": case["model_name"]})
        # Apart, so that no two promotions land in one scheduler loop: each case's deploy run is then the one
        # its training's event started (two in one loop share a run, which hands the other on as a new event).
        time.sleep(6)
    for case in cases.values():
        outcome = api.wait_for_run("train_model", case["train_run"], timeout=600)
        assert outcome.state == "success", outcome
        decision = api.task_result("train_model", case["train_run"], "gate_model")
        assert decision["promoted"], decision
        case["version"] = decision["version"]
        case["deploy_run"] = api.run_started_by(model_asset_uri(case["model_name"]), case["train_run"], "deploy_model")
    runs = [case["deploy_run"] for case in cases.values()]
    assert len(set(runs)) == len(runs), f"two promotions were taken by one deploy_model run: {cases}"
    return cases


def _decision(stack, name: str, version: str) -> dict[str, str]:
    client = MlflowClient(stack.settings.mlflow_url, stack.settings.mlflow_url)
    return approval.version_decision(client.get_model_version(name, version).tags) or {}


def _model(stack, name: str) -> dict:
    answer = httpx.get(
        f"{stack.settings.airflow_url}/mlops/models/{name}",
        headers={"Authorization": f"Bearer {stack.api.token}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_second_person_rule_refuses_the_trainer_and_no_decision_is_a_rejection(embedded_stack, promoted):
    stack, case = embedded_stack, promoted["second_person"]
    url = stack.settings.airflow_url
    pending = hitl.pending_approval(url, stack.api.token, case["deploy_run"], timeout=120)
    assert "second-person rule" in pending["body"]
    # The admin triggered the training: with the rule, not a decider (and the team has no one else).
    with pytest.raises(hitl.ApprovalError) as refused:
        hitl.respond(url, stack.api.token, case["deploy_run"], approve=True, reason="my own model")
    assert refused.value.status == 403
    outcome = stack.api.wait_for_run("deploy_model", case["deploy_run"], timeout=120)
    assert outcome.state == "success", outcome
    assert outcome.task_states["deploy_image"] == "skipped"
    decision = _decision(stack, case["model_name"], case["version"])
    assert decision == {**decision, "outcome": "rejected", "by": "timeout", "reason": "no decision in 30s"}


def test_reject_with_a_reason_changes_nothing_and_records_who_when_why(embedded_stack, promoted):
    stack, case = embedded_stack, promoted["reject"]
    url = stack.settings.airflow_url
    pending = hitl.pending_approval(url, stack.api.token, case["deploy_run"], timeout=120)
    # What a person needs to decide, in the form the UI shows.
    assert pending["subject"].startswith(f"Deploy {case['model_name']} v{case['version']}?")
    body = pending["body"]
    # The rollout plan is the model's own (set with its policy); with nothing serving, the first version replaces.
    plan = "strategy **canary**, 25% of traffic, until 40 requests or 300.0 s"
    for part in (
        "roc_auc on the same holdout",
        "What started it",
        "triggered train_model",
        plan,
        "first version replaces",
    ):
        assert part in body, (part, body)
    assert f"/mlops/ui/models/{case['model_name']}" in body and "#/experiments/" in body
    assert [user["id"] for user in pending["assigned_users"]] == ["admin"]
    # The Models page lists it first, with a link to its form in the Airflow UI.
    page = httpx.get(f"{url}/mlops/ui/models", headers={"Authorization": f"Bearer {stack.api.token}"}, timeout=60)
    assert page.status_code == 200 and "Waiting for a decision" in page.text, page.text[:500]
    assert html.escape(pending["subject"], quote=True) in page.text
    assert hitl.decision_link(case["deploy_run"]) in page.text
    # A reader (outside the deciders) is refused by Airflow.
    viewer = AirflowApi.login(url, *stack.manager.credentials("viewer"))
    with pytest.raises(hitl.ApprovalError) as refused:
        hitl.respond(url, viewer.token, case["deploy_run"], approve=True)
    assert refused.value.status == 403
    # The admin follows the Models page's link to the form in a real browser, and rejects with a reason.
    with chromium() as driver:
        log_in(driver, url, *stack.manager.admin_credentials())
        open_the_models_page(driver, url, case["model_name"])
        driver.switch_to.default_content()
        driver.get(f"{url}{hitl.decision_link(case['deploy_run'])}")
        form = decide_required_action(driver, "Reject", "holdout too small to trust")
        assert pending["subject"] in form and "The rollout plan" in form, form[:2000]
        outcome = stack.api.wait_for_run("deploy_model", case["deploy_run"], timeout=120)
        # The Models page in the UI shows the decision and its reason on the version; nothing serves it.
        page = open_the_models_page(driver, url, case["model_name"]).find_element(By.XPATH, "/html/body").text
        assert "holdout too small to trust" in page and "rejected" in page, page[:3000]
    assert outcome.state == "success", outcome
    assert outcome.task_states["approve_deployment"] == "success"
    assert {outcome.task_states[task] for task in ("build_image", "push_image", "deploy_image")} == {"skipped"}
    decision = _decision(stack, case["model_name"], case["version"])
    assert decision["outcome"] == "rejected" and decision["by"] == "admin", decision
    assert decision["reason"] == "holdout too small to trust" and decision["at"].startswith("20")
    model = _model(stack, case["model_name"])
    version = next(v for v in model["versions"] if v["version"] == case["version"])
    assert version["decision"]["reason"] == "holdout too small to trust"
    assert (version["deployment"] or {}).get("status") is None  # nothing serves it


def test_manual_policy_deploys_nothing_on_a_promotion(embedded_stack, promoted):
    stack, case = embedded_stack, promoted["manual"]
    outcome = stack.api.wait_for_run("deploy_model", case["deploy_run"], timeout=120)
    assert outcome.state == "success", outcome
    assert set(outcome.task_states.values()) == {"success", "skipped"}
    assert outcome.task_states["approve_deployment"] == "skipped"
    decision = _decision(stack, case["model_name"], case["version"])
    assert decision["outcome"] == "not_deployed" and decision["by"] == "policy manual", decision


def test_approve_deploys_and_auto_deploys_without_asking(embedded_stack, promoted, monkeypatch, capsys):
    """Approved with the one-line CLI (``./asgard approve MODEL VERSION``), which finds the waiting run."""
    from asgard.local.__main__ import main

    stack = embedded_stack
    url = stack.settings.airflow_url
    approved = promoted["approve"]
    hitl.pending_approval(url, stack.api.token, approved["deploy_run"], timeout=120)
    shown = stack.api.task_result("deploy_model", approved["deploy_run"], "resolve_request")["rollout"]
    # The team changes the model's rollout while the person decides: the approval is of the plan it showed.
    changed = {"policy": "approve", "rollout": {"strategy": "shadow", "percent": 50, "min_requests": 30}}
    assert _policy(stack, approved["model_name"], changed).status_code == 200
    monkeypatch.setenv("ASGARD_API_TOKEN", stack.api.token)
    # A version nothing waits for is named, and nothing is decided.
    assert main(["approve", approved["model_name"], "999", "--url", url]) != 0
    assert f"no deploy_model run waits for a decision on {approved['model_name']} v999" in capsys.readouterr().err
    assert (
        main(["approve", approved["model_name"], approved["version"], "--reason", "better on drift", "--url", url]) == 0
    )
    said = capsys.readouterr().out
    assert (
        f"approved {approved['model_name']} v{approved['version']} as admin (deploy_model {approved['deploy_run']})"
        in said
    )
    deployed_plans = {}
    for label, case, by in (("approve", approved, "admin"), ("auto", promoted["auto"], "policy auto")):
        outcome = stack.api.wait_for_run("deploy_model", case["deploy_run"], timeout=600)
        assert outcome.state == "success", outcome
        assert outcome.task_states["deploy_image"] == "success"
        deployed = stack.api.task_result("deploy_model", case["deploy_run"], "deploy_image")
        assert deployed["version"] == case["version"]
        decision = _decision(stack, case["model_name"], case["version"])
        assert decision["outcome"] == "approved" and decision["by"] == by, decision
        assert json.loads(decision["rollout"]) == deployed["rollout"], (decision, deployed)
        deployed_plans[label] = deployed["rollout"]
    assert deployed_plans["approve"] == shown and shown["strategy"] != "shadow", (deployed_plans, shown)
    version = next(v for v in _model(stack, approved["model_name"])["versions"] if v["version"] == approved["version"])
    assert version["decision"]["reason"] == "better on drift" and version["deployment"]["status"] == "serving"


def test_policy_endpoint_refuses_a_bad_policy_and_a_reader(embedded_stack):
    stack = embedded_stack
    assert _policy(stack, "approval_any", {"policy": "sometimes"}).status_code == 422
    viewer = AirflowApi.login(stack.settings.airflow_url, *stack.manager.credentials("viewer"))
    assert _policy(stack, "approval_any", {"policy": "auto"}, token=viewer.token).status_code == 403


def test_a_person_finds_the_approval_in_the_ui_sees_the_evidence_approves_and_it_serves(embedded_stack, promoted):
    """Airflow's Required Actions page lists the promotion; its form shows the gate's scores on the same
    holdout, what started it and the rollout plan; approved there with a reason, the version serves."""
    stack, case = embedded_stack, promoted["browser"]
    url = stack.settings.airflow_url
    subject = hitl.pending_approval(url, stack.api.token, case["deploy_run"], timeout=120)["subject"]
    with chromium() as driver:
        log_in(driver, url, *stack.manager.admin_credentials())
        open_required_action(driver, url, subject)
        form = decide_required_action(driver, "Approve", "the gate's holdout says so")
        for part in ("The gate", "roc_auc on the same holdout", "What started it", "admin triggered train_model",
                     "The rollout plan", "strategy canary"):  # fmt: skip
            assert part in form, (part, form[:3000])
        outcome = stack.api.wait_for_run("deploy_model", case["deploy_run"], timeout=600)
        assert outcome.state == "success" and outcome.task_states["deploy_image"] == "success", outcome
        page = open_the_models_page(driver, url, case["model_name"]).find_element(By.XPATH, "/html/body").text
    decision = _decision(stack, case["model_name"], case["version"])
    assert (decision["outcome"], decision["by"], decision["reason"]) == (
        "approved",
        "admin",
        "the gate's holdout says so",
    )
    endpoint = stack.api.task_result("deploy_model", case["deploy_run"], "deploy_image")["endpoint"]
    served = httpx.get(f"{endpoint}/metadata", timeout=30).json()
    assert served["model_version"] == case["version"]
    assert "serving (stable on docker)" in page, page[:3000]
    assert "deploy decision: approved by admin at 20" in page and "the gate's holdout says so" in page, page[:3000]
