"""Monitoring one model version over one window: drift, data quality, performance, alerts, retraining.

A window's scored data is what the serving app logged (JSON lines with the features, the prediction
and its id: the embedded Docker target's in ``<data_dir>/predictions/<model>``, cluster pods' under
``ASGARD_PREDICTION_LOG_URI``/<model> on S3) and any Parquet files the run names (batch
inputs with their features, ``score_batch`` outputs with their predictions). It is compared with
the version's training reference (``reference/profile.json`` and ``reference/sample.parquet``);
the reference predictions are the model's own on that sample, through :class:`asgard.scoring.Scorer`.

No crying wolf: below ``min_samples`` rows there is no drift verdict, and a breach alerts only once
it has held for ``persistence`` consecutive windows (a schema change alerts at once).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from asgard import drift
from asgard.errors import InputError
from asgard.monitoring_store import Record

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger(__name__)

PROFILE_ARTIFACT = "reference/profile.json"
PREDICTION_SUBJECT = "prediction"
DRIFT_TYPES = ("feature_drift", "prediction_drift")


class MonitoringError(InputError):
    """The monitoring request cannot be answered as asked (unknown model, no reference, bad source)."""


@dataclass(frozen=True)
class Thresholds:
    """When a metric breaches, and how long a breach must last to alert (the seed's defaults)."""

    drift: float = 0.1
    p_value: float = 0.05  # and the drift must be significant at this level
    missing: float = 0.05
    out_of_range: float = 0.05
    unseen: float = 0.05
    accuracy: float = 0.7
    min_samples: int = 500
    min_labels: int = 100
    persistence: int = 2
    retrain_cooldown_hours: float = 72.0

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Thresholds:
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(values or {}) - known)
        if unknown:
            raise MonitoringError(f"unknown threshold(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{key: value for key, value in (values or {}).items() if value is not None})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- reference
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
                np.sort(values[~np.isnan(values)]),
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


def load_reference(hook: Any, model_name: str, version: str | None = None, alias: str | None = None) -> Reference:
    """The training reference of a registered version (by number, alias, or ``@champion``)."""
    from asgard.batch_scoring import model_inputs
    from asgard.scoring import Scorer
    from asgard.serving_image import resolve_model_version
    from asgard.training import REFERENCE_SAMPLE_ARTIFACT

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
    scorer = Scorer.for_model(hook.load_model(f"models:/{model_name}/{ref.version}"), inputs, model_name, ref.version)
    return Reference.from_training(profile, sample, scorer, run_id=ref.run_id)


# --------------------------------------------------------------------------- the window's data
@dataclass
class Window:
    """Scored rows of one window: features where known, predictions, ids and labels where known."""

    start: datetime
    end: datetime
    features: pd.DataFrame  # rows with the model's inputs
    predictions: pd.Series  # every scored row's prediction (feature rows first)
    probabilities: pd.DataFrame | None
    prediction_ids: pd.Series
    labels: pd.Series | None  # aligned with predictions; NaN where no label has arrived

    @property
    def rows(self) -> int:
        return len(self.predictions)


def read_prediction_log(
    location: str | Path, start: datetime, end: datetime, model_version: str, aws_conn_id: str = "aws_default"
) -> pd.DataFrame:
    """The serving app's logged predictions of one version in ``[start, end)``: feature columns + prediction.

    ``location`` is a folder or an ``s3://bucket/prefix``; either holds one JSON-lines file per batch,
    named after the millisecond it was written (``predictions-<ms>-...``), so batches written before
    the window started are never read.
    """
    start_ms = int(start.timestamp() * 1000)
    if str(location).startswith("s3://"):
        batches = _s3_log_batches(str(location), start_ms, aws_conn_id)
    else:
        batches = _local_log_batches(Path(location), start_ms)
    start_s, end_s = start.timestamp(), end.timestamp()
    records = []
    for text in batches:
        for line in text.splitlines():
            record = json.loads(line)
            if start_s <= record["logged_at"] < end_s and str(record.get("model_version")) == model_version:
                records.append(record)
    if not records:
        return pd.DataFrame()
    frame = pd.DataFrame([record["features"] for record in records])
    frame["prediction"] = [record["prediction"] for record in records]
    frame["prediction_id"] = [record["prediction_id"] for record in records]
    if "probabilities" in records[0]:
        probabilities = pd.DataFrame([record.get("probabilities") for record in records])
        frame = pd.concat([frame, probabilities.add_prefix("probability_")], axis=1)
    return frame


def _written_ms(name: str) -> int:
    return int(name.rsplit("/", 1)[-1].split("-")[1])  # a batch is written after its rows were logged


def _local_log_batches(folder: Path, start_ms: int) -> Iterator[str]:
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("predictions-*.jsonl")):
        if _written_ms(path.name) >= start_ms:
            yield path.read_text()


