"""Estimators for each framework and model type, the preprocessing around them, and their metrics.

Every model is a scikit-learn ``Pipeline`` (impute + one-hot encode, then the framework's
estimator), so one MLflow flavour serves all three frameworks and the serving app and the champion
gate load any of them the same way, with ``predict_proba`` for classifiers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgard.core.errors import InputError
from asgard.registry.versions import categorical_columns

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.models import ModelSignature
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


def model_signature(model: Pipeline, example: pd.DataFrame) -> ModelSignature:
    """The model's MLflow signature. The inputs its pipeline imputes are optional (``required=False``):
    a request may leave such a column out, and the model fills it as it fills a missing value in
    training (the median, the most frequent category); the serving app sends it as missing."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import ColSpec, Schema

    inferred = infer_signature(example, model.predict(example))
    imputed = imputed_columns(model)
    inputs = [ColSpec(spec.type, spec.name, required=spec.name not in imputed) for spec in inferred.inputs.inputs]
    return ModelSignature(Schema(inputs), inferred.outputs)


def imputed_columns(model: Pipeline) -> set[str]:
    """The input columns whose first step in the fitted pipeline is an imputer."""
    from sklearn.impute import SimpleImputer

    preprocess = model.named_steps.get("preprocess") if hasattr(model, "named_steps") else None
    imputed: set[str] = set()
    for _, transformer, columns in getattr(preprocess, "transformers_", []):
        first = transformer.steps[0][1] if hasattr(transformer, "steps") else transformer
        if isinstance(first, SimpleImputer):
            imputed.update(columns)
    return imputed
