"""Point-in-time joins of entity rows with feature views, out of core on the embedded offline store.

Feast's DuckDB offline store reads every Iceberg table a feature view names whole into memory
(``ibis.memtable(table.scan().to_arrow())``) before it joins: memory grows with the gold layer's
history, not with the training set. Here DuckDB reads the current snapshot's Parquet data files
itself (pyiceberg plans them) and answers with one ``ASOF LEFT JOIN`` per feature view over keys,
times and row positions only (rows outside the entity rows' time range skipped by the files'
statistics), then a streaming pass that reads the matched rows' features; under a memory limit,
spilling to a scratch folder. What stays in this process is the entity rows and the answer: the
training set.

Feast's semantics are kept exactly (``tests/plugins/test_training_sets.py`` compares against
Feast): for each entity row and view, the row of the same join keys with the newest event timestamp
not after the entity's, ties broken by the newest created timestamp (a missing one loses), nothing
when that row is older than the view's TTL; columns, order of columns and dtypes as
``get_historical_features(...).to_df()`` returns them. Rows keep the entity frame's order.

Anything this path does not cover (another offline store such as production's Trino, on-demand
views, field mappings, projections, data files that are not local or carry delete files, renamed
columns, a view without data files) goes to Feast's own ``get_historical_features``.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from asgard.features import store as feature_store

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from feast import FeatureStore, FeatureView

log = logging.getLogger(__name__)

# DuckDB's own memory (its buffer manager: the sorts and hash tables of the joins, the Parquet scans'
# buffers); beyond it, it spills to the scratch folder. The entity rows and the answer are Arrow/pandas
# memory on top. 256 MB ran out on a pass of 100k entity rows over 14 days of 5M customers (the scans of
# 28 data files hold their share whatever the pass's size).
DEFAULT_MEMORY_LIMIT = "512MB"
ROW_NUMBER = "__asgard_entity_row"
# The entity rows one pass of the join takes on at most: above it they are joined a slice at a time (in
# key order, so that a key's rows share a slice), each slice against only its own keys' history, in a
# database of its own. DuckDB's ASOF join does not spill all it holds: 5M entity rows against 70M feature
# rows (14 days of 5M customers) ran out of 256 MB in one pass; in 20 passes of 250k under 512 MB they
# took 23 s (peak RSS 2.3 GiB, the answer's). The passes grow with the entity rows, never with the history.
ENTITY_ROWS_PER_PASS = 250_000
# Through production's Trino (one node, queries within 30% of its heap): its window over each entity row's
# history holds the pass's rows at once. 1M entity rows over 7 days of 1M customers ran out of 460 MB in one
# query; 100k rows took 16 s (bench/trino_training_set_bench.py).
TRINO_ENTITY_ROWS_PER_PASS = 100_000


class UnsupportedJoin(Exception):
    """This join is left to Feast (the reason is logged)."""


@dataclass(frozen=True)
class ViewPlan:
    """One feature view's part of the join: its data files and how to read them."""

    name: str
    files: list[str]
    join_keys: list[str]
    timestamp_field: str
    created_field: str | None
    features: list[str]
    feature_types: dict[str, pa.DataType]
    ttl: timedelta | None


def get_historical_features(
    store: FeatureStore,
    entity_df: pd.DataFrame,
    features: list[str],
    *,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    spill_dir: str | None = None,
    rows_per_pass: int | None = None,
    purpose: str = "feature rows",
) -> pd.DataFrame:
    """``store.get_historical_features(entity_df=..., features=...).to_df()``, with the entity frame's
    row order: out of core on the embedded (DuckDB) offline store, Feast's own call otherwise (through
    Trino, each query logged with its id as the read of ``purpose``: ``trino_store.traced_reads``)."""
    try:
        plans = plan_views(store, features)
    except UnsupportedJoin as reason:
        from asgard.features.trino_store import traced_reads

        log.info("point-in-time join through Feast: %s", reason)
        # A Trino that is down: said so, by name.
        with feature_store.offline_store_errors(store.config), traced_reads(store.config, purpose):
            return _through_feast(store, entity_df, list(features), rows_per_pass)
    return join_views(
        store, plans, entity_df, memory_limit=memory_limit, spill_dir=spill_dir, rows_per_pass=rows_per_pass
    )


