"""Sample registered models for serving tests and benchmarks, logged as ``train_model`` logs them.

The model is the platform's own pipeline (``asgard.training.trainers``) fitted on the sample gold layer's
customers, logged with a signature, input example, pinned requirements and the holdout sample, and
registered as a new version. By default it uses exactly the seed's six features, so the seed's
``/predict`` payload is a valid request.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SEED_FEATURES = [
    "total_purchases",
    "avg_purchase_value",
    "days_since_last_purchase",
    "customer_lifetime_value",
    "account_age_days",
    "support_tickets_count",
]
# Every feature of the sample gold layer's customer_features view: the seed's six and the segment.
SAMPLE_FEATURES = [*SEED_FEATURES, "segment"]
# The seed's POST /predict example (a valid request for a model on SEED_FEATURES).
SEED_PREDICTION = {
    "inputs": {
        "total_purchases": [10, 25],
        "avg_purchase_value": [50.0, 120.5],
        "days_since_last_purchase": [5, 15],
        "customer_lifetime_value": [500.0, 3000.0],
        "account_age_days": [365, 730],
        "support_tickets_count": [2, 1],
    },
    "return_probabilities": True,
}
# The seed's POST /mlops/monitoring example (externally computed metrics).
SEED_MONITORING_REQUEST = {
    "model_name": "churn_predictor",
    "model_version": "1",
    "metric_type": "prediction_drift",
    "metrics": {"drift_score": 0.15, "psi": 0.08, "js_divergence": 0.12},
    "reference_data": {"mean": 0.35, "std": 0.12},
    "current_data": {"mean": 0.42, "std": 0.15},
    "tags": {"deployment": "production"},
}
DEFAULT_PARAMS = {
    "sklearn": {"n_estimators": 100, "max_depth": 10, "random_state": 42},
    "lightgbm": {"n_estimators": 100},
}


def training_frame(customers: int = 20_000, features: list[str] | None = None):
    """Features and churn label of the sample customers' newest day."""
    from asgard.registry.versions import prepare_features
    from sample_data.gold_layer import GoldSpec, simulate

    snapshots, labels = simulate(GoldSpec(customers=customers, days=1))
    frame = snapshots[-1].to_pandas().merge(labels.to_pandas()[["customer_id", "churned"]], on="customer_id")
    return prepare_features(frame[features or SEED_FEATURES]), frame["churned"]


def register_sample_model(
    tracking_uri: str,
    model_name: str,
    *,
    framework: str = "sklearn",
    customers: int = 20_000,
    features: list[str] | None = None,
    with_signature: bool = True,
    experiment: str = "serving-samples",
) -> str:
    """Fit, log and register one sample churn model; its new version number."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from asgard.registry.versions import HOLDOUT_ARTIFACT, ORIGIN_TAG, PLATFORM_ORIGIN
    from asgard.training import trainers

    features_frame, target = training_frame(customers, features)
    split = int(len(features_frame) * 0.8)
    spec = trainers.ModelSpec.from_request(
        {
            "framework": framework,
            "model_type": "classification",
            "hyperparameters": {"params": DEFAULT_PARAMS.get(framework, {})},
        }
    )
    model = spec.fit(features_frame[:split], target[:split])
    holdout = features_frame[split:]
    example = holdout.dropna().head(5)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    existing = client.get_experiment_by_name(experiment)
    experiment_id = existing.experiment_id if existing else client.create_experiment(experiment)
    # The variable, not get_tracking_uri(): restoring MLflow's resolved default would pin this call's
    # server (exported as MLFLOW_TRACKING_URI) for every later client in the process.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(experiment_id=experiment_id) as run:
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(example, model.predict(example)) if with_signature else None,
                input_example=example if with_signature else None,
                pip_requirements=trainers.pip_requirements(framework),
                serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
            )
            with tempfile.TemporaryDirectory() as scratch:
                path = Path(scratch) / Path(HOLDOUT_ARTIFACT).name
                holdout.to_parquet(path, index=False)
                mlflow.log_artifact(str(path), str(Path(HOLDOUT_ARTIFACT).parent))
        # Inside the block: registering a logged model looks it up through the global tracking URI.
        if not client.search_registered_models(filter_string=f"name = '{model_name}'"):
            client.create_registered_model(model_name)
        version = client.create_model_version(
            model_name,
            info.model_uri,
            run_id=run.info.run_id,
            model_id=info.model_id,
            # The platform's own trainer made it: workers may load it (asgard.registry.versions).
            tags={"model_type": "classification", "framework": framework, ORIGIN_TAG: PLATFORM_ORIGIN},
        )
    finally:
        mlflow.set_tracking_uri(previous)  # None: back to MLflow's own resolution, variable unset
    return str(version.version)
