"""The model-version contract: what every registered version carries, and how a version is found.

Training writes it, and serving, deployment, scoring and monitoring read it; this module is the one
place that says what is where:

- artifacts on the version's MLflow run (the model, its reference profile and samples, the holdout
  sample an image build and a deploy check against, the request that trained it);
- tags on the version (lineage, holdout metrics, the gate's decision, the deployment's outcome);
- aliases (``@champion``, ``@challenger``) and how a version is resolved by number or alias;
- the input schema: the signature's columns, typed as training typed them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asgard.core.errors import InputError
from asgard.hooks.mlflow import AIRFLOW_DAG_ID_TAG, AIRFLOW_RUN_ID_TAG, PLATFORM_TAG_PREFIXES

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pandas as pd
    from mlflow.entities.model_registry import ModelVersion

    from asgard.hooks.mlflow import MlflowHook

# --------------------------------------------------------------------------- artifacts on the run
MODEL_ARTIFACT = "model"
# What the training data looked like per feature, and the features/target/model type it was fitted on.
PROFILE_ARTIFACT = "reference/profile.json"
FEATURES_ARTIFACT = "reference/features.json"
# What monitoring compares windows against (KS and Wasserstein need values, not only bins).
REFERENCE_SAMPLE_ARTIFACT = "reference/sample.parquet"
REFERENCE_SAMPLE_ROWS = 50_000
# Holdout features next to the model: what an image build checks an ONNX conversion against, and
# what deploy verification sends to a fresh server.
HOLDOUT_ARTIFACT = "holdout/sample.parquet"
HOLDOUT_SAMPLE_ROWS = 10_000
# The request that trained the version: what retraining runs again.
REQUEST_ARTIFACT = "training/request.json"

# --------------------------------------------------------------------------- tags and aliases
CHAMPION = "champion"
CHALLENGER = "challenger"
FEATURE_VIEWS_TAG = "feast.feature_views"
GOLD_SNAPSHOTS_TAG = "gold.snapshots"
# The version's metrics on its own holdout, as training measured them.
HOLDOUT_TAG_PREFIX = "asgard.holdout."
# The gate's decision (``gate.decision``, ``gate.reason``, ...) and the deployment's outcome
# (``deploy.status``, ``deploy.endpoint``, ``deploy.digest``, ...).
GATE_TAG_PREFIX = "gate."
DEPLOY_TAG_PREFIX = "deploy."
# Who made a version's model, which decides where it may be deserialized (a model file can run code):
# only the platform's own training code's models are loaded in a worker; any other (a user script's,
# one registered from any run) is unpickled only in a sandbox or in its serving container.
ORIGIN_TAG = "asgard.origin"
PLATFORM_ORIGIN = "train_model"
SCRIPT_ORIGIN = "train_script"
REGISTERED_ORIGIN = "registered"
# What a script-trained version's environment was built from (its sandboxed scoring rebuilds it).
SCRIPT_REQUIREMENTS_TAG = "script.requirements"
# Tags only the platform writes: a caller's own tags never set them.
RESERVED_TAG_PREFIXES = PLATFORM_TAG_PREFIXES


def lineage_tags(
    *,
    dag_id: str,
    run_id: str,
    origin: str,
    feature_views: list[str],
    gold_snapshots: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, str]:
    """The tags that tie a model version to the Airflow run and the data it was trained on."""
    return {
        **{key: str(value) for key, value in extra.items()},
        AIRFLOW_DAG_ID_TAG: dag_id,
        AIRFLOW_RUN_ID_TAG: run_id,
        ORIGIN_TAG: origin,
        FEATURE_VIEWS_TAG: ",".join(feature_views),
        GOLD_SNAPSHOTS_TAG: json.dumps(gold_snapshots, sort_keys=True),
    }


def reserved_tag(key: str) -> bool:
    """Whether ``key`` is a tag only the platform may set (lineage, origin, gate, deployment)."""
    return key.startswith(RESERVED_TAG_PREFIXES) or key in ("source", "framework", "model_type", "algorithm")


def trusted(tags: dict[str, str] | None) -> bool:
    """Whether a version's model was made by the platform's own training code (loadable in a worker)."""
    return (tags or {}).get(ORIGIN_TAG) == PLATFORM_ORIGIN


def training_request(hook: MlflowHook, version: ModelVersion) -> dict[str, Any] | None:
    """The train_model conf that trained ``version`` (what retraining runs again), or None when it has none
    to trust. Only a version the platform trained has one: a user script's run holds whatever the script
    logged into it, a ``training/request.json`` naming another team's model included."""
    if not trusted(version.tags):
        return None
    request = hook.logged_json(version.run_id, REQUEST_ARTIFACT)
    return request if isinstance(request, dict) and request.get("model_name") == version.name else None