# --------------------------------------------------------------------------- planning
def plan_views(store: FeatureStore, features: list[str]) -> list[ViewPlan]:
    """The views of ``features`` in Feast's order (first mention), each with its data files; raises
    :class:`UnsupportedJoin` when any part of the request is not one this module answers."""
    if getattr(store.config.offline_store, "type", "") != "duckdb":
        raise UnsupportedJoin(f"offline store {store.config.offline_store.type!r}")
    by_view: dict[str, list[str]] = {}
    for reference in features:
        view_name, _, feature = reference.partition(":")
        if not feature or "@" in view_name:
            raise UnsupportedJoin(f"feature reference {reference!r}")
        by_view.setdefault(view_name, [])
        if feature not in by_view[view_name]:
            by_view[view_name].append(feature)
    plans = []
    for view_name, names in by_view.items():
        try:
            view = store.get_feature_view(view_name)
        except Exception as error:  # an on-demand view, or one Feast will name as unknown itself
            raise UnsupportedJoin(f"feature view {view_name!r}: {type(error).__name__}") from None
        plans.append(_plan_view(view, names))
    return plans


def _plan_view(view: FeatureView, names: list[str]) -> ViewPlan:
    from feast.infra.data_sources.contrib.iceberg_catalog.iceberg_source import IcebergSource

    source = view.batch_source
    if not isinstance(source, IcebergSource) or source.catalog_type == "rest":
        raise UnsupportedJoin(f"feature view {view.name!r}: source {type(source).__name__}")
    if source.field_mapping or view.projection.join_key_map or view.projection.name_alias:
        raise UnsupportedJoin(f"feature view {view.name!r}: field mapping or projection")
    known = {field.name for field in view.features}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UnsupportedJoin(f"feature view {view.name!r} has no feature(s) {unknown}")  # Feast names it
    table = source.get_catalog_client().load_table(f"{source.namespace}.{source.iceberg_table}")
    _check_names_unchanged(view.name, table)
    join_keys = [column.name for column in view.entity_columns]
    created = source.created_timestamp_column or None
    columns = [*join_keys, source.timestamp_field, *([created] if created else []), *names]
    files = []
    for task in table.scan(selected_fields=tuple(dict.fromkeys(columns))).plan_files():
        if task.delete_files:
            raise UnsupportedJoin(f"feature view {view.name!r}: data files with delete files")
        path = task.file.file_path
        if path.startswith("file://"):
            path = path.removeprefix("file://")
        elif "://" in path:
            raise UnsupportedJoin(f"feature view {view.name!r}: data files on {path.split('://')[0]}")
        files.append(path)
    if not files:
        raise UnsupportedJoin(f"feature view {view.name!r}: no data files")  # nothing to read: Feast is quick
    arrow_schema = table.schema().as_arrow()
    feature_types = {name: arrow_schema.field(name).type for name in names}
    ttl = view.ttl if view.ttl else None  # Feast: a zero TTL is none
    return ViewPlan(view.name, files, join_keys, source.timestamp_field, created, names, feature_types, ttl)


def _check_names_unchanged(view_name: str, table) -> None:
    """Data files name columns as they were written: a renamed column would read as missing."""
    current = {field.field_id: field.name for field in table.schema().fields}
    for schema in table.metadata.schemas:
        for field in schema.fields:
            if field.field_id in current and current[field.field_id] != field.name:
                raise UnsupportedJoin(f"feature view {view_name!r}: column {field.name!r} was renamed")


