"""Who decides that a promoted model version goes to production: the model's deployment policy and
the approval a person gives or refuses in the Airflow UI ("required actions") or its REST API.

- Policy (the ``deploy_policy`` setting; a model's ``asgard.deploy.policy`` tag overrides it):
  ``auto`` a promotion deploys; ``approve`` a person of the model's team decides; ``manual`` nothing
  deploys until someone triggers ``deploy_model`` by hand.
- A run triggered by hand counts as the approval of the person who triggered it when that person may
  decide (:func:`decision_refusal`); otherwise it waits for one who may, as a promotion's run does.
- The model's team: its members (Airflow's teams, :mod:`asgard.core.teams`), the auth manager's
  admins and the users the ``deploy_approvers`` setting names. With the second-person rule (``deploy_second_person``,
  or the model's ``asgard.deploy.second_person`` tag) the user who triggered the version's training
  may not decide.
- The wait ends after ``deploy_approval_timeout`` seconds (a model's ``asgard.deploy.approval_timeout``
  tag overrides it): no decision counts as a rejection, "no decision in ...".
- Every decision (approved, rejected, not deployed) is recorded on the version: ``deploy.decision.*``
  tags (outcome, by, at, reason, policy, run).
- How an approved (or ``auto``) promotion rolls out: the ``promotion_strategy`` setting (``canary`` by
  default, deploy_model's window and limits), or the model's ``asgard.deploy.rollout`` tag (a strategy
  and its limits, checked as deploy_model's Params check them). A run by hand rolls out as its conf says.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from asgard.core.errors import InputError

if TYPE_CHECKING:
    from asgard.core.settings import Settings
    from asgard.hooks.mlflow import MlflowHook

log = logging.getLogger(__name__)

POLICIES = ("auto", "approve", "manual")
# Registered-model tags (reserved: only the platform's policy endpoint sets them).
POLICY_TAG = "asgard.deploy.policy"
SECOND_PERSON_TAG = "asgard.deploy.second_person"
TIMEOUT_TAG = "asgard.deploy.approval_timeout"
ROLLOUT_TAG = "asgard.deploy.rollout"  # JSON: the strategy, window and limits of a promotion's deploy
# Version tags of a decision: deploy.decision.outcome / by / at / reason / policy / run.
DECISION_TAG_PREFIX = "deploy.decision."
APPROVED, REJECTED, NOT_DEPLOYED = "approved", "rejected", "not_deployed"
# Assigned when no one may decide: Airflow's check then refuses every user (an empty list lets anyone).
NO_ONE = {"id": "", "name": "no one of the model's team may decide"}


# --------------------------------------------------------------------------- policy
@dataclass(frozen=True)
class DeployPolicy:
    """What a promotion of one model does, and who may decide it."""

    mode: str
    second_person: bool
    timeout_seconds: int
    source: str  # "setting" or "model tag"
    # A promotion's rollout: the strategy and what of its window and limits differs from deploy_model's.
    rollout: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DeployPolicy:
        return cls(
            values["policy"],
            values["second_person"],
            values["approval_timeout"],
            values["source"],
            dict(values.get("rollout") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.mode,
            "second_person": self.second_person,
            "approval_timeout": self.timeout_seconds,
            "source": self.source,
            "rollout": self.rollout,
        }


def model_policy(hook: MlflowHook, model_name: str, settings: Settings) -> DeployPolicy:
    """The model's deployment policy: its tags where set, else the platform's settings."""
    from mlflow.exceptions import MlflowException

    try:
        tags = dict(hook.client.get_registered_model(model_name).tags or {})
    except MlflowException:
        tags = {}
    mode = tags.get(POLICY_TAG)
    mode = mode if mode in POLICIES else settings.deploy_policy
    second = tags.get(SECOND_PERSON_TAG)
    timeout = tags.get(TIMEOUT_TAG)
    return DeployPolicy(
        mode=mode,
        second_person=settings.deploy_second_person if second is None else second.lower() == "true",
        timeout_seconds=int(timeout)
        if timeout and timeout.isdigit() and int(timeout) > 0
        else settings.deploy_approval_timeout,
        source="model tag" if POLICY_TAG in tags else "setting",
        rollout=_promotion_rollout(tags.get(ROLLOUT_TAG), settings),
    )


def _promotion_rollout(tagged: str | None, settings: Settings) -> dict[str, Any]:
    """The model's rollout tag when it is a valid one, else the setting's strategy with deploy_model's limits."""
    from asgard.deploy.strategies import checked_rollout

    if tagged:
        try:
            return checked_rollout(json.loads(tagged))
        except (ValueError, TypeError, InputError):
            log.warning("a model's %s tag is not a valid rollout (%r): the setting applies", ROLLOUT_TAG, tagged[:200])
    return {"strategy": settings.promotion_strategy}


