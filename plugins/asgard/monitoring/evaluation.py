"""One window against its reference: drift, data quality and performance, each as a record.

No crying wolf: below ``min_samples`` rows there is no drift verdict; whether a breach alerts is
decided later (:mod:`asgard.monitoring.alerts`), once it has lasted. A statistic that came out
infinite or NaN is no verdict either: it is left out of its record, which is not judged.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from asgard.monitoring import drift
from asgard.monitoring.reference import Reference
from asgard.monitoring.store import Record, non_finite
from asgard.monitoring.thresholds import Thresholds
from asgard.monitoring.windows import Window

PREDICTION_SUBJECT = "prediction"

log = logging.getLogger(__name__)


def evaluate(reference: Reference, window: Window, thresholds: Thresholds) -> tuple[list[Record], list[str]]:
    """The window's records (``breached`` set, alerts not yet decided) and the reasons for any skipped verdict."""
    base = {
        "model_name": reference.model_name,
        "model_version": reference.model_version,
        "window_start": window.start,
        "window_end": window.end,
    }
    records: list[Record] = []
    skipped: list[str] = []
    if window.rows == 0:
        return [], [f"no scored rows between {window.start:%Y-%m-%d %H:%M} and {window.end:%Y-%m-%d %H:%M} UTC"]

    schema_problems = _schema_changes(reference, window.features)
    if schema_problems:
        records.append(
            Record(
                metric_type="data_quality",
                subject="schema",
                metrics={"schema_changes": float(len(schema_problems))},
                breached=True,
                alert_triggered=True,
                alerts=[f"schema change: {problem}" for problem in schema_problems],
                rows=len(window.features),
                **base,
            )
        )

    feature_rows = len(window.features)
    for name, ref in reference.features.items():
        if name not in window.features.columns or not feature_rows:
            continue
        stats = _column_statistics(window.features[name], ref)
        if stats is None:
            continue
        quality = {"missing_rate": stats.missing_rate}
        for key in ("out_of_range_rate", "unseen_rate"):
            if key in stats.metrics:
                quality[key] = stats.metrics.pop(key)
        records.append(
            Record(
                metric_type="data_quality",
                subject=name,
                metrics=quality,
                breached=_quality_breached(quality, thresholds),
                rows=stats.rows,
                **base,
            )
        )
        if stats.drift_score is None or stats.rows - round(stats.missing_rate * stats.rows) < thresholds.min_samples:
            continue
        records.append(
            Record(
                metric_type="feature_drift",
                subject=name,
                metrics=stats.metrics,
                reference_data=_reference_summary(ref),
                current_data=stats.current,
                breached=_drifted(stats, thresholds),
                rows=stats.rows,
                **base,
            )
        )
    if feature_rows and feature_rows < thresholds.min_samples:
        skipped.append(
            f"feature drift: {feature_rows} rows with features, fewer than min_samples {thresholds.min_samples}"
        )

    if window.rows >= thresholds.min_samples:
        stats = _column_statistics(window.predictions, reference.prediction)
        records.append(
            Record(
                metric_type="prediction_drift",
                subject=PREDICTION_SUBJECT,
                metrics=stats.metrics,
                reference_data=_reference_summary(reference.prediction),
                current_data=stats.current,
                breached=_drifted(stats, thresholds),
                rows=stats.rows,
                **base,
            )
        )
    else:
        skipped.append(f"prediction drift: {window.rows} scored rows, fewer than min_samples {thresholds.min_samples}")

    performance = _performance(reference, window, thresholds)
    if isinstance(performance, str):
        skipped.append(performance)
    else:
        records.append(Record(**base, **performance))
    for record in records:
        _set_aside_non_finite(record, skipped)
    return records, skipped


