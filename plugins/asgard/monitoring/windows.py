"""A window's scored data: what the serving app logged, ``score_batch``'s outputs, and named sources.

The serving app logs JSON lines with the features, the prediction and its id (the embedded Docker
target's in ``<data_dir>/predictions/<model>``, cluster pods' under ``ASGARD_PREDICTION_LOG_URI``/<model>
on S3); a run may also name Parquet files (batch inputs with their features, ``score_batch``
outputs with their predictions), and labels that arrived later (joined on the prediction id).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from asgard.core.leftovers import LeftoverError, read_left_file
from asgard.core.storage import Location
from asgard.monitoring.reference import Reference
from asgard.monitoring.thresholds import MonitoringError

if TYPE_CHECKING:
    from collections.abc import Iterator


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
    requests = []
    for text in batches:
        for line in text.splitlines():
            record = json.loads(line)
            if start_s <= record["logged_at"] < end_s and str(record.get("model_version")) == model_version:
                requests.append(_as_columns(record))
    if not requests:
        return pd.DataFrame()
    # Column by column: a request may leave out an optional column, null for its rows.
    names = dict.fromkeys(name for request in requests for name in request["features"])
    features: dict[str, list] = {name: [] for name in names}
    for request in requests:
        rows = len(request["prediction_ids"])
        for name, values in features.items():
            values.extend(request["features"].get(name) or [None] * rows)
    frame = pd.DataFrame(features)
    frame["prediction"] = [value for request in requests for value in request["predictions"]]
    frame["prediction_id"] = [value for request in requests for value in request["prediction_ids"]]
    if requests[0].get("probabilities") is not None:
        probabilities = pd.DataFrame([row for request in requests for row in request["probabilities"]])
        frame = pd.concat([frame, probabilities.add_prefix("probability_")], axis=1)
    return frame


def _as_columns(record: dict) -> dict:
    """A logged line in the columnar form: one request's rows (what images write; row ``i``'s id is
    ``<request_id>-<i>``), or one row (what images built before it was adopted wrote, and still
    write while they serve)."""
    if "request_id" in record:
        request_id = record["request_id"]
        return {**record, "prediction_ids": [f"{request_id}-{row}" for row in range(record["rows"])]}
    probabilities = record.get("probabilities")
    return {
        "prediction_ids": [record["prediction_id"]],
        "features": {name: [value] for name, value in record["features"].items()},
        "predictions": [record["prediction"]],
        "probabilities": None if probabilities is None else [probabilities],
    }


# What the serving image names a batch (asgard_serving.prediction_log): the millisecond it was written.
LOG_BATCH_NAME = re.compile(r"^predictions-\d{13}-[A-Za-z0-9_.-]{1,80}\.jsonl$")
# A batch is bounded by the image's ASGARD_PREDICTION_LOG_MAX_BYTES; this is far above any it writes.
MAX_LOG_BATCH_BYTES = 256 * 1024 * 1024


def _written_ms(name: str) -> int:
    return int(name.rsplit("/", 1)[-1].split("-")[1])  # a batch is written after its rows were logged


def _local_log_batches(folder: Path, start_ms: int) -> Iterator[str]:
    """The batches a serving container wrote in its log folder since ``start_ms``. The container runs the
    model's own code and may write anything there: only regular files of a sane size are read, with no
    link followed (a link to a host file, a fifo or /dev/zero is refused, naming it)."""
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("predictions-*.jsonl")):
        if not LOG_BATCH_NAME.match(path.name):
            raise MonitoringError(f"{path} is not a prediction log batch of the serving image's: refused")
        if _written_ms(path.name) >= start_ms:
            try:
                yield read_left_file(folder, path.name, max_bytes=MAX_LOG_BATCH_BYTES).decode("utf-8")
            except (LeftoverError, UnicodeDecodeError) as error:
                raise MonitoringError(f"cannot read the prediction log: {error}") from None


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
