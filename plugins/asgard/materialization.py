"""What the ``materialize_features`` tasks do, kept out of the DAG file (and testable without Airflow)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from asgard import features

log = logging.getLogger(__name__)


def plan_run(
    params: dict[str, Any],
    interval_start: datetime | None,
    interval_end: datetime | None,
    run_after: datetime,
) -> list[dict[str, str]]:
    """The windows of one run: the conf's ``start``/``end`` if given, else the run's data interval.

    A manual run has no interval of its own: it continues each view from its watermark up to the
    moment the run was created for (never the clock at execution time, so a retry reads the same).
    """
    start = _parse(params.get("start")) or (interval_start if interval_start != interval_end else None)
    end = _parse(params.get("end")) or interval_end or run_after
    if start is not None and start >= end:
        raise features.FeatureRequestError(f"start {start.isoformat()} is not before end {end.isoformat()}")
    windows = features.plan_windows(features.open_store(), params.get("feature_views") or None, start, end)
    for window in windows:
        log.info("will materialize %s from %s to %s", window.feature_view, window.start, window.end)
    return [window.as_dict() for window in windows]


def materialize_and_announce(window: dict[str, str], events: Any) -> dict[str, Any]:
    """Materialize one window, then emit the view's Asset with what was loaded."""
    from airflow.sdk import Asset

    result = features.materialize_window(features.open_store(), features.Window.from_dict(window))
    log.info(
        "materialized %s: %d rows read, %d entity rows written in %d chunks, %.1fs; watermark %s",
        result.feature_view,
        result.rows_read,
        result.rows_written,
        result.chunks,
        result.seconds,
        result.watermark,
    )
    events.add(
        Asset(features.feature_view_asset_uri(result.feature_view)),
        extra={"start": result.start, "end": result.end, "rows_written": result.rows_written},
    )
    return result.as_dict()


def _parse(value: str | None) -> datetime | None:
    return features.to_utc(value) if value else None