def _set_aside_non_finite(record: Record, skipped: list[str]) -> None:
    """Drop a record's infinite or NaN statistics and leave it unjudged: no alert says "inf".

    In the distributions' summaries (shown, never judged) such a number is null: not computable.
    """
    record.reference_data = _nulled(record.reference_data)
    record.current_data = _nulled(record.current_data)
    odd = {key: value for key, value in record.metrics.items() if not math.isfinite(value)}
    if not odd:
        return
    subject = f" {record.subject}" if record.subject else ""
    reason = (
        f"{record.metric_type}{subject}: not judged, "
        + ", ".join(f"{key} came out {value}" for key, value in odd.items())
        + " (left out of the record)"
    )
    log.warning("%s v%s: %s", record.model_name, record.model_version, reason)
    skipped.append(reason)
    record.metrics = {key: value for key, value in record.metrics.items() if key not in odd}
    record.breached = record.alert_triggered = False
    record.alerts = []


def _nulled(value: Any) -> Any:
    if next(non_finite(value), None) is None:
        return value
    if isinstance(value, dict):
        return {key: _nulled(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_nulled(item) for item in value]
    return None


def _drifted(stats: drift.ColumnStatistics, thresholds: Thresholds) -> bool:
    return (
        stats.drift_score is not None
        and stats.drift_score > thresholds.drift
        and (stats.p_value is None or stats.p_value < thresholds.p_value)
    )


def _column_statistics(values: pd.Series, ref: Any) -> drift.ColumnStatistics | None:
    if isinstance(ref, drift.NumericReference):
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        return drift.numeric_statistics(numbers, ref)
    return drift.categorical_statistics(values, ref)


def _schema_changes(reference: Reference, features: pd.DataFrame) -> list[str]:
    if features.empty:
        return []
    problems = [f"input column {name!r} is missing" for name in reference.features if name not in features.columns]
    for name, ref in reference.features.items():
        if name in features.columns and isinstance(ref, drift.NumericReference):
            column = features[name]
            if not pd.api.types.is_numeric_dtype(column) and pd.to_numeric(column, errors="coerce").isna().all():
                problems.append(f"input column {name!r} was numeric in training and is now {column.dtype}")
    return problems


def _quality_breached(quality: dict[str, float], thresholds: Thresholds) -> bool:
    return (
        quality["missing_rate"] > thresholds.missing
        or quality.get("out_of_range_rate", 0.0) > thresholds.out_of_range
        or quality.get("unseen_rate", 0.0) > thresholds.unseen
    )


def _reference_summary(ref: Any) -> dict[str, Any]:
    if isinstance(ref, drift.NumericReference):
        sample = ref.sorted_sample
        return {
            "mean": float(sample.mean()),
            "std": ref.std,
            "bin_edges": ref.bin_edges.tolist(),
            "bin_proportions": (ref.bin_counts / ref.bin_counts.sum()).tolist(),
        }
    return {"frequencies": dict(zip(ref.categories, ref.frequencies.tolist(), strict=True))}


def _performance(reference: Reference, window: Window, thresholds: Thresholds) -> dict[str, Any] | str:
    if window.labels is None:
        return "performance: no labels for this window yet"
    known = window.labels.notna().to_numpy()
    count = int(known.sum())
    if count < thresholds.min_labels:
        return f"performance: {count} labelled rows, fewer than min_labels {thresholds.min_labels}"
    truth, predicted = window.labels[known], window.predictions[known]
    if reference.scorer.classes is not None:
        accuracy = float(_same_labels(truth, predicted).mean())
        metrics = {"accuracy": accuracy, "labelled_rows": float(count)}
        breached = accuracy < thresholds.accuracy
    else:
        errors = truth.to_numpy(dtype=float) - predicted.to_numpy(dtype=float)
        metrics = {"rmse": float(np.sqrt(np.mean(errors**2))), "mae": float(np.mean(np.abs(errors)))}
        metrics["labelled_rows"] = float(count)
        breached = False  # no default threshold for errors in the target's own units
    return {
        "metric_type": "model_performance",
        "subject": "",
        "metrics": metrics,
        "breached": breached,
        "rows": count,
    }


def _same_labels(truth: pd.Series, predicted: pd.Series) -> np.ndarray:
    """Label equality that survives a label column turned float by missing labels (1.0 is label 1)."""
    if pd.api.types.is_numeric_dtype(truth) and pd.api.types.is_numeric_dtype(predicted):
        return truth.to_numpy(dtype=float) == predicted.to_numpy(dtype=float)
    return truth.astype(str).to_numpy() == predicted.astype(str).to_numpy()