def _s3_log_batches(uri: str, start_ms: int, aws_conn_id: str) -> Iterator[str]:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = S3Hook.parse_s3_url(uri)
    prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    hook = S3Hook(aws_conn_id=aws_conn_id)
    try:
        # Keys sort by the millisecond in their name (13 digits): the listing starts at the window.
        keys = hook.list_keys(bucket, prefix=f"{prefix}predictions-", start_after_key=f"{prefix}predictions-{start_ms}")
        for key in sorted(keys):
            if key.endswith(".jsonl") and _written_ms(key) >= start_ms:
                yield hook.read_key(key, bucket)
    except (BotoCoreError, ClientError) as error:
        raise MonitoringError(f"cannot read the prediction log {uri}: {error}") from None


def read_sources(paths: list[str], aws_conn_id: str = "aws_default") -> list[pd.DataFrame]:
    """Parquet files named by the run (local or ``s3://``), each as it is."""
    from asgard.batch_scoring import Location

    frames = []
    for path in paths:
        location = Location(path, aws_conn_id)
        try:
            frames.append(pd.read_parquet(location.path, filesystem=location.filesystem()))
        except (OSError, ValueError) as error:
            raise MonitoringError(f"cannot read the window's data {path}: {error}") from None
    return frames


def assemble_window(
    reference: Reference, frames: list[pd.DataFrame], start: datetime, end: datetime, labels: pd.DataFrame | None
) -> Window:
    """One window from its frames: rows without predictions are scored; rows with features are profiled."""
    inputs = list(reference.features)
    with_features, predictions_only = [], []
    for frame in frames:
        if frame.empty:
            continue
        has_features = any(column in frame.columns for column in inputs)
        if "prediction" not in frame.columns:
            if not has_features:
                raise MonitoringError(
                    f"a window source has neither the model's inputs ({', '.join(inputs)}) nor a prediction column"
                )
            frame = frame.assign(**_scored(reference, frame))
        (with_features if has_features else predictions_only).append(frame)
    rows = with_features + predictions_only
    if not rows:
        return Window(start, end, pd.DataFrame(columns=inputs), pd.Series(dtype=object), None, pd.Series(), None)
    combined = pd.concat(rows, ignore_index=True, sort=False)
    features = pd.concat(with_features, ignore_index=True, sort=False) if with_features else pd.DataFrame()
    features = features[[column for column in inputs if column in features.columns]]
    probability_columns = [column for column in combined.columns if column.startswith("probability_")]
    ids = combined["prediction_id"] if "prediction_id" in combined else pd.Series([None] * len(combined))
    label_values = combined[reference.target] if reference.target and reference.target in combined else None
    if labels is not None and not labels.empty:
        joined = ids.map(labels.set_index("prediction_id")["label"])
        label_values = joined if label_values is None else label_values.fillna(joined)
    return Window(
        start,
        end,
        features,
        combined["prediction"],
        combined[probability_columns] if probability_columns else None,
        ids,
        label_values,
    )


def _scored(reference: Reference, frame: pd.DataFrame) -> dict[str, Any]:
    try:
        return reference.scorer.predict(frame)
    except KeyError as error:
        raise MonitoringError(f"a window source lacks model inputs: {error.args[0]}") from None


# --------------------------------------------------------------------------- evaluation
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
        if stats.rows - round(stats.missing_rate * stats.rows) < thresholds.min_samples:
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
    return records, skipped


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


# --------------------------------------------------------------------------- alerts
def decide_alerts(records: list[Record], thresholds: Thresholds, store: Any) -> list[Record]:
    """Set ``alert_triggered`` on the records whose breach has lasted ``persistence`` windows."""
    for record in records:
        if not record.breached or record.alert_triggered:
            continue
        earlier = store.recent_breaches(
            record.model_name,
            record.model_version,
            record.metric_type,
            record.subject,
            windows=thresholds.persistence - 1,
            before=record.window_end,
        )
        if len(earlier) == thresholds.persistence - 1 and all(earlier):
            record.alert_triggered = True
            record.alerts = [_alert_text(record, thresholds)]
    return [record for record in records if record.alert_triggered]


