"""``/mlops/models/{name}/deploy-policy``: what a promotion of a model does (auto, approve, manual) and
who may decide (:mod:`asgard.deploy.approval`); and each version's recorded decision on the model."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from pydantic import ConfigDict, Field

from asgard.api.schemas import ClosedModel
from asgard.api.security import CallerIdentity, offloaded, requires
from asgard.api.teams import guard_model
from asgard.core.errors import InputError


class PromotionRollout(ClosedModel):
    """How a promotion of the model rolls out: deploy_model's strategy and trial Params, in their ranges."""

    model_config = ConfigDict(allow_inf_nan=False)  # extra keys: ClosedModel's 422 naming them
    strategy: Literal["replace", "canary", "shadow"]
    percent: int | None = Field(None, ge=1, le=50)
    min_requests: int | None = Field(None, ge=0, le=1_000_000)
    # Within deploy_image's two hours (asgard.core.dag_defaults): a longer trial would be cut off mid-window.
    duration: float | None = Field(None, gt=0, le=3_600, description="seconds")
    max_error_rate: float | None = Field(None, ge=0, le=1)
    max_p99_ratio: float | None = Field(None, gt=0, le=1_000)
    p99_tolerance_ms: float | None = Field(None, ge=0, le=60_000)
    min_agreement: float | None = Field(None, ge=0, le=1, description="a classifier's shadow")
    max_difference: float | None = Field(None, gt=0, le=1_000, description="a regressor's shadow")


class DeployPolicyRequest(ClosedModel):
    """A model's own deployment policy (``null`` policy or rollout: the platform's setting applies again)."""

    policy: Literal["auto", "approve", "manual"] | None
    second_person: bool | None = None
    approval_timeout: int | None = Field(None, ge=1, le=30 * 86_400, description="seconds")
    rollout: PromotionRollout | None = None


def add_deploy_policy_routes(app: FastAPI) -> None:
    """``/models/{name}/deploy-policy``: what a promotion of the model does, and who may decide."""
    from fastapi import HTTPException

    @app.get(
        "/models/{model_name}/deploy-policy",
        summary="A model's deployment policy (auto, approve, manual) and who may decide",
        dependencies=[requires("GET", "deploy_model")],
    )
    @offloaded
    def get_deploy_policy(model_name: str, who: CallerIdentity) -> dict[str, Any]:
        from asgard.core.settings import get_settings
        from asgard.deploy.approval import model_policy, model_team
        from asgard.hooks.mlflow import MlflowHook

        guard_model(who, model_name, reading=True)
        settings, hook = get_settings(), MlflowHook()
        policy = model_policy(hook, model_name, settings)
        return {"model_name": model_name, **policy.to_dict(), "team": sorted(model_team(model_name, settings, hook))}

    @app.put(
        "/models/{model_name}/deploy-policy",
        summary="Set a model's deployment policy (a member of the model's team)",
        dependencies=[requires("PUT", "deploy_model")],
    )
    @offloaded
    def set_deploy_policy(model_name: str, body: DeployPolicyRequest, who: CallerIdentity) -> dict[str, Any]:
        import re

        from asgard.core.param_schemas import MODEL_NAME_PATTERN
        from asgard.core.settings import get_settings
        from asgard.deploy.approval import set_model_policy, team_deciders
        from asgard.hooks.mlflow import MlflowHook

        settings = get_settings()
        if not re.match(MODEL_NAME_PATTERN, model_name):
            raise InputError(f"{model_name!r} is not a model name ({MODEL_NAME_PATTERN})")
        # 403 naming the model's team when it is not the caller's; a new name becomes the caller's team's.
        owner = guard_model(who, model_name, may_create=True)
        team = team_deciders(owner, settings)
        if who.name not in team:
            raise HTTPException(403, detail=f"{who.name} is not in {model_name}'s team ({', '.join(sorted(team))})")
        policy = set_model_policy(
            MlflowHook(),
            model_name,
            settings,
            team=owner,
            policy=body.policy,
            second_person=body.second_person,
            approval_timeout=body.approval_timeout,
            rollout=body.rollout.model_dump(exclude_none=True) if body.rollout else None,
        )
        return {"model_name": model_name, **policy.to_dict(), "team": sorted(team)}


def with_deploy_decisions(hook: Any, model: dict[str, Any]) -> dict[str, Any]:
    """The model's deployment policy, and each version's recorded decision (who, when, why) as ``decision``."""
    from asgard.core.settings import get_settings
    from asgard.deploy.approval import model_policy

    for version in model["versions"]:
        version["decision"] = (version.get("deployment") or {}).get("decision")
    return {**model, "deploy_policy": model_policy(hook, model["model_name"], get_settings()).to_dict()}
