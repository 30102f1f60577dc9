"""A version's training reference, as monitoring compares windows with it.

The profile (``reference/profile.json``: bins, ranges, category frequencies over all training rows)
and the reference sample (``reference/sample.parquet``: values for KS and Wasserstein), and the
model itself, to predict on that sample and score windows that carry no predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from asgard.core.errors import InputError
from asgard.monitoring import drift
from asgard.monitoring.thresholds import MonitoringError
from asgard.registry.versions import (
    PROFILE_ARTIFACT,
    REFERENCE_SAMPLE_ARTIFACT,
    load_platform_model,
    model_inputs,
    resolve_model_version,
)

if TYPE_CHECKING:
    from asgard.hooks.mlflow import MlflowHook


@dataclass
class Reference:
    """A version's training data as monitoring needs it, and its model to score windows with."""

    model_name: str
    model_version: str
    run_id: str
    features: dict[str, drift.NumericReference | drift.CategoricalReference]
    prediction: drift.NumericReference | drift.CategoricalReference
    target: str | None
    scorer: Any

    @classmethod
    def from_training(
        cls, profile: dict[str, Any], sample: pd.DataFrame, scorer: Any, *, run_id: str = ""
    ) -> Reference:
        predictions = scorer.predict(sample)["prediction"]
        return cls(
            scorer.model_name,
            scorer.model_version,
            run_id,
            feature_references(profile, sample),
            prediction_reference(predictions, classifier=scorer.classes is not None),
            (profile.get("target") or {}).get("name"),
            scorer,
        )


def feature_references(profile: dict[str, Any], sample: pd.DataFrame) -> dict[str, Any]:
    """Per feature: bins and range from the profile (all training rows), sorted values from the sample."""
    features: dict[str, drift.NumericReference | drift.CategoricalReference] = {}
    for name, summary in profile["features"].items():
        if summary["kind"] == "numeric":
            values = pd.to_numeric(sample[name], errors="coerce").to_numpy(dtype=float)
            features[name] = drift.NumericReference(
                np.asarray(summary["bin_edges"], dtype=float),
                np.asarray(summary["bin_counts"], dtype=float),
                np.sort(values[np.isfinite(values)]),
                float(summary["std"] or 0.0),
                float(summary["min"]),
                float(summary["max"]),
            )
        else:
            features[name] = drift.CategoricalReference.from_frequencies(summary["frequencies"])
    return features


def prediction_reference(predictions: np.ndarray, *, classifier: bool) -> Any:
    if classifier:
        labels = pd.Series(predictions).astype(str).value_counts(normalize=True)
        return drift.CategoricalReference.from_frequencies(labels.to_dict())
    return drift.NumericReference.from_values(np.asarray(predictions, dtype=float))


def load_reference(
    hook: MlflowHook, model_name: str, version: str | None = None, alias: str | None = None
) -> Reference:
    """The training reference of a registered version (by number, alias, or ``@champion``)."""
    from asgard.scoring.scorer import Scorer

    try:
        ref = resolve_model_version(hook, model_name, version, alias)
    except InputError as error:
        raise MonitoringError(str(error)) from None
    profile = hook.logged_json(ref.run_id, PROFILE_ARTIFACT)
    if not profile or not profile.get("features"):
        raise MonitoringError(
            f"{model_name} v{ref.version} has no reference profile ({PROFILE_ARTIFACT} in run {ref.run_id}): "
            "only versions trained by train_model (or scripts that log one) can be monitored"
        )
    sample = hook.logged_frame(ref.run_id, REFERENCE_SAMPLE_ARTIFACT)
    if sample is None:
        raise MonitoringError(f"{model_name} v{ref.version} has no reference sample ({REFERENCE_SAMPLE_ARTIFACT})")
    inputs = model_inputs(hook, model_name, ref.version)
    model = load_platform_model(hook, model_name, ref.version)
    scorer = Scorer.for_model(model, inputs, model_name, ref.version)
    return Reference.from_training(profile, sample, scorer, run_id=ref.run_id)