def _alert_text(record: Record, thresholds: Thresholds) -> str:
    lasting = f" for {thresholds.persistence} windows" if thresholds.persistence > 1 else ""
    subject = f" {record.subject}" if record.subject else ""
    metrics = record.metrics
    if record.metric_type in DRIFT_TYPES:
        what = f"drift_score drift detected: {metrics['drift_score']:.3f} > {thresholds.drift}"
    elif record.metric_type == "model_performance":
        what = f"accuracy below threshold: {metrics['accuracy']:.3f} < {thresholds.accuracy}"
    else:
        what = ", ".join(f"{key} {value:.3f}" for key, value in metrics.items()) + " over threshold"
    return f"{record.metric_type}{subject}: {what}{lasting}"


def external_record(request: dict[str, Any], thresholds: Thresholds) -> Record:
    """A ``POST /mlops/monitoring`` body as a record, its alerts decided by the same thresholds (no persistence)."""
    metrics = {key: float(value) for key, value in (request.get("metrics") or {}).items()}
    alerts = []
    for key, value in metrics.items():
        if (
            "drift" in key or key in ("psi", "js_divergence", "ks_statistic", "wasserstein")
        ) and value > thresholds.drift:
            alerts.append(f"{key} drift detected: {value:.3f}")
        elif "missing" in key and value > thresholds.missing:
            alerts.append(f"{key} missing data: {value:.3f}")
        elif key == "accuracy" and value < thresholds.accuracy:
            alerts.append(f"accuracy below threshold: {value:.3f}")
    return Record(
        model_name=request["model_name"],
        model_version=str(request["model_version"]),
        metric_type=request["metric_type"],
        metrics=metrics,
        reference_data=request.get("reference_data"),
        current_data=request.get("current_data"),
        tags=request.get("tags") or {},
        breached=bool(alerts),
        alert_triggered=bool(alerts),
        alerts=alerts,
    )


def retrain_reason(alerts: list[Record]) -> str | None:
    """Why the model should be retrained: persistent drift (not data-quality problems, which retraining hides)."""
    drifted = [
        record for record in alerts if record.metric_type in DRIFT_TYPES or record.metric_type == "model_performance"
    ]
    if not drifted:
        return None
    return "; ".join(text for record in drifted for text in record.alerts)


def default_window(run_after: datetime, start: str | None, end: str | None) -> tuple[datetime, datetime]:
    """``[start, end)``: as given, else the day before the run."""
    window_end = _parse_time(end) if end else run_after
    window_start = _parse_time(start) if start else window_end - timedelta(days=1)
    if window_start >= window_end:
        raise MonitoringError(
            f"window_start {window_start.isoformat()} is not before window_end {window_end.isoformat()}"
        )
    return window_start, window_end


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- one run
def deployed_models(hook: Any) -> list[dict[str, str]]:
    """Models whose ``@champion`` is serving (``deploy.status`` tag) and has a training reference:
    what the daily run checks. A serving version without one is logged and left out."""
    from asgard.deployment import DEPLOY_TAG_PREFIX
    from asgard.model_registry import champions

    found = []
    for version in champions(hook):
        if (version.tags or {}).get(f"{DEPLOY_TAG_PREFIX}status") != "serving":
            continue
        if not hook.logged_json(version.run_id, PROFILE_ARTIFACT):
            # A script-trained version that logged no profile: the sweep goes on with the others.
            log.warning(
                "%s v%s is serving but cannot be monitored: its run %s logged no reference profile (%s)",
                version.name,
                version.version,
                version.run_id,
                PROFILE_ARTIFACT,
            )
            continue
        found.append({"model_name": version.name, "model_version": str(version.version)})
    return found


def batch_outputs(batch_events: Any, model_name: str, model_version: str, start: datetime, end: datetime) -> list[str]:
    """The ``score_batch`` outputs of this model version published in ``[start, end)``, from the
    ``asgard-batch-predictions`` Asset events (a task's inlet events accessor); newest last, once each."""
    if batch_events is None:
        return []
    found = []
    for event in batch_events.after(start.isoformat()).before(end.isoformat()):
        extra = event.extra or {}
        if extra.get("model_name") != model_name or str(extra.get("model_version")) != str(model_version):
            continue
        path = event.asset.uri.removeprefix("file://")
        if path not in found:
            found.append(path)
    return found


