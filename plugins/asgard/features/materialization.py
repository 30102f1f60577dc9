"""Materialization: the newest feature values of a window, from the gold layer into the online store.

Airflow owns the windows (the run's data interval, or a backfill's ``start``/``end``); each view's
watermark only moves forward. The source is read in bounded chunks, so memory does not grow with
the window.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgard.features import gold
from asgard.features.online_writer import online_writer
from asgard.features.store import (
    FeatureRequestError,
    create_sqlite_online_store,
    feature_view_asset_uri,
    open_store,
    to_utc,
)

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore, FeatureView

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """A half-open time window ``[start, end)`` for one feature view."""

    feature_view: str
    start: datetime
    end: datetime

    def as_dict(self) -> dict[str, str]:
        return {"feature_view": self.feature_view, "start": self.start.isoformat(), "end": self.end.isoformat()}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Window:
        return cls(data["feature_view"], to_utc(data["start"]), to_utc(data["end"]))


@dataclass(frozen=True)
class MaterializeResult:
    feature_view: str
    start: str
    end: str
    read_until: str
    chunks: int
    rows_read: int
    rows_written: int
    seconds: float
    watermark: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_windows(
    store: FeatureStore,
    feature_views: list[str] | None,
    start: datetime | None,
    end: datetime,
) -> list[Window]:
    """One window per online feature view; an unknown view name fails, listing the known ones.

    Without an explicit ``start`` a view continues from its watermark (or its TTL back from ``end``
    on its first run), so consecutive runs neither overlap nor leave a gap.
    """
    views = {view.name: view for view in store.list_feature_views() if view.online}
    names = feature_views or sorted(views)
    unknown = [name for name in names if name not in views]
    if unknown:
        raise FeatureRequestError(
            f"unknown feature view(s) {', '.join(unknown)}; registered: {', '.join(sorted(views)) or 'none'}"
        )
    windows = []
    for name in names:
        view = views[name]
        view_start = start
        if view_start is None:
            watermark = view.most_recent_end_time
            view_start = to_utc(watermark) if watermark else end - (view.ttl or timedelta(days=365))
        if view_start >= end:
            raise FeatureRequestError(f"empty window for {name}: start {view_start} is not before end {end}")
        windows.append(Window(name, view_start, end))
    return windows


def materialize_window(
    store: FeatureStore,
    window: Window,
    *,
    chunk_rows: int = 500_000,
    chunk_period: timedelta = timedelta(days=1),
    write_rows: int = 50_000,
    progress: Callable[[str], None] = log.info,
) -> MaterializeResult:
    """Load the latest value per entity of ``window`` into the online store.

    The source is read a bounded chunk at a time (whole Iceberg files up to ``chunk_rows`` rows; a
    pushed-down query per ``chunk_period`` for other offline stores) and folded into the newest row
    per entity, so memory is bounded by one chunk plus one row per entity, never by the length of
    the window. Each entity is written once, in batches of ``write_rows``, in Feast's format at the
    store's own pace (:mod:`asgard.features.online_writer`). Re-running a window that
    ends before the view's watermark reads on up to the watermark, so a backfill never leaves older
    values on top of newer ones. The watermark only ever moves forward.
    """
    started = time.perf_counter()
    view = store.get_feature_view(window.feature_view)
    watermark = to_utc(view.most_recent_end_time) if view.most_recent_end_time else None
    read_until = max(window.end, watermark) if watermark and window.start < watermark else window.end
    latest, chunks, rows_read = read_newest(
        store, view, window.start, read_until, chunk_rows=chunk_rows, chunk_period=chunk_period, progress=progress
    )
    rows_written = 0
    # Reading runs side by side; writing takes its turn at a SQLite online store.
    with online_store_turn(store, f"materialize {view.name} {window.start.isoformat()}/{window.end.isoformat()}"):
        ensure_online_table(store, view)
        if latest is not None:
            rows_written = online_writer(store, view).write(latest, batch_rows=write_rows)
        store.registry.apply_materialization(view, store.project, window.start, window.end, commit=True)
    new_watermark = max(window.end, watermark) if watermark else window.end
    return MaterializeResult(
        feature_view=view.name,
        start=window.start.isoformat(),
        end=window.end.isoformat(),
        read_until=read_until.isoformat(),
        chunks=chunks,
        rows_read=rows_read,
        rows_written=rows_written,
        seconds=round(time.perf_counter() - started, 3),
        watermark=new_watermark.isoformat(),
    )


def read_newest(
    store: FeatureStore,
    view: FeatureView,
    start: datetime,
    end: datetime,
    *,
    chunk_rows: int = 500_000,
    chunk_period: timedelta = timedelta(days=1),
    progress: Callable[[str], None] = log.info,
) -> tuple[pd.DataFrame | None, int, int]:
    """The newest source row per entity of ``view`` in ``[start, end)`` (None if there is none), read
    a bounded chunk at a time; with the number of chunks and of rows read."""
    reader = _SourceReader(store, view)
    latest: pd.DataFrame | None = None
    rows_read = chunks = 0
    for candidates, read in reader.chunks(start, end, chunk_rows=chunk_rows, period=chunk_period):
        chunks += 1
        rows_read += read
        latest = reader.newest(candidates if latest is None else [latest, candidates])
        progress(f"{view.name}: chunk {chunks}: {read} rows read ({rows_read} so far, {len(latest)} entities)")
    return latest, chunks, rows_read


@contextlib.contextmanager
def online_store_turn(store: FeatureStore, holder: str, *, wait: float = 1800.0) -> Iterator[None]:
    """The block as the only platform writer to the store's SQLite online store (other stores: at once).

    SQLite lets one writer in at a time and a second waits only its busy timeout (Feast's connection:
    5 s) before failing with "database is locked": materializations of several views into one store
    take turns on the platform's lock table instead (:mod:`asgard.core.locks`), waiting up to ``wait``.
    """
    name = online_store_lock(store)
    if name is None:
        yield
        return
    from asgard.core.locks import held
    from asgard.core.settings import get_settings

    with held(get_settings().monitoring_db_url, name, holder, wait=wait, poll=0.2):
        yield


def online_store_lock(store: FeatureStore) -> str | None:
    """The lock a SQLite online store's writers take turns under (one per database file); None for others."""
    if getattr(store.config.online_store, "type", "") != "sqlite":
        return None
    import hashlib

    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    path = str(Path(SqliteOnlineStore._get_db_path(store.config)).resolve())
    return f"online-store:sqlite:{hashlib.sha256(path.encode()).hexdigest()[:32]}"  # any path, one short name