# --------------------------------------------------------------------------- the join
def join_views(
    store: FeatureStore,
    plans: list[ViewPlan],
    entity_df: pd.DataFrame,
    *,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    spill_dir: str | None = None,
    rows_per_pass: int | None = None,
) -> pd.DataFrame:
    """The point-in-time join of ``entity_df`` with every planned view, in DuckDB, out of core: in passes
    of ``rows_per_pass`` entity rows (default: :func:`rows_per_pass`), concatenated in row order."""
    import duckdb
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    from feast import utils as feast_utils
    from feast.infra.offline_stores import offline_utils

    naive = [column for column in entity_df.columns if pd.api.types.is_datetime64_dtype(entity_df[column])]
    if store.config.coerce_tz_aware and naive:  # Feast's copy of the frame, only when it changes something
        entity_df = feast_utils.make_df_tzaware(entity_df)
    timestamp = offline_utils.infer_event_timestamp_from_entity_df(
        dict(zip(entity_df.columns, entity_df.dtypes, strict=True))
    )
    stamps = entity_df[timestamp].infer_objects()
    if pd.api.types.is_string_dtype(stamps) or pd.api.types.is_object_dtype(stamps):
        entity_df = entity_df.assign(**{timestamp: pd.to_datetime(stamps, utc=True)})
    missing = sorted({key for plan in plans for key in plan.join_keys} - set(entity_df.columns))
    if missing:
        from feast.errors import FeastEntityDFMissingColumnsError

        raise FeastEntityDFMissingColumnsError(expected=missing, missing=missing)  # as Feast would
    entity = pa.Table.from_pandas(entity_df, preserve_index=False)
    entity = entity.append_column(ROW_NUMBER, pa.array(np.arange(len(entity_df), dtype=np.int64)))

    step = rows_per_pass or _rows_per_pass(len(entity))
    keyed, reordered = _in_key_order(entity, plans[0].join_keys) if step < len(entity) else (entity, False)
    columns = [*entity_df.columns, *([ROW_NUMBER] if reordered else [])]
    parts = []
    with tempfile.TemporaryDirectory(prefix="asgard-join-", dir=spill_dir) as scratch:
        for first in range(0, max(len(keyed), 1), step):
            # A database per pass: the answers a database hands out count against its memory limit while
            # they live, so the passes' answers would add up against it in one.
            connection = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": scratch})
            try:
                connection.execute("SET TimeZone = 'UTC'")
                connection.execute("SET preserve_insertion_order = false")  # the answer is ordered explicitly
                connection.register("entity_rows", keyed.slice(first, step))
                stamp = f"{_quote(timestamp)}::TIMESTAMPTZ"
                bounds = connection.sql(f"SELECT min({stamp}), max({stamp}) FROM entity_rows").fetchall()[0]
                parts.append(connection.sql(_join_query(plans, columns, timestamp, bounds)).to_arrow_table())
            finally:
                connection.close()
    del keyed
    if len(parts) > 1:
        log.info("point-in-time join of %d entity rows in %d passes", len(entity), len(parts))
    answer = pa.concat_tables(parts)
    del parts
    if reordered:  # back in the entity rows' order
        answer = answer.take(pa.compute.sort_indices(answer[ROW_NUMBER])).drop_columns([ROW_NUMBER])
    answer = _as_feast_types(answer, entity, plans)
    del entity
    # Arrow's buffers freed column by column as pandas takes them: the training set is held once, not twice.
    return answer.to_pandas(split_blocks=True, self_destruct=True).reset_index(drop=True)


