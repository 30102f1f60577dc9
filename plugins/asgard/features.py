"""The feature store: open it for the active profile, register feature views, materialize windows.

The Feast repo lives in ``include/feature_repo``. The embedded profile reads the gold layer's
Iceberg tables through pyiceberg (DuckDB offline store, SQLite online store); production reads
``iceberg.gold.*`` through Trino and serves from Redis. Which one is configuration: the profile
picks the ``feature_store*.yaml`` and the data source class; no caller branches on it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgard import gold
from asgard.errors import InputError
from asgard.settings import REPO_ROOT, Settings, get_settings

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from feast import FeatureStore, FeatureView
    from feast.data_source import DataSource
    from feast.repo_config import RepoConfig

log = logging.getLogger(__name__)

FEATURE_REPO = REPO_ROOT / "include" / "feature_repo"
STORE_YAML = {"embedded": "feature_store.yaml", "production": "feature_store.production.yaml"}
# Feature views are announced to Airflow as Assets under this URI scheme (one per view).
FEATURE_VIEW_ASSET_PREFIX = "feast://asgard/feature_view/"
FEATURE_VIEWS_ALIAS = "asgard-feature-views"

# Request dtype → (Feast type name, Arrow types a gold column may have for it). Widening is fine
# (an int32 column feeds an int64 feature), narrowing or changing kind is not.
DTYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "int32": ("Int32", ("int8", "int16", "int32", "uint8", "uint16")),
    "int64": ("Int64", ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")),
    "float32": ("Float32", ("float", "halffloat")),
    "float64": ("Float64", ("float", "double", "halffloat", "int8", "int16", "int32", "int64")),
    "string": ("String", ("string", "large_string")),
    "bool": ("Bool", ("bool",)),
}


class FeatureRequestError(InputError):
    """A feature view request names something the gold layer does not have (every problem listed)."""


def feature_view_asset_uri(name: str) -> str:
    return f"{FEATURE_VIEW_ASSET_PREFIX}{name}"


# --------------------------------------------------------------------------- the store
def load_repo_config(settings: Settings | None = None, *, online_store: dict[str, Any] | None = None) -> RepoConfig:
    """The Feast configuration of the active profile (``${VAR}`` expanded; ASGARD_HOME from the settings)."""
    import yaml
    from feast.repo_config import RepoConfig

    settings = settings or get_settings()
    text = (FEATURE_REPO / STORE_YAML[settings.profile]).read_text()
    raw = yaml.safe_load(os.path.expandvars(text.replace("${ASGARD_HOME}", str(settings.home))))
    if online_store is not None:
        raw["online_store"] = online_store
    for path in (raw.get("online_store", {}).get("path"), raw.get("registry", {}).get("path")):
        if isinstance(path, str) and settings.profile == "embedded":
            os.makedirs(os.path.dirname(path.removeprefix("sqlite:///")), exist_ok=True)
    config = RepoConfig(**raw)
    config.repo_path = FEATURE_REPO
    return config


def write_script_repo(folder: Path, settings: Settings | None = None) -> Path:
    """A Feast repo folder for a user script: the active profile's ``feature_store.yaml``, and nothing else.

    Embedded: paths resolved (the script does not get ASGARD_HOME). Production: the file as it is,
    its ``${VAR}`` placeholders unexpanded, so no platform credential reaches the script.
    """
    settings = settings or get_settings()
    folder.mkdir(parents=True, exist_ok=True)
    text = (FEATURE_REPO / STORE_YAML[settings.profile]).read_text()
    if settings.profile == "embedded":
        load_repo_config(settings)  # creates the store folders the paths point into
        text = text.replace("${ASGARD_HOME}", str(settings.home))
    (folder / "feature_store.yaml").write_text(text)
    return folder


def open_store(settings: Settings | None = None, *, online_store: dict[str, Any] | None = None) -> FeatureStore:
    """A FeatureStore for the active profile; ``online_store`` overrides the configured one (tests, tools)."""
    from feast import FeatureStore

    return FeatureStore(config=load_repo_config(settings, online_store=online_store))


def apply_repo(settings: Settings | None = None) -> str:
    """``feast apply`` of ``include/feature_repo`` for the active profile; returns Feast's report.

    Feast imports the repo's Python files, which read the profile from the environment: running the
    real CLI in a child process with this installation's environment keeps that exact and uncached.
    """
    import subprocess
    import sys

    settings = settings or get_settings()
    env = {
        **os.environ,
        "ASGARD_HOME": str(settings.home),
        "ASGARD_PROFILE": settings.profile,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(settings.plugins_folder), os.environ.get("PYTHONPATH")])),
    }
    load_repo_config(settings)  # fails early, naming the file, on a broken configuration
    feast = os.path.join(os.path.dirname(sys.executable), "feast")
    command = [feast, "-c", str(FEATURE_REPO), "-f", str(FEATURE_REPO / STORE_YAML[settings.profile]), "apply"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"feast apply failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout


def gold_source(
    table_name: str,
    timestamp_field: str,
    created_timestamp_column: str | None = None,
    *,
    settings: Settings | None = None,
) -> DataSource:
    """The Feast data source over a gold table, for the active profile."""
    settings = settings or get_settings()
    name = f"gold_{table_name}"
    if settings.profile == "production":
        from feast.infra.offline_stores.contrib.trino_offline_store.trino_source import TrinoSource

        return TrinoSource(
            name=name,
            table=f"iceberg.{gold.GOLD_NAMESPACE}.{table_name}",
            timestamp_field=timestamp_field,
            created_timestamp_column=created_timestamp_column or "",
        )
    from feast.infra.data_sources.contrib.iceberg_catalog.iceberg_source import IcebergSource

    location = gold.GoldLocation.for_settings(settings)
    return IcebergSource(
        name=name,
        catalog_type="sql",
        catalog_name=gold.CATALOG_NAME,
        endpoint=location.catalog_uri,
        warehouse=location.warehouse,
        namespace=gold.GOLD_NAMESPACE,
        table=table_name,
        timestamp_field=timestamp_field,
        created_timestamp_column=created_timestamp_column or "",
    )


# --------------------------------------------------------------------------- registering
def validate_request(request: dict[str, Any], columns: dict[str, pa.DataType] | None = None) -> dict[str, Any]:
    """Check a ``register_features`` request against the gold layer; return it normalised.

    Every problem is collected and reported at once, so one failed run tells the whole story.
    """
    import pyarrow as pa

    source = request["source"]
    table_name = source["table_name"]
    if columns is None:
        try:
            columns = gold.table_columns(table_name)
        except gold.GoldLayerError as error:
            raise FeatureRequestError(str(error)) from None
    problems: list[str] = []

    def column_type(name: str, role: str) -> pa.DataType | None:
        if name not in columns:
            problems.append(f"{role} column {name!r} is not in gold table {table_name!r}")
            return None
        return columns[name]

    ts_type = column_type(source["timestamp_field"], "timestamp")
    if ts_type is not None and not pa.types.is_timestamp(ts_type):
        problems.append(f"timestamp column {source['timestamp_field']!r} has type {ts_type}, not a timestamp")
    created = source.get("created_timestamp_column")
    if created:
        created_type = column_type(created, "created timestamp")
        if created_type is not None and not pa.types.is_timestamp(created_type):
            problems.append(f"created timestamp column {created!r} has type {created_type}, not a timestamp")
    for key in request["entities"]:
        key_type = column_type(key, "entity")
        if key_type is not None and not (pa.types.is_integer(key_type) or pa.types.is_string(key_type)):
            problems.append(f"entity column {key!r} has type {key_type}; entity keys are integers or strings")

    seen: set[str] = set()
    reserved = {*request["entities"], source["timestamp_field"], created or ""}
    for feature in request["features"]:
        name, dtype = feature["name"], feature["dtype"]
        if name in seen:
            problems.append(f"feature {name!r} is listed twice")
        seen.add(name)
        if name in reserved:
            problems.append(f"feature {name!r} is an entity or timestamp column")
        if dtype not in DTYPES:
            problems.append(f"feature {name!r} has unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
            continue
        actual = column_type(name, "feature")
        if actual is not None and str(actual) not in DTYPES[dtype][1]:
            problems.append(f"feature {name!r} is {dtype} in the request but {actual} in gold table {table_name!r}")
    if problems:
        raise FeatureRequestError("; ".join(problems))
    return {**request, "features": [dict(f) for f in request["features"]]}


def build_feature_view(request: dict[str, Any], store: FeatureStore) -> tuple[FeatureView, list]:
    """The FeatureView (and any new Entity) a validated request describes."""
    from feast import Entity, FeatureView, Field
    from feast import types as feast_types
    from feast.value_type import ValueType

    existing = {entity.join_key: entity for entity in store.list_entities()}
    entities, new_entities = [], []
    for key in request["entities"]:
        entity = existing.get(key)
        if entity is None:
            entity = Entity(name=key, join_keys=[key], value_type=ValueType.INT64)
            new_entities.append(entity)
        entities.append(entity)
    source = request["source"]
    view = FeatureView(
        name=request["name"],
        entities=entities,
        ttl=timedelta(days=request.get("ttl_days", 365)),
        schema=[Field(name=f["name"], dtype=getattr(feast_types, DTYPES[f["dtype"]][0])) for f in request["features"]],
        source=gold_source(source["table_name"], source["timestamp_field"], source.get("created_timestamp_column")),
        online=True,
        description=request.get("description", ""),
        tags={str(k): str(v) for k, v in (request.get("tags") or {}).items()},
    )
    return view, new_entities


def definition(view: FeatureView) -> dict[str, Any]:
    """What a user defines in a view (not when it was applied or materialized): equal means no-op."""
    source = view.batch_source
    return {
        "name": view.name,
        "entities": sorted(view.entities),
        "ttl": view.ttl.total_seconds() if view.ttl else None,
        "features": [(f.name, str(f.dtype)) for f in view.features],
        "source": (source.name, source.timestamp_field, source.created_timestamp_column),
        "description": view.description,
        "tags": dict(sorted(view.tags.items())),
        "online": view.online,
    }


def register_feature_view(request: dict[str, Any], store: FeatureStore) -> dict[str, Any]:
    """Validate and apply one view; re-registering the same definition changes nothing."""
    from feast.errors import FeatureViewNotFoundException

    validated = validate_request(request)
    view, new_entities = build_feature_view(validated, store)
    try:
        current = store.get_feature_view(view.name)
    except FeatureViewNotFoundException:
        current = None
    if current is not None and definition(current) == definition(view):
        return {"feature_view": view.name, "action": "unchanged"}
    store.apply([*new_entities, view])
    return {
        "feature_view": view.name,
        "action": "created" if current is None else "updated",
        "new_entities": [e.name for e in new_entities],
    }


def describe_views(store: FeatureStore) -> list[dict[str, Any]]:
    """Every feature view in the registry, in the seed's ``POST /feast/features`` shape."""
    views = []
    for view in sorted(store.list_feature_views(), key=lambda view: view.name):
        source = view.batch_source
        views.append(
            {
                "name": view.name,
                "entities": sorted(view.entities),
                "features": [{"name": field.name, "dtype": str(field.dtype)} for field in view.features],
                "source": {"name": source.name, "timestamp_field": source.timestamp_field},
                "ttl_days": view.ttl.total_seconds() / 86400 if view.ttl else None,
                "online": view.online,
                "description": view.description,
                "tags": dict(view.tags),
            }
        )
    return views