def set_model_policy(
    hook: MlflowHook,
    model_name: str,
    settings: Settings,
    *,
    team: str,
    policy: str | None,
    second_person: bool | None = None,
    approval_timeout: int | None = None,
    rollout: dict[str, Any] | None = None,
) -> DeployPolicy:
    """Set the model's own policy (None: back to the setting); the model is registered as ``team``'s if it is
    not yet, so a policy can be set before the first training."""
    from asgard.registry.ownership import claim

    if policy is not None and policy not in POLICIES:
        raise InputError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    client = hook.client
    claim(hook, model_name, team, settings)
    present = set(client.get_registered_model(model_name).tags or {})
    from asgard.deploy.strategies import checked_rollout

    rollout_text = json.dumps(checked_rollout(rollout), sort_keys=True) if rollout is not None else None
    values = ((POLICY_TAG, policy), (SECOND_PERSON_TAG, second_person), (TIMEOUT_TAG, approval_timeout))
    for tag, value in (*values, (ROLLOUT_TAG, rollout_text)):
        if value is not None:
            client.set_registered_model_tag(
                model_name, tag, str(value).lower() if isinstance(value, bool) else str(value)
            )
        elif tag in present:  # left out: the platform's setting applies again
            client.delete_registered_model_tag(model_name, tag)
    return model_policy(hook, model_name, settings)


# --------------------------------------------------------------------------- who may decide
def model_team(model_name: str, settings: Settings, hook: MlflowHook | None = None) -> set[str]:
    """Who may decide for ``model_name``: :func:`team_deciders` of its team (:mod:`asgard.registry.ownership`;
    the default team for a model not registered yet)."""
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.ownership import model_team as owning_team

    return team_deciders(owning_team(hook or MlflowHook(), model_name, settings) or settings.default_team, settings)


def team_deciders(team: str, settings: Settings) -> set[str]:
    """The members of ``team`` who may act (not its viewers), the auth manager's admins, and ``deploy_approvers``."""
    from asgard.core.teams import directory

    named = {user.strip() for user in settings.deploy_approvers.split(",") if user.strip()}
    members = {
        member.name
        for member in directory(settings).values()
        if member.admin or (team in member.teams and not member.reads_only)
    }
    return named | members


def decision_refusal(
    user: str | None, *, model_name: str, policy: DeployPolicy, team: set[str], trained_by: str | None
) -> str | None:
    """Why ``user`` may not decide the deployment of a ``model_name`` version, or None when they may.

    The one check of who decides (the approval's assigned users, a hand trigger counting as approval,
    a response arriving); teams will extend it.
    """
    if not user:
        return "the decision names no user"
    if user not in team:
        return f"{user} is not in {model_name}'s team ({', '.join(sorted(team)) or 'no one'})"
    if policy.second_person and trained_by and user == trained_by:
        return f"{user} triggered this version's training, and {model_name} needs a second person to decide"
    return None