def _rows_per_pass(entity_rows: int, most: int = ENTITY_ROWS_PER_PASS) -> int:
    """Entity rows per pass: as many passes as ``most`` rows a pass asks, the rows shared evenly."""
    passes = max(-(-entity_rows // most), 1)
    return max(1, -(-entity_rows // passes))


def _through_feast(
    store: FeatureStore, entity_df: pd.DataFrame, features: list[str], rows_per_pass: int | None
) -> pd.DataFrame:
    """Feast's own join; through production's Trino store in passes (:data:`TRINO_ENTITY_ROWS_PER_PASS`, in
    the first view's key order), whose answers come in their entity rows' order and are put back in
    ``entity_df``'s."""
    import numpy as np
    import pandas as pd

    from asgard.features.trino_store import GoldTrinoOfflineStoreConfig

    step = rows_per_pass or _rows_per_pass(len(entity_df), TRINO_ENTITY_ROWS_PER_PASS)
    if not isinstance(store.config.offline_store, GoldTrinoOfflineStoreConfig) or step >= len(entity_df):
        return store.get_historical_features(entity_df=entity_df, features=features).to_df()
    keys = store.get_feature_view(features[0].split(":", 1)[0]).join_keys
    entity_df = entity_df.reset_index(drop=True)
    order = entity_df.sort_values(keys, kind="stable").index.to_numpy() if keys else np.arange(len(entity_df))
    keyed = entity_df.iloc[order].reset_index(drop=True)
    parts = []
    for first in range(0, len(keyed), step):
        rows = keyed.iloc[first : first + step].reset_index(drop=True)
        part = store.get_historical_features(entity_df=rows, features=features).to_df()
        if len(part) != len(rows):
            raise RuntimeError(f"the offline store answered {len(part)} rows for a pass of {len(rows)} entity rows")
        parts.append(part)
    log.info("point-in-time join of %d entity rows through Trino in %d passes", len(entity_df), len(parts))
    answer = pd.concat(parts, ignore_index=True)
    return answer.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)


def _in_key_order(entity: pa.Table, keys: list[str]) -> tuple[pa.Table, bool]:
    """The entity rows ordered by ``keys`` (the first view's join keys: a key's rows, and so its history,
    fall in one pass or two), and whether that order differs from theirs (the answer is put back)."""
    import numpy as np
    import pyarrow.compute as pc

    order = pc.sort_indices(entity, sort_keys=[(key, "ascending") for key in keys])
    if np.array_equal(order.to_numpy(), np.arange(len(entity))):
        return entity, False
    return entity.take(order), True


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _join_query(plans: list[ViewPlan], entity_columns: list[str], timestamp: str, bounds: tuple) -> str:
    """Per view, an ``ASOF LEFT JOIN`` that finds each entity row's match, then its features, in row order.

    The ASOF inequality orders a view's rows by (event timestamp, created timestamp), a missing
    created timestamp lowest: the match is the row Feast's ``ORDER BY event DESC, created DESC``
    ranks first. A view's TTL is applied to that match: when it is too old, so is every other.
    The ASOF join sorts only keys, times and where each row is (file, row in file): the features of
    the matches are read in a second, streaming pass, so DuckDB's memory holds no feature values
    of the history, only of the answer. A view's history is cut to the keys the entity rows (a pass's
    slice) hold, a semi join, before it is sorted.
    """
    row = _quote(ROW_NUMBER)
    entity_ts = f"{_quote(timestamp)}::TIMESTAMPTZ"
    matches, selects, joins = [], [f"e.{_quote(column)}" for column in entity_columns], []
    for index, plan in enumerate(plans):
        ts = f"{_quote(plan.timestamp_field)}::TIMESTAMPTZ"
        if plan.created_field:
            order = f"struct_pack(t := {ts}, c := coalesce({_quote(plan.created_field)}::TIMESTAMPTZ, '-infinity'))"
            latest = f"struct_pack(t := {entity_ts}, c := 'infinity'::TIMESTAMPTZ)"
            probe = f"CASE WHEN {entity_ts} IS NOT NULL THEN {latest} END"  # no time: no match, as in Feast
        else:
            order, probe = ts, entity_ts
        where = []
        low, high = bounds
        if high is not None:
            where.append(f"{ts} <= '{high.isoformat()}'::TIMESTAMPTZ")
        if low is not None and plan.ttl is not None:
            where.append(f"{ts} >= '{(low - plan.ttl).isoformat()}'::TIMESTAMPTZ")
        keys = [_quote(key) for key in plan.join_keys]
        candidates = " UNION ALL ".join(
            f"SELECT {number} AS __file, file_row_number AS __pos, {', '.join(keys)}, {ts} AS __ts, {order} AS __order "
            f"FROM {_parquet(path)}" + (f" WHERE {' AND '.join(where)}" if where else "")
            for number, path in enumerate(plan.files)
        )
        same = " AND ".join(f"h.{key} = k.{key}" for key in keys)
        own_keys = f"(SELECT DISTINCT {', '.join(keys)} FROM entity_rows) k"
        candidates = f"SELECT h.* FROM ({candidates}) h SEMI JOIN {own_keys} ON {same}"
        on = [f"e.{key} = f.{key}" for key in keys] + ["e.__probe >= f.__order"]
        matches.append(
            f"m{index} AS (SELECT e.{row}, f.__file, f.__pos, f.__ts FROM "
            f"(SELECT {row}, {', '.join(keys)}, {probe} AS __probe FROM entity_rows) e "
            f"ASOF LEFT JOIN ({candidates}) f ON {' AND '.join(on)})"
        )
        columns = ", ".join(_quote(feature) for feature in plan.features)
        values = " UNION ALL ".join(
            f"SELECT {number} AS __file, file_row_number AS __pos, {columns} FROM {_parquet(path)}"
            for number, path in enumerate(plan.files)
        )
        joins.append(
            f"JOIN m{index} ON m{index}.{row} = e.{row} "
            f"LEFT JOIN ({values}) g{index} ON g{index}.__file = m{index}.__file AND g{index}.__pos = m{index}.__pos"
        )
        for feature in plan.features:
            value = f"g{index}.{_quote(feature)}"
            if plan.ttl is not None:
                ttl = f"INTERVAL '{plan.ttl // timedelta(microseconds=1)} microseconds'"
                value = f"CASE WHEN m{index}.__ts + {ttl} >= e.{entity_ts} THEN {value} END"
            selects.append(f"{value} AS {_quote(feature)}")
    return (
        f"WITH {', '.join(matches)} SELECT {', '.join(selects)} FROM entity_rows e {' '.join(joins)} ORDER BY e.{row}"
    )


def _parquet(path: str) -> str:
    return "read_parquet('" + path.replace("'", "''") + "', file_row_number = true)"


def _as_feast_types(answer: pa.Table, entity: pa.Table, plans: list[ViewPlan]) -> pa.Table:
    """The answer with the entity frame's own column types and each feature's type in its gold table."""
    import pyarrow as pa

    types: dict[str, Any] = {field.name: field.type for field in entity.schema}
    for plan in plans:
        types.update(plan.feature_types)
    fields = []
    for field in answer.schema:
        wanted = types.get(field.name, field.type)
        if pa.types.is_large_string(wanted):
            wanted = pa.string()  # what DuckDB hands Feast back for a VARCHAR
        fields.append(pa.field(field.name, wanted))
    schema = pa.schema(fields)
    return answer if answer.schema.equals(schema) else answer.cast(schema)