def store_status(store: FeatureStore) -> dict[str, Any]:
    """Which project, registry and stores the profile uses, and what the registry holds."""
    from asgard.settings import redact_url

    config = store.config
    return {
        "project": config.project,
        "provider": config.provider,
        "registry": redact_url(str(getattr(config.registry, "path", config.registry))),
        "offline_store": config.offline_store.type,
        "online_store": config.online_store.type,
        "entities": sorted(entity.name for entity in store.list_entities()),
        "feature_views": sorted(view.name for view in store.list_feature_views()),
    }


# --------------------------------------------------------------------------- materializing
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
    the window. Each entity is written once, in batches of ``write_rows``. Re-running a window that
    ends before the view's watermark reads on up to the watermark, so a backfill never leaves older
    values on top of newer ones. The watermark only ever moves forward.
    """
    started = time.perf_counter()
    view = store.get_feature_view(window.feature_view)
    ensure_online_table(store, view)
    watermark = to_utc(view.most_recent_end_time) if view.most_recent_end_time else None
    read_until = max(window.end, watermark) if watermark and window.start < watermark else window.end
    reader = _SourceReader(store, view)
    latest: pd.DataFrame | None = None
    rows_read = chunks = 0
    for candidates, read in reader.chunks(window.start, read_until, chunk_rows=chunk_rows, period=chunk_period):
        chunks += 1
        rows_read += read
        latest = reader.newest(candidates if latest is None else [latest, candidates])
        progress(f"{view.name}: chunk {chunks}: {read} rows read ({rows_read} so far, {len(latest)} entities)")
    rows_written = 0
    if latest is not None:
        for offset in range(0, len(latest), write_rows):
            batch = latest.iloc[offset : offset + write_rows]
            store.write_to_online_store(view.name, batch)
            rows_written += len(batch)
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


def ensure_online_table(store: FeatureStore, view: FeatureView) -> None:
    """Create the view's online table if it is missing; an existing table is left as it is.

    It may be missing in a new online store, or for a view registered from another machine.
    """
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
        if _is_local_iceberg(self.source):
            location = gold.GoldLocation(catalog_uri=self.source.endpoint, warehouse=self.source.warehouse)
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
        frame = frame.sort_values(self.order, kind="stable").drop_duplicates(self.join_keys, keep="last")
        return frame.reset_index(drop=True)


def _is_local_iceberg(source: DataSource) -> bool:
    return getattr(source, "catalog_type", None) == "sql" and hasattr(source, "iceberg_table")


def _periods(start: datetime, end: datetime, size: timedelta) -> Iterator[tuple[datetime, datetime]]:
    cursor = start
    while cursor < end:
        following = min(cursor + size, end)
        yield cursor, following
        cursor = following


def to_utc(value: datetime | str) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
