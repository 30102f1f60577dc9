"""What a ``deploy_model`` run deploys: its conf, or the model Asset event that started it."""

from __future__ import annotations

from typing import Any

from asgard.errors import InputError, fail_without_retry


def deployment_request(params: dict[str, Any], triggering_asset_events: Any = None) -> dict[str, Any]:
    """Model name and version (or alias), target and sizing of this run.

    A run started by a promotion carries no conf: the newest model Asset event names the model and
    the version the gate promoted, so a later promotion cannot change what this run deploys.
    """
    with fail_without_retry():
        model_name, version = params.get("model_name"), params.get("version")
        if not model_name:
            events = [event for per_asset in (triggering_asset_events or {}).values() for event in per_asset]
            if not events:
                raise InputError("model_name is required when the run was not started by a model Asset event")
            newest = max(events, key=lambda event: event.timestamp)
            model_name, version = newest.extra.get("model_name"), newest.extra.get("version")
            if not model_name:
                raise InputError(f"the model Asset event {newest.extra} names no model_name")
        return {
            "model_name": model_name,
            "version": str(version) if version else None,
            "alias": params.get("alias") or "champion",
            "target": params.get("target") or "docker",
            "replicas": int(params.get("replicas") or 2),
            "namespace": params.get("namespace"),
            "resources": params.get("resources"),
        }
