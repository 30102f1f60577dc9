"""Deciding a deployment through Airflow's human-in-the-loop REST API, as a person: the approval a
``deploy_model`` run waits in (``asgard.operators.deployment_approval``), found, read and answered with
the person's token. No Airflow import: ``./asgard approve`` / ``reject`` start fast."""

from __future__ import annotations

from typing import Any

# The approval task of deploy_model, and the options of Airflow's ApprovalOperator.
APPROVAL_TASK = "approve_deployment"
APPROVE, REJECT = "Approve", "Reject"


class ApprovalError(RuntimeError):
    """Airflow refused a decision, or no approval came to wait; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _hitl_url(base_url: str, dag_id: str, run_id: str, task_id: str) -> str:
    from urllib.parse import quote

    run = quote(run_id, safe="")
    return f"{base_url.rstrip('/')}/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances/{task_id}/-1/hitlDetails"


def pending_approval(
    base_url: str, token: str, run_id: str, *, dag_id: str = "deploy_model", timeout: float = 300.0
) -> dict[str, Any]:
    """The approval a ``deploy_model`` run waits in (subject, body, assigned users), once it waits."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    url = _hitl_url(base_url, dag_id, run_id, APPROVAL_TASK)
    while True:
        answer = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        if answer.status_code == 200:
            detail = answer.json()
            state = (detail.get("task_instance") or {}).get("state")
            if detail.get("response_received") or state not in (None, "running", "deferred", "awaiting_input"):
                raise ApprovalError(f"{dag_id} {run_id}: the approval is already decided or over ({state})")
            if state == "awaiting_input":  # parked: a response resumes it at once
                return detail
        elif answer.status_code != 404:
            raise ApprovalError(f"{url}: {answer.status_code} {answer.text[:500]}", answer.status_code)
        if time.monotonic() > deadline:
            raise ApprovalError(f"{dag_id} {run_id} did not wait for an approval within {timeout:.0f}s")
        time.sleep(1.0)


def respond(
    base_url: str,
    token: str,
    run_id: str,
    *,
    approve: bool,
    reason: str = "",
    dag_id: str = "deploy_model",
    settle_seconds: float = 120.0,
) -> dict[str, Any]:
    """Approve or reject a waiting ``deploy_model`` run as the token's user (Airflow's HITL endpoint), and
    see the decision taken.

    Airflow can lose a response given the moment the task parks: the resume crosses the executor's
    report of the parked try, the scheduler retries the task, and the new try waits anew with no
    response (seen on a loaded machine). Until the approval task ends (``settle_seconds`` at most),
    such a new wait is answered again with the same decision, when it asks the same question (its
    subject names the same version: a new try of an alias's run may ask about another).
    """
    import time

    import httpx

    url = _hitl_url(base_url, dag_id, run_id, APPROVAL_TASK)
    headers = {"Authorization": f"Bearer {token}"}
    body = {"chosen_options": [APPROVE if approve else REJECT], "params_input": {"reason": reason}}
    asked = httpx.get(url, headers=headers, timeout=30)
    subject = asked.json().get("subject") if asked.status_code == 200 else None
    answer = _answer(httpx.patch(url, json=body, headers=headers, timeout=30))
    deadline = time.monotonic() + settle_seconds
    while time.monotonic() < deadline:
        time.sleep(1.0)
        found = httpx.get(url, headers=headers, timeout=30)
        if found.status_code != 200:
            continue
        detail = found.json()
        state = (detail.get("task_instance") or {}).get("state")
        if state in ("success", "skipped", "failed", "upstream_failed", "removed"):
            break
        if state == "awaiting_input" and not detail.get("response_received"):
            if subject is None or detail.get("subject") != subject:
                break  # another question: the person decides it anew
            again = httpx.patch(url, json=body, headers=headers, timeout=30)  # a new try waits: again
            if again.status_code != 200:
                break  # someone answered it meanwhile
    return answer


def _answer(answer: Any) -> dict[str, Any]:
    if answer.status_code != 200:
        detail = answer.json().get("detail") if "json" in answer.headers.get("content-type", "") else answer.text
        raise ApprovalError(f"the decision was refused ({answer.status_code}): {detail}", answer.status_code)
    return answer.json()


def waiting_approvals(base_url: str, token: str, subject: str = "") -> list[dict[str, Any]]:
    """The approvals ``deploy_model`` runs wait in that the token's user may see (Airflow's HITL list;
    those whose subject holds ``subject``), oldest first: run id, subject, since when."""
    import httpx

    params: dict[str, Any] = {"response_received": "false", "task_id": APPROVAL_TASK, "limit": 100}
    if subject:
        params["subject_search"] = subject
    answer = httpx.get(
        f"{base_url.rstrip('/')}/api/v2/dags/deploy_model/dagRuns/~/hitlDetails",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    if answer.status_code != 200:
        status = answer.status_code
        raise ApprovalError(f"listing the waiting approvals: {status} {answer.text[:300]}", status)
    return [
        {
            "run_id": detail["task_instance"]["dag_run_id"],
            "subject": detail["subject"],
            "since": detail.get("created_at"),
        }
        for detail in answer.json()["hitl_details"]
        if detail["task_instance"].get("state") == "awaiting_input"
    ]


def waiting_run(base_url: str, token: str, model_name: str, version: str) -> str:
    """The ``deploy_model`` run waiting for a decision on ``model_name`` v``version`` that the token's user
    may see; an :class:`ApprovalError` when none does (or more than one)."""
    subject = f"Deploy {model_name} v{version}?"
    waiting = [
        found["run_id"] for found in waiting_approvals(base_url, token, subject) if found["subject"].startswith(subject)
    ]
    if not waiting:
        raise ApprovalError(f"no deploy_model run waits for a decision on {model_name} v{version} (that you may see)")
    if len(waiting) > 1:
        raise ApprovalError(f"{len(waiting)} deploy_model runs wait for {model_name} v{version}: {', '.join(waiting)}")
    return waiting[0]


def approval_model(subject: str | None) -> str | None:
    """The model a waiting approval's subject names (``Deploy <model> v<n>?``; None: withheld, another team's)."""
    if not isinstance(subject, str):
        return None
    words = subject.split(" ")
    return words[1] if len(words) > 2 and words[0] == "Deploy" and words[2].startswith("v") else None


def decision_link(run_id: str) -> str:
    """Where the Airflow UI shows the run's approval form (its "required actions")."""
    from urllib.parse import quote

    return f"/dags/deploy_model/runs/{quote(run_id, safe='')}/tasks/{APPROVAL_TASK}/required_actions"