def monitor_version(
    target: dict[str, Any],
    params: dict[str, Any],
    *,
    source_run: str,
    run_after: datetime,
    batch_events: Any = None,
) -> dict[str, Any]:
    """Check one model version over the run's window; store, report, alert, and say whether to retrain.

    The window's data: the serving prediction log, the ``sources`` named in the conf, and the batch
    outputs ``score_batch`` published for this version within the window (``batch_events``).
    """
    from asgard.hooks.mlflow import MlflowHook
    from asgard.monitoring_report import render
    from asgard.monitoring_store import MonitoringStore
    from asgard.settings import get_settings

    settings, hook = get_settings(), MlflowHook()
    thresholds = Thresholds.from_dict(params.get("thresholds"))
    start, end = default_window(run_after, params.get("window_start"), params.get("window_end"))
    reference = load_reference(hook, target["model_name"], target.get("model_version"), target.get("alias"))
    name, version = reference.model_name, reference.model_version
    aws_conn_id = params.get("aws_conn_id") or "aws_default"
    frames = [
        read_prediction_log(location, start, end, version, aws_conn_id) for location in settings.prediction_logs(name)
    ]
    sources = list(params.get("sources") or [])
    published = [path for path in batch_outputs(batch_events, name, version, start, end) if path not in sources]
    if published:
        log.info("%s v%s: batch outputs of the window: %s", name, version, ", ".join(published))
    frames += read_sources(sources + published, aws_conn_id)
    labels = pd.concat(read_sources(list(params.get("labels") or []), aws_conn_id) or [pd.DataFrame()])
    if not labels.empty and not {"prediction_id", "label"} <= set(labels.columns):
        raise MonitoringError("label files need the columns prediction_id and label")
    window = assemble_window(reference, frames, start, end, labels)

    records, skipped = evaluate(reference, window, thresholds)
    for reason in skipped:
        log.info("%s v%s: %s", name, version, reason)
    store = MonitoringStore(settings.monitoring_db_url)
    alerts = decide_alerts(records, thresholds, store)
    for record in records:
        record.tags = {"source": "monitor_model", "source_run": source_run}
    store.replace_run(source_run, name, version, records)

    summary = {"start": start.isoformat(), "end": end.isoformat(), "rows": window.rows, "batch_outputs": published}
    report = _write_report(
        settings.data_dir / "monitoring" / "reports" / name / f"v{version}-{end:%Y%m%dT%H%M%SZ}.html",
        render(name, version, records, skipped, summary),
    )
    _log_to_mlflow(hook, reference.run_id, records, report, end)
    log.info("report: file://%s", report)
    reason = retrain_reason(alerts)
    retrain = None
    conf = _retrain_conf(hook, reference) if reason and params.get("retrain", True) else None
    if conf is not None:
        claimed = store.claim_retrain(
            name,
            version,
            reason=reason,
            source_run=source_run,
            now=datetime.now(UTC),
            cooldown=timedelta(hours=thresholds.retrain_cooldown_hours),
        )
        retrain = conf if claimed else None
        if not claimed:
            log.info("%s: persistent drift, but a retraining was requested within the cool-down", name)
    return {
        "model_name": name,
        "model_version": version,
        "window": summary,
        "checks": len(records),
        "breaches": sum(record.breached for record in records),
        "alerts": [text for record in alerts for text in record.alerts],
        "skipped": skipped,
        "report": str(report),
        "retrain": retrain,
    }


def _retrain_conf(hook: Any, reference: Reference) -> dict[str, Any] | None:
    from asgard.training import REQUEST_ARTIFACT

    request = hook.logged_json(reference.run_id, REQUEST_ARTIFACT)
    if request is None:
        log.warning(
            "%s v%s drifted, but its run has no %s (not trained by train_model): retrain it by hand",
            reference.model_name,
            reference.model_version,
            REQUEST_ARTIFACT,
        )
        return None
    return request


def _write_report(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)
    return path


def _log_to_mlflow(hook: Any, run_id: str, records: list[Record], report: Path, end: datetime) -> None:
    """Monitoring metrics on the version's training run (one point per window) and the report beside them."""
    from mlflow.entities import Metric

    stamp = int(end.timestamp() * 1000)
    metrics = [
        Metric(f"monitoring.{record.metric_type}.{record.subject or 'model'}.{key}"[:250], float(value), stamp, 0)
        for record in records
        for key, value in record.metrics.items()
        if key in ("drift_score", "missing_rate", "accuracy", "rmse")
    ]
    for offset in range(0, len(metrics), 1000):
        hook.client.log_batch(run_id, metrics=metrics[offset : offset + 1000])
    hook.client.log_artifact(run_id, str(report), "monitoring")
