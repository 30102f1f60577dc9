"""The trigger forms of ``train_model`` and ``train_script``: each conf key with its schema, title and
meaning. ``train_model``'s opens filled with the sample's request, so pressing Trigger on a fresh
install trains the sample churn model; ``train_script``'s waits for a script (the upload is the ask)."""

from __future__ import annotations

from airflow.sdk import Param
from airflow.sdk.definitions.param import NOTSET

from asgard.core.param_schemas import (
    IDENTIFIER,
    MODEL_NAME_PATTERN,
    REQUIREMENT,
    RESERVED_ENV_PATTERN,
    RETRAINING_POLICY,
    SCALAR,
    field,
    promotion,
    team_field,
)
from asgard.core.settings import get_settings
from asgard.registry.metrics import METRICS
from asgard.training.scripts.secrets import REFERENCE_PATTERN as SECRET_REFERENCE_PATTERN
from asgard.training.trainers import ALGORITHMS, FRAMEWORKS, MODEL_TYPES

MODEL, DATA, TUNING, GATE, SCRIPT, LIMITS = (
    "Model",
    "Training data",
    "Hyperparameters and split",
    "Champion gate and retraining",
    "Script",
    "Limits",
)

# The sample model: the seed's POST /mlops/models body, on the sample gold layer.
SAMPLE_DATA_SOURCE = {"feature_views": ["customer_features"], "target_column": "churned"}
SAMPLE_HYPERPARAMETERS = {"params": {"n_estimators": 100, "max_depth": 10, "random_state": 42}}
SCRIPT_NAME_PATTERN = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\\.py$"


def _model_fields(section: str, experiment: str = NOTSET, model: str = NOTSET) -> dict[str, Param]:
    """The experiment and model names; without defaults, the conf must name them."""
    given = (lambda value: f" Default: {value}.") if experiment is not NOTSET else (lambda _: " Required.")
    return {
        "experiment_name": field(
            experiment,
            title="MLflow experiment",
            description="The MLflow experiment the training run is tracked in (created if new). "
            f"Seed field: experiment_name.{given(experiment)}",
            section=section,
            type="string",
            minLength=1,
            maxLength=256,
        ),
        "model_name": field(
            model,
            title="Registered model name",
            description="The MLflow registered model the new version joins; its @champion serves. "
            f"Letters, digits, '_', '.', '-'. Seed field: model_name.{given(model)}",
            section=section,
            type="string",
            pattern=MODEL_NAME_PATTERN,
        ),
        "team": team_field(
            section,
            what="model",
            afterwards="An existing model keeps its team, and only its team's members (and admins) may train into it.",
        ),
    }


def _gate_fields(*, script: bool) -> dict[str, Param]:
    metrics = None if script else [metric for names in METRICS.values() for metric in names]
    trust = (
        " trust_script_metric: let the metric the script logs about itself replace a champion (when "
        "use_feast is off, nothing else can be measured)."
        if script
        else ""
    )
    return {
        "tags": field(
            {},
            title="Tags",
            description='Tags set on the MLflow run and the model version, e.g. {"team": "data-science"}. '
            "Seed field: tags.",
            section=GATE,
            type="object",
            additionalProperties={"type": "string"},
        ),
        "promotion": field(
            {},
            title="Champion gate",
            description="metric: the holdout metric the new version must match or beat the @champion on "
            "(default: roc_auc for classifiers, rmse for regressors); min_improvement: by how much (default "
            f"0).{trust} A version that passes becomes @champion and is deployed; otherwise @challenger.",
            section=GATE,
            **promotion(metrics, script=script),
        ),
    }


def train_model_params() -> dict[str, Param]:
    return {
        **_model_fields(MODEL, "customer_churn", "churn_predictor"),
        "framework": field(
            "sklearn",
            title="Framework",
            description="sklearn (scikit-learn), xgboost or lightgbm. Seed field: framework. Default: sklearn.",
            section=MODEL,
            type="string",
            enum=list(FRAMEWORKS),
        ),
        "model_type": field(
            "classification",
            title="Model type",
            description="classification or regression. Seed field: model_type. Default: classification.",
            section=MODEL,
            type="string",
            enum=list(MODEL_TYPES),
        ),
        "algorithm": field(
            None,
            title="Algorithm",
            description="The estimator within the framework; empty: the framework's default (a random "
            "forest for sklearn, gradient-boosted trees for xgboost and lightgbm).",
            section=MODEL,
            type=["null", "string"],
            enum=[None, *ALGORITHMS],
        ),
        "data_source": field(
            SAMPLE_DATA_SOURCE,
            title="Training data",
            description="feature_views: the Feast views whose features are joined point-in-time onto the "
            "labels; target_column: the label column; label_table: the gold table holding it (default "
            'customer_labels); entities: optional filter, e.g. {"customer_id": [1, 2, 3]} (at least 10 '
            "labelled rows are needed). Seed field: data_source. Default: the sample's customer_features "
            "and churned.",
            section=DATA,
            type="object",
            properties={
                "feature_views": {"type": "array", "items": IDENTIFIER, "minItems": 1, "uniqueItems": True},
                "entities": {"type": "object", "additionalProperties": {"type": "array", "items": SCALAR}},
                "target_column": IDENTIFIER,
                "label_table": IDENTIFIER,
            },
            required=["feature_views", "target_column"],
            additionalProperties=False,
        ),
        "hyperparameters": field(
            SAMPLE_HYPERPARAMETERS,
            title="Hyperparameters",
            description='{"params": {...}}: the estimator\'s keyword arguments; an argument the estimator '
            "does not take fails the run, naming it. Seed field: hyperparameters. Default: 100 trees of "
            "depth 10.",
            section=TUNING,
            type="object",
            properties={"params": {"type": "object"}},
            additionalProperties=False,
        ),
        "test_size": field(
            0.2,
            title="Holdout share",
            description="The share of labelled rows held out to score the model and gate it (0.05 to 0.5). "
            "Default: 0.2.",
            section=TUNING,
            type="number",
            minimum=0.05,
            maximum=0.5,
        ),
        "random_state": field(
            42,
            title="Random seed",
            description="Seed of the holdout split (the same seed, the same split). Default: 42.",
            section=TUNING,
            type="integer",
        ),
        **_gate_fields(script=False),
        "retraining": field(
            {},
            title="Retraining",
            description="on_new_features: retrain this version while it is @champion whenever one of its "
            "feature views is materialized again; min_interval_hours: at most once per this many hours "
            "(default 24). Default: off.",
            section=GATE,
            **RETRAINING_POLICY,
        ),
    }


