"""The trigger form of ``deploy_model``: each conf key with its schema, title and meaning. A promotion's
Asset event names the model and version; a manual run names them here."""

from __future__ import annotations

from airflow.sdk import Param

from asgard.core.param_schemas import MODEL_NAME_PATTERN, RESOURCES, field, version_fields

MODEL, TARGET = "Model", "Target"


def deploy_model_params() -> dict[str, Param]:
    return {
        # Empty when an Asset event starts the run: the event names the model and version.
        "model_name": field(
            None,
            title="Registered model",
            description="The model to deploy, e.g. churn_predictor; empty only when a promotion's Asset "
            "event starts the run (the event names the model).",
            section=MODEL,
            type=["null", "string"],
            pattern=MODEL_NAME_PATTERN,
        ),
        **version_fields(MODEL, "version", alias_note="; a failed deploy moves it back"),
        "target": field(
            "docker",
            title="Target",
            description="docker: the local engine behind the stable endpoint (the embedded default); "
            "kubernetes: a Deployment and Service (EKS in production).",
            section=TARGET,
            type="string",
            enum=["docker", "kubernetes"],
        ),
        "replicas": field(
            2,
            title="Replicas",
            description="Pods of the kubernetes target (1 to 50). Default: 2.",
            section=TARGET,
            type="integer",
            minimum=1,
            maximum=50,
        ),
        "namespace": field(
            None,
            title="Namespace",
            description="The Kubernetes namespace; empty: the platform's configured one.",
            section=TARGET,
            type=["null", "string"],
            pattern="^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        ),
        "resources": field(
            None,
            title="Resources",
            description='Kubernetes requests and limits, e.g. {"requests": {"cpu": "500m", "memory": "1Gi"}}; '
            "what is left out takes the platform's defaults.",
            section=TARGET,
            **RESOURCES,
        ),
    }
