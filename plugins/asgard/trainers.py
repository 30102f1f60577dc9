"""Estimators for each framework and model type, the preprocessing around them, and their metrics.

Every model is a scikit-learn ``Pipeline`` (impute + one-hot encode, then the framework's
estimator), so one MLflow flavour serves all three frameworks and the serving app and the champion
gate load any of them the same way, with ``predict_proba`` for classifiers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgard.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from sklearn.pipeline import Pipeline

FRAMEWORKS = ("sklearn", "xgboost", "lightgbm")
MODEL_TYPES = ("classification", "regression")

# (framework, model_type) → {algorithm: "module:Class"}; the first algorithm is the default.
ESTIMATORS: dict[tuple[str, str], dict[str, str]] = {
    ("sklearn", "classification"): {
        "random_forest": "sklearn.ensemble:RandomForestClassifier",
        "gradient_boosting": "sklearn.ensemble:GradientBoostingClassifier",
        "hist_gradient_boosting": "sklearn.ensemble:HistGradientBoostingClassifier",
        "extra_trees": "sklearn.ensemble:ExtraTreesClassifier",
        "logistic_regression": "sklearn.linear_model:LogisticRegression",
    },
    ("sklearn", "regression"): {
        "random_forest": "sklearn.ensemble:RandomForestRegressor",
        "gradient_boosting": "sklearn.ensemble:GradientBoostingRegressor",
        "hist_gradient_boosting": "sklearn.ensemble:HistGradientBoostingRegressor",
        "extra_trees": "sklearn.ensemble:ExtraTreesRegressor",
        "ridge": "sklearn.linear_model:Ridge",
        "linear_regression": "sklearn.linear_model:LinearRegression",
    },
    ("xgboost", "classification"): {"gradient_boosting": "xgboost:XGBClassifier"},
    ("xgboost", "regression"): {"gradient_boosting": "xgboost:XGBRegressor"},
    ("lightgbm", "classification"): {"gradient_boosting": "lightgbm:LGBMClassifier"},
    ("lightgbm", "regression"): {"gradient_boosting": "lightgbm:LGBMRegressor"},
}
ALGORITHMS = sorted({name for table in ESTIMATORS.values() for name in table})
# Linear models need scaled inputs; trees do not care.
SCALED = {"logistic_regression", "ridge", "linear_regression"}
# Quiet, deterministic defaults a user can override with hyperparameters.
FRAMEWORK_DEFAULTS = {"lightgbm": {"verbosity": -1}, "xgboost": {"n_jobs": 2}}

METRICS = {
    "classification": ("accuracy", "precision", "recall", "f1", "roc_auc"),
    "regression": ("rmse", "mae", "r2"),
}
# Metrics where smaller is better (user scripts may log any of these too).
LOWER_IS_BETTER = {"rmse", "mae", "mse", "mape", "log_loss", "loss"}
DEFAULT_METRIC = {"classification": "roc_auc", "regression": "rmse"}
# The Python distributions a model of each framework needs at load time (logged as its requirements).
# Each entry lists the distribution names that may provide it (XGBoost ships a CPU-only build too).
FRAMEWORK_DISTRIBUTIONS = {
    "sklearn": [("scikit-learn",)],
    "xgboost": [("scikit-learn",), ("xgboost", "xgboost-cpu")],
    "lightgbm": [("scikit-learn",), ("lightgbm",)],
}


@dataclass(frozen=True)
class ModelSpec:
    framework: str
    model_type: str
    algorithm: str
    params: dict[str, Any]

    @classmethod
    def from_request(cls, request: dict[str, Any]) -> ModelSpec:
        """Check framework, model type, algorithm and hyperparameters; every problem is named."""
        framework, model_type = request["framework"], request["model_type"]
        table = ESTIMATORS.get((framework, model_type))
        if table is None:
            raise InputError(f"unknown framework/model_type {framework!r}/{model_type!r}")
        algorithm = request.get("algorithm") or next(iter(table))
        if algorithm not in table:
            raise InputError(
                f"algorithm {algorithm!r} is not available for {framework} {model_type}; "
                f"choose one of {', '.join(table)}"
            )
        params = dict((request.get("hyperparameters") or {}).get("params") or {})
        spec = cls(framework, model_type, algorithm, params)
        spec.check_params()
        return spec

    @property
    def estimator_class(self) -> type:
        module, name = ESTIMATORS[(self.framework, self.model_type)][self.algorithm].split(":")
        return getattr(importlib.import_module(module), name)

    def estimator(self) -> Any:
        return self.estimator_class(**{**FRAMEWORK_DEFAULTS.get(self.framework, {}), **self.params})

    def check_params(self) -> None:
        """Fail naming each hyperparameter the estimator does not accept, or accepts with another value."""
        cls = self.estimator_class
        accepted = set(cls().get_params())
        unknown = sorted(set(self.params) - accepted)
        if unknown:
            raise InputError(
                f"{cls.__name__} does not accept hyperparameter(s) {', '.join(unknown)}; "
                f"it accepts: {', '.join(sorted(accepted))}"
            )
        estimator = self.estimator()
        if hasattr(estimator, "_parameter_constraints"):  # scikit-learn's own value checks
            try:
                estimator._validate_params()
            except (ValueError, TypeError) as error:
                raise InputError(f"bad hyperparameter for {cls.__name__}: {error}") from error

    def pipeline(self, frame: pd.DataFrame) -> Pipeline:
        """Preprocessing for ``frame``'s columns followed by the estimator (not fitted)."""
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline, make_pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        categorical = categorical_columns(frame)
        numeric = [column for column in frame.columns if column not in categorical]
        numeric_steps = [SimpleImputer(strategy="median")]
        if self.algorithm in SCALED:
            numeric_steps.append(StandardScaler())
        preprocess = ColumnTransformer(
            [
                ("numeric", make_pipeline(*numeric_steps), numeric),
                (
                    "categorical",
                    make_pipeline(
                        SimpleImputer(strategy="most_frequent"),
                        OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                    ),
                    categorical,
                ),
            ],
            verbose_feature_names_out=False,
        )
        return Pipeline([("preprocess", preprocess), ("model", self.estimator())])

    def fit(self, features: pd.DataFrame, target: pd.Series) -> Pipeline:
        model = self.pipeline(features)
        try:
            model.fit(features, target)
        except (ValueError, TypeError) as error:
            # A hyperparameter value the estimator only checks at fit time (xgboost, lightgbm).
            raise InputError(f"{self.estimator_class.__name__} could not be trained: {error}") from error
        return model