def prefixed_tags(tags: dict[str, str] | None, prefix: str) -> dict[str, str]:
    """The tags under ``prefix``, without it (``deploy.status`` -> ``status``)."""
    return {key.removeprefix(prefix): value for key, value in (tags or {}).items() if key.startswith(prefix)}


# --------------------------------------------------------------------------- finding a version
@dataclass(frozen=True)
class ModelVersionRef:
    """One registered model version, as the rest of the platform refers to it."""

    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def feature_views(self) -> list[str]:
        """The feature views the version was trained on (from its lineage), in order."""
        return [name for name in (self.tags.get(FEATURE_VIEWS_TAG) or "").split(",") if name]

    def to_dict(self) -> dict[str, Any]:
        return {"model_name": self.name, "version": self.version, "run_id": self.run_id, "source": self.source}


def resolve_model_version(
    hook: MlflowHook, name: str, version: str | None = None, alias: str | None = None
) -> ModelVersionRef:
    """The version named by number or alias (``champion`` when neither is given), or an error naming it."""
    from mlflow.exceptions import MlflowException

    client = hook.client
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise InputError(f"no registered model named {name!r} in MLflow at {hook.tracking_uri}") from None
    try:
        if version:
            found = client.get_model_version(name, str(version))
        else:
            found = client.get_model_version_by_alias(name, alias or CHAMPION)
    except MlflowException:
        which = f"version {version}" if version else f"alias @{alias or CHAMPION}"
        raise InputError(f"registered model {name!r} has no {which}") from None
    return ModelVersionRef(name, str(found.version), found.run_id, found.source, dict(found.tags or {}))


def alias_version(hook: MlflowHook, model_name: str, alias: str) -> ModelVersion | None:
    """The version ``@alias`` points at, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return hook.client.get_model_version_by_alias(model_name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def champions(hook: MlflowHook) -> Iterator[ModelVersion]:
    """The ``@champion`` version of every registered model that has one (every page of the registry)."""
    from mlflow.exceptions import MlflowException

    token = None
    while True:
        page = hook.client.search_registered_models(max_results=1000, page_token=token)
        for model in page:
            try:
                yield hook.client.get_model_version_by_alias(model.name, CHAMPION)
            except MlflowException:
                continue
        token = page.token
        if not token:
            return


# --------------------------------------------------------------------------- what the version reads
def holdout_frame(hook: MlflowHook, run_id: str, names: list[str] | None = None) -> pd.DataFrame | None:
    """The holdout sample training logged to ``run_id`` (those columns), or None if it has none."""
    return hook.logged_frame(run_id, HOLDOUT_ARTIFACT, names)


def load_platform_model(hook: MlflowHook, model_name: str, version: str) -> Any:
    """The model of a version the platform trained, deserialized here; any other is refused, naming why.

    A user script's model (or one registered from any run) is never unpickled in a worker: it is
    bundled and scored in a sandbox, and served from its own image.
    """
    tags = hook.client.get_model_version(model_name, str(version)).tags
    if not trusted(tags):
        origin = (tags or {}).get(ORIGIN_TAG, "unknown")
        raise InputError(
            f"{model_name} v{version} was not trained by the platform (origin: {origin}); its model is never "
            "deserialized in a worker: it is scored in a sandbox and served from its own image"
        )
    return hook.load_model(f"models:/{model_name}/{version}")


def model_inputs(hook: MlflowHook, model_name: str, version: str) -> list[str]:
    """The input columns of a registered version, from its signature."""
    import mlflow

    with hook.using_server():
        signature = mlflow.models.get_model_info(f"models:/{model_name}/{version}").signature
    if signature is None or not signature.inputs.input_names():
        raise InputError(f"{model_name} v{version} has no input signature: its input columns are unknown")
    return list(signature.inputs.input_names())


def categorical_columns(frame: pd.DataFrame) -> list[str]:
    """The columns a model treats as categories: everything that is neither a number nor a boolean."""
    import pandas as pd

    return [
        column
        for column in frame.columns
        if not pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(frame[column])
    ]


def prepare_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers as float64 and the rest as strings, a missing value NaN in both (None is not missing to
    scikit-learn's imputers): the same in training, scoring and serving."""
    import numpy as np

    categorical = set(categorical_columns(frame))
    typed = frame.astype({column: "object" if column in categorical else "float64" for column in frame.columns})
    for column in categorical:
        typed[column] = typed[column].where(typed[column].notna(), np.nan)
    return typed