def eligible_deciders(model_name: str, policy: DeployPolicy, team: set[str], trained_by: str | None) -> list[str]:
    return sorted(
        user
        for user in team
        if decision_refusal(user, model_name=model_name, policy=policy, team=team, trained_by=trained_by) is None
    )


# --------------------------------------------------------------------------- what a person needs to decide
@dataclass(frozen=True)
class Origin:
    """What started a version: a drift alert, new features, a person, or a registration by hand."""

    kind: str  # "drift", "new features", "person", "registered"
    summary: str
    trained_by: str | None = None
    dag_id: str | None = None
    run_id: str | None = None


def superseded_by(hook: MlflowHook, model_name: str, version: str) -> str | None:
    """The newer version a promotion's approval was overtaken by: the model's ``@champion`` is now a later
    version (its own promotion's run decides it); None while ``version`` is still the newest promoted."""
    from mlflow.exceptions import MlflowException

    from asgard.registry.versions import CHAMPION

    try:
        champion = hook.client.get_model_version_by_alias(model_name, CHAMPION).version
    except MlflowException:
        return None
    return str(champion) if int(champion) > int(version) else None


def serving_version(hook: MlflowHook, model_name: str, target: str) -> Any | None:
    """The version whose tags say it serves on ``target`` (newest first), or None."""
    from asgard.hooks.mlflow import mlflow_literal
    from asgard.registry.versions import DEPLOY_TAG_PREFIX

    for version in hook.client.search_model_versions(
        f"name = {mlflow_literal(model_name)}", order_by=["version_number DESC"]
    ):
        tags = version.tags or {}
        if (
            tags.get(f"{DEPLOY_TAG_PREFIX}status") == "serving"
            and tags.get(f"{DEPLOY_TAG_PREFIX}target", target) == target
        ):
            return version
    return None


def approval_body(
    hook: MlflowHook,
    candidate: Any,
    serving: Any | None,
    origin: Origin,
    request: dict[str, Any],
    policy: DeployPolicy,
    *,
    deciders: list[str],
    airflow_url: str,
) -> str:
    """The Markdown the approval shows: what changes, the evidence, what started it, the plan, links."""
    from asgard.core.errors import redact_url
    from asgard.registry.versions import GATE_TAG_PREFIX, HOLDOUT_TAG_PREFIX, prefixed_tags

    name = candidate.name
    gate = prefixed_tags(candidate.tags, GATE_TAG_PREFIX)
    serving_number = str(serving.version) if serving is not None else None
    lines = [
        f"**{name} v{candidate.version}** would replace "
        + (f"**v{serving_number}**, serving now" if serving_number else "nothing (no version serves yet)")
        + f" on the `{request.get('target') or 'docker'}` target.",
        "",
        "#### The gate",
    ]
    if gate:
        metric = gate.get("metric", "?")
        compared = gate.get("champion_version") or ""
        lines += [
            f"| version | {metric} on the same holdout |",
            "|---|---|",
            f"| v{candidate.version} (candidate) | {gate.get('score', '?')} |",
        ]
        if compared:
            lines.append(f"| v{compared} (champion it was gated against) | {gate.get('champion_score') or '?'} |")
        lines += ["", f"Decision: {gate.get('decision', '?')}: {gate.get('reason', '')}"]
        if serving_number and compared and compared != serving_number:
            lines.append(f"(v{serving_number} serves, but the gate compared with v{compared}, the champion then.)")
    else:
        lines.append("No gate decision is recorded on this version (it was not promoted by a training run).")
    own = [("candidate", candidate)] + ([("serving", serving)] if serving is not None else [])
    holdout = {label: prefixed_tags(version.tags, HOLDOUT_TAG_PREFIX) for label, version in own}
    metrics = sorted({key for values in holdout.values() for key in values})
    if metrics:
        lines += [
            "",
            "Each version on its own holdout: "
            + "; ".join(
                f"v{version.version} ({label}) " + ", ".join(f"{m} {holdout[label].get(m, '-')}" for m in metrics)
                for label, version in own
            ),
        ]
    rollout = request.get("rollout") or {}
    strategy = rollout.get("strategy") or "replace"
    plan = f"strategy **{strategy}**"
    if strategy != "replace":
        plan += (
            f", {rollout.get('percent')}% of traffic, until {rollout.get('min_requests')} requests or "
            f"{rollout.get('duration')} s, limits: error rate {rollout.get('max_error_rate')}, "
            f"p99 ratio {rollout.get('max_p99_ratio')}"
        )
        if serving is None:
            plan += " (nothing serves yet to try it beside: this first version replaces)"
    mlflow = redact_url(hook.tracking_uri)
    links = [f"[Models page]({airflow_url.rstrip('/')}/mlops/ui/models/{name})"]
    if mlflow.startswith("http"):
        for label, version in own:
            run = hook.client.get_run(version.run_id) if version.run_id else None
            if run is not None:
                links.append(
                    f"[MLflow run of v{version.version} ({label})]({mlflow}/#/experiments/"
                    f"{run.info.experiment_id}/runs/{version.run_id})"
                )
    timeout = duration_text(policy.timeout_seconds)
    lines += [
        "",
        "#### What started it",
        origin.summary,
        "",
        "#### The rollout plan",
        plan + ". A failed verification rolls back; the serving version keeps serving.",
        "",
        "#### Links",
        " · ".join(links),
        "",
        f"Who may decide: {', '.join(deciders) or 'no one (name approvers in ASGARD_DEPLOY_APPROVERS)'}"
        + (" (second-person rule: not the user who triggered the training)" if policy.second_person else "")
        + f". No decision in {timeout} counts as a rejection. Reject with a reason: it is recorded on the version.",
    ]
    return "\n".join(lines)