def ensure_online_table(store: FeatureStore, view: FeatureView) -> None:
    """Create the view's online table if it is missing; an existing table is left as it is.

    It may be missing in a new online store, or for a view registered from another machine.
    """
    create_sqlite_online_store(store.config)
    store._get_provider().update_infra(
        project=store.project,
        tables_to_delete=[],
        tables_to_keep=[view],
        entities_to_delete=[],
        entities_to_keep=store.list_entities(),
        partial=True,
    )


class _SourceReader:
    """Reads one view's source in bounded chunks and keeps the newest row per entity."""

    def __init__(self, store: FeatureStore, view: FeatureView) -> None:
        self.store, self.view = store, view
        self.source = view.batch_source
        self.join_keys = [column.name for column in view.entity_columns]
        self.features = [feature.name for feature in view.features]
        self.ts = self.source.timestamp_field
        self.created = self.source.created_timestamp_column or None
        self.order = [self.ts, self.created] if self.created else [self.ts]
        self.columns = [*self.join_keys, *self.features, *self.order]

    def chunks(
        self, start: datetime, end: datetime, *, chunk_rows: int, period: timedelta
    ) -> Iterator[tuple[pd.DataFrame, int]]:
        """Per chunk of the source rows in ``[start, end)``: the newest row per entity, and the rows read."""
        location = gold.GoldLocation.of_source(self.source)  # a gold table read through pyiceberg: scanned here
        if location is not None:
            table = gold.load_table(self.source.iceberg_table, location)
            for chunk in gold.scan_chunks(table, self.ts, start, end, self.columns, chunk_rows=chunk_rows):
                yield self.newest(chunk.to_pandas()), chunk.num_rows
            return
        # Any other offline store (Trino in production) computes the newest rows itself, pushed down.
        offline_store = self.store._get_provider().offline_store
        for chunk_start, chunk_end in _periods(start, end, period):
            job = offline_store.pull_latest_from_table_or_query(
                config=self.store.config,
                data_source=self.source,
                join_key_columns=self.join_keys,
                feature_name_columns=self.features,
                timestamp_field=self.ts,
                created_timestamp_column=self.created,
                start_date=chunk_start,
                end_date=chunk_end,
            )
            frame = job.to_df()
            yield frame, len(frame)

    def newest(self, frames: pd.DataFrame | list[pd.DataFrame]) -> pd.DataFrame:
        """The newest row per entity (by event, then created timestamp) among ``frames``."""
        import pandas as pd

        frame = pd.concat(frames, ignore_index=True) if isinstance(frames, list) else frames
        # Rows of distinct entities (a chunk of one snapshot) are their own newest: nothing to sort.
        if frame.duplicated(self.join_keys).any():
            frame = frame.sort_values(self.order, kind="stable").drop_duplicates(self.join_keys, keep="last")
        return frame.reset_index(drop=True)


def _periods(start: datetime, end: datetime, size: timedelta) -> Iterator[tuple[datetime, datetime]]:
    cursor = start
    while cursor < end:
        following = min(cursor + size, end)
        yield cursor, following
        cursor = following


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
        raise FeatureRequestError(f"start {start.isoformat()} is not before end {end.isoformat()}")
    windows = plan_windows(open_store(), params.get("feature_views") or None, start, end)
    for window in windows:
        log.info("will materialize %s from %s to %s", window.feature_view, window.start, window.end)
    return [window.as_dict() for window in windows]


def materialize_and_announce(window: dict[str, str], events: Any) -> dict[str, Any]:
    """Materialize one window, then emit the view's Asset with what was loaded."""
    from airflow.sdk import Asset

    result = materialize_window(open_store(), Window.from_dict(window))
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
        Asset(feature_view_asset_uri(result.feature_view)),
        extra={"start": result.start, "end": result.end, "rows_written": result.rows_written},
    )
    return result.as_dict()


def _parse(value: str | None) -> datetime | None:
    return to_utc(value) if value else None
