"""Registering a model an MLflow run logged (``POST /mlops/registry``): ungated, for the caller's team,
and never a run another team's model came from."""

from __future__ import annotations

from typing import Any

from asgard.core.errors import InputError
from asgard.core.settings import get_settings
from asgard.core.teams import TeamRefusal
from asgard.hooks.mlflow import MlflowHook, mlflow_literal
from asgard.registry.models import ModelNotFoundError, ModelRegistry, find_logged_model
from asgard.registry.ownership import model_team
from asgard.registry.versions import ORIGIN_TAG, REGISTERED_ORIGIN, reserved_tag


def register_run_model(
    hook: MlflowHook,
    model_name: str,
    mlflow_run_id: str,
    *,
    team: str,
    description: str = "",
    tags: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Register the model an MLflow run logged as a version of ``model_name`` (once per run), ungated."""
    from mlflow.exceptions import MlflowException

    try:
        hook.client.get_run(mlflow_run_id)
    except MlflowException as error:
        raise ModelNotFoundError(f"MLflow run {mlflow_run_id!r} does not exist") from error
    model = find_logged_model(hook, mlflow_run_id, model_name)
    # A run another team's model was registered from is that team's work: its id is visible to anyone who
    # reads the job DAGs' runs, and registering it under a name of one's own would hand over its model.
    for existing in hook.client.search_model_versions(f"run_id = {mlflow_literal(mlflow_run_id)}"):
        owner = model_team(hook, existing.name, get_settings())
        if owner is not None and owner != team:
            raise TeamRefusal(
                f"MLflow run {mlflow_run_id} is team {owner!r}'s (model {existing.name!r} v{existing.version} "
                f"was registered from it): team {team!r} may not register it"
            )
    refused = sorted(key for key in (tags or {}) if reserved_tag(key))
    if refused:
        raise InputError(f"tags {', '.join(refused)} are the platform's own (lineage, origin, gate, deployment)")
    platform_tags = {"source": "registry", ORIGIN_TAG: REGISTERED_ORIGIN}
    version, created = ModelRegistry(hook).register(
        model_name,
        model.model_uri,
        mlflow_run_id,
        {**(tags or {}), **platform_tags},
        team=team,
        model_id=model.model_id,
    )
    if description:
        hook.client.update_model_version(model_name, version.version, description=description)
    return {
        "model_name": model_name,
        "version": str(version.version),
        "run_id": mlflow_run_id,
        "model_uri": f"models:/{model_name}/{version.version}",
        "status": "registered" if created else "already_registered",
    }
