"""The trigger form of ``deploy_model``: each conf key with its schema, title and meaning. A promotion's
Asset event names the model and version; a manual run names them here."""

from __future__ import annotations

from airflow.sdk import Param

from asgard.core.param_schemas import MODEL_NAME_PATTERN, RESOURCES, field, version_fields
from asgard.deploy.strategies import STRATEGIES

MODEL, TARGET, ROLLOUT = "Model", "Target", "Rollout"


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
            description="The Kubernetes namespace: one of the model's team's (ASGARD_KUBERNETES_NAMESPACES); "
            "empty: the team's default.",
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
        "expose_features": field(
            False,
            title="Expose stored features",
            description="Lets the public /predict by entity id return the features it read from the online "
            "store (return_features) and their times, and name the ids the store does not hold (a 422). "
            "Off (the default): return_features is refused (403) and every id is answered alike, an unknown "
            "one predicted from missing features.",
            section=TARGET,
            type="boolean",
        ),
        "strategy": field(
            "replace",
            title="Strategy",
            description="replace: the verified switch; canary: the new version answers a share of live "
            "prediction requests first; shadow: a share is mirrored to it, callers always get the serving "
            "version's answer. A trial that stays within its limits is promoted to all traffic (the old "
            "version retired); a breach rolls it back and fails the run naming the limit. On kubernetes a "
            "canary is a second Deployment behind the Service; a shadow is copied requests by the serving pods.",
            section=ROLLOUT,
            type="string",
            enum=list(STRATEGIES),
        ),
        "percent": field(
            None,
            title="Traffic share (%)",
            description="The share of prediction requests the canary answers or the shadow sees (1 to 50; on "
            "kubernetes, the nearest share of the Service's pods). Default: 10.",
            section=ROLLOUT,
            type=["null", "integer"],
            minimum=1,
            maximum=50,
        ),
        "min_requests": field(
            None,
            title="Requests to decide on",
            description="The trial ends once the new version has answered this many requests (0: it ends "
            "after the duration). Default: 100.",
            section=ROLLOUT,
            type=["null", "integer"],
            minimum=0,
            maximum=1_000_000,
        ),
        "duration": field(
            None,
            title="Longest trial (s)",
            description="Seconds the trial may last; too few requests by then is a breach. Default: 300.",
            section=ROLLOUT,
            type=["null", "number"],
            exclusiveMinimum=0,
            maximum=86_400,
        ),
        "max_error_rate": field(
            None,
            title="Highest error rate",
            description="The share of the new version's requests that may fail (5xx or unreachable), 0 to 1. "
            "Default: 0.01.",
            section=ROLLOUT,
            type=["null", "number"],
            minimum=0,
            maximum=1,
        ),
        "max_p99_ratio": field(
            None,
            title="Highest p99 ratio",
            description="The new version's p99 latency over the serving version's, in the same window. Default: 2.",
            section=ROLLOUT,
            type=["null", "number"],
            exclusiveMinimum=0,
        ),
        "p99_tolerance_ms": field(
            None,
            title="p99 tolerance (ms)",
            description="A p99 above the ratio breaches only when it is also this many milliseconds slower than "
            "the serving version's (a small window's p99 is its slowest request or two). 0: the ratio alone "
            "decides. Default: 50.",
            section=ROLLOUT,
            type=["null", "number"],
            minimum=0,
            maximum=60_000,
        ),
        "min_agreement": field(
            None,
            title="Lowest agreement (shadow, classifier)",
            description="A classifier's shadow: the share of rows whose predicted class equals the serving "
            "one, 0 to 1; empty: reported, not enforced. A regressor is judged by the highest difference instead.",
            section=ROLLOUT,
            type=["null", "number"],
            minimum=0,
            maximum=1,
        ),
        "max_difference": field(
            None,
            title="Highest difference (shadow, regressor)",
            description="A regressor's shadow: the p95 absolute difference between its predictions and the "
            "serving ones, in standard deviations of the serving predictions seen in the window (the mean "
            "difference is reported too). Default: 1 — a retrained model may move, a shifted, rescaled or "
            "constant one (about 2) may not.",
            section=ROLLOUT,
            type=["null", "number"],
            exclusiveMinimum=0,
        ),
    }