def categorical_columns(frame: pd.DataFrame) -> list[str]:
    import pandas as pd

    return [
        column
        for column in frame.columns
        if not pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(frame[column])
    ]


def prepare_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers as float64 (so a missing value is NaN, in training and in serving), the rest as strings."""
    categorical = set(categorical_columns(frame))
    return frame.astype({column: "object" if column in categorical else "float64" for column in frame.columns})


def check_metric(model_type: str, metric: str) -> None:
    if metric not in METRICS[model_type]:
        raise InputError(
            f"metric {metric!r} does not apply to {model_type}; choose one of {', '.join(METRICS[model_type])}"
        )


def evaluate(model: Any, features: pd.DataFrame | np.ndarray, target: pd.Series, model_type: str) -> dict[str, float]:
    """The holdout metrics of a fitted model (anything with ``predict``; ``predict_proba`` when it has one)."""
    predictions = model.predict(features)
    if model_type == "regression":
        return regression_metrics(target.to_numpy(), predictions)
    scores = model.predict_proba(features) if hasattr(model, "predict_proba") else None
    return classification_metrics(target.to_numpy(), predictions, scores)


def classification_metrics(truth: np.ndarray, predicted: np.ndarray, scores: np.ndarray | None) -> dict[str, float]:
    import numpy as np
    from sklearn import metrics

    classes = np.unique(truth)
    binary = len(classes) == 2
    average = "binary" if binary else "weighted"
    positive = {"pos_label": classes[-1]} if binary else {}
    result = {
        "accuracy": metrics.accuracy_score(truth, predicted),
        "precision": metrics.precision_score(truth, predicted, average=average, zero_division=0, **positive),
        "recall": metrics.recall_score(truth, predicted, average=average, zero_division=0, **positive),
        "f1": metrics.f1_score(truth, predicted, average=average, zero_division=0, **positive),
    }
    if scores is not None and len(classes) > 1:
        if binary:
            result["roc_auc"] = metrics.roc_auc_score(truth, scores[:, -1])
        else:
            result["roc_auc"] = metrics.roc_auc_score(truth, scores, multi_class="ovr", average="weighted")
    return {name: float(value) for name, value in result.items()}


def regression_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn import metrics

    return {
        "rmse": float(metrics.root_mean_squared_error(truth, predicted)),
        "mae": float(metrics.mean_absolute_error(truth, predicted)),
        "r2": float(metrics.r2_score(truth, predicted)),
    }


def baseline_metrics(train_target: pd.Series, target: pd.Series, model_type: str) -> dict[str, float]:
    """The holdout metrics of the trivial model (majority class / mean): what a real model must beat."""
    import numpy as np
    from sklearn.dummy import DummyClassifier, DummyRegressor

    dummy = DummyClassifier(strategy="prior") if model_type == "classification" else DummyRegressor()
    dummy.fit(np.zeros((len(train_target), 1)), train_target)  # a trivial model ignores the features
    return evaluate(dummy, np.zeros((len(target), 1)), target, model_type)


def better(metric: str, candidate: float, reference: float, min_improvement: float = 0.0) -> bool:
    """Whether ``candidate`` is at least as good as ``reference`` plus ``min_improvement`` on ``metric``."""
    if metric in LOWER_IS_BETTER:
        return reference - candidate >= min_improvement
    return candidate - reference >= min_improvement


def pip_requirements(framework: str) -> list[str]:
    """Exact pins of what loading the model needs (explicit: inferring them costs seconds per model)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for candidates in [("numpy",), ("pandas",), *FRAMEWORK_DISTRIBUTIONS[framework]]:
        for distribution in candidates:
            try:
                pins.append(f"{distribution}=={version(distribution)}")
                break
            except PackageNotFoundError:
                continue
        else:
            raise RuntimeError(f"none of {', '.join(candidates)} is installed, but a {framework} model needs it")
    return pins
