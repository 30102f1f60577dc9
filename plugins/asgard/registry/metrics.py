"""How models are scored: the holdout metrics of each model type, the trivial baseline, and "better".

The champion gate (``registry.models``) and training (``training.pipeline``) both score with these,
so a challenger and the champion are always measured the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asgard.core.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

METRICS = {
    "classification": ("accuracy", "precision", "recall", "f1", "roc_auc"),
    "regression": ("rmse", "mae", "r2"),
}
# Metrics where smaller is better (user scripts may log any of these too).
LOWER_IS_BETTER = {"rmse", "mae", "mse", "mape", "log_loss", "loss"}
DEFAULT_METRIC = {"classification": "roc_auc", "regression": "rmse"}


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