def duration_text(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}min"
    return f"{seconds}s"


def record_decision(
    hook: MlflowHook,
    model_name: str,
    version: str,
    *,
    outcome: str,
    by: str,
    reason: str,
    policy: str,
    run: str,
    at: datetime | None = None,
    rollout: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Tag the version with the decision: who, when, why (``deploy.decision.*``), and for an approval the
    rollout plan it approved (``rollout``), which the deploy then follows."""
    values = {
        "outcome": outcome,
        "by": by,
        "at": (at or datetime.now(UTC)).isoformat(timespec="seconds"),
        "reason": reason[:4000],
        "policy": policy,
        "run": run,
    }
    if rollout is not None:
        values["rollout"] = json.dumps(rollout, sort_keys=True)
    for key, value in values.items():
        hook.client.set_model_version_tag(model_name, version, f"{DECISION_TAG_PREFIX}{key}", value)
    log.info("%s v%s: %s by %s (%s)", model_name, version, outcome, by, reason)
    return values


def version_decision(tags: dict[str, str] | None) -> dict[str, str] | None:
    """A version's recorded decision (outcome, by, at, reason, policy, run), or None."""
    from asgard.registry.versions import prefixed_tags

    return prefixed_tags(tags, DECISION_TAG_PREFIX) or None


def require_approval(hook: MlflowHook, model_name: str, version: str, run: str) -> dict[str, Any] | None:
    """The version about to be deployed was approved in this run (``run``: ``deploy_model/<run id>``): a
    hand-off changed after the decision (an XCom naming another version) deploys nothing.

    Returns the rollout plan the approval was given for (None: recorded without one), so that a model's
    rollout changed while a person decided is not what the approved deploy runs.
    """
    decision = version_decision(hook.client.get_model_version(model_name, version).tags) or {}
    if decision.get("outcome") != APPROVED or decision.get("run") != run:
        raise InputError(
            f"{model_name} v{version} was not approved in this run ({run}): its recorded decision is "
            f"{decision.get('outcome') or 'none'} in {decision.get('run') or 'no run'}; nothing is deployed"
        )
    return json.loads(decision["rollout"]) if decision.get("rollout") else None