def train_script_params() -> dict[str, Param]:
    settings = get_settings()  # the operator's caps on every script's limits
    return {
        "script_name": field(
            title="Script file name",
            description="The uploaded file's name, ending in .py (not the name of a standard module such "
            "as pickle.py). Seed field: script_name. Required.",
            section=SCRIPT,
            type="string",
            pattern=SCRIPT_NAME_PATTERN,
        ),
        "script_content": field(
            title="Script (base64)",
            description="The script's source, base64-encoded. It runs in a sandbox with its own "
            "environment and reaches only its own MLflow run. Seed field: script_content. Required.",
            section=SCRIPT,
            type="string",
            minLength=1,
        ),
        "requirements": field(
            [],
            title="Requirements",
            description="pip requirements of the script (names, extras and versions; no pip options), "
            "installed from wheels into an environment built once per set. Seed field: requirements.",
            section=SCRIPT,
            type="array",
            items=REQUIREMENT,
            maxItems=100,
        ),
        "env_vars": field(
            {},
            title="Environment variables",
            description="Variables the script reads (names: letters, digits, '_'; not the platform's own, "
            "secrets' families such as AWS_ or PG, nor what changes how programs load: LD_*, PYTHON*, "
            "PATH, ...). Seed field: env_vars.",
            section=SCRIPT,
            type="object",
            propertyNames={"pattern": IDENTIFIER["pattern"], "not": {"pattern": RESERVED_ENV_PATTERN}},
            additionalProperties={"type": "string", "pattern": "^[^\\u0000]*$"},
        ),
        "secret_env_vars": field(
            {},
            title="Secret environment variables",
            description="Secrets the script reads, by reference, never by value: per variable "
            "'variable:<team>.<key>' (an Airflow Variable) or 'connection:<team>.<id>' (a Connection, as its "
            "URI), of the model's team. The values are masked in the logs and kept out of the conf.",
            section=SCRIPT,
            type="object",
            propertyNames={"pattern": IDENTIFIER["pattern"], "not": {"pattern": RESERVED_ENV_PATTERN}},
            additionalProperties={"type": "string", "pattern": SECRET_REFERENCE_PATTERN},
            maxProperties=50,
        ),
        **_model_fields(MODEL),
        "use_feast": field(
            True,
            title="Use Feast",
            description="The script reads Feast features, and the platform gates its model on its own "
            "point-in-time holdout of feature_view_name and target_column. Seed field: use_feast.",
            section=DATA,
            type="boolean",
        ),
        "feature_view_name": field(
            "customer_features",
            title="Feature view",
            description="The Feast view the script reads (FEATURE_VIEW_NAME). Seed field: feature_view_name.",
            section=DATA,
            **IDENTIFIER,
        ),
        "target_column": field(
            "churned",
            title="Label column",
            description="The label the platform scores the model against on its own holdout (use_feast).",
            section=DATA,
            **IDENTIFIER,
        ),
        "timeout": field(
            600,
            title="Timeout (seconds)",
            description=f"Seconds the script may run before it is stopped (10 to {settings.script_max_timeout}, "
            "the operator's cap). Seed field: timeout. Default: 600.",
            section=LIMITS,
            type="integer",
            minimum=10,
            maximum=settings.script_max_timeout,
        ),
        "memory_mb": field(
            min(4096, settings.script_max_memory_mb),
            title="Memory (MiB)",
            description=f"Memory the script's processes may use together (256 to {settings.script_max_memory_mb}, "
            "the operator's cap).",
            section=LIMITS,
            type="integer",
            minimum=256,
            maximum=settings.script_max_memory_mb,
        ),
        **_gate_fields(script=True),
    }
