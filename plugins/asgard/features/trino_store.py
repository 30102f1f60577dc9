"""Production's offline store: Feast's Trino offline store over the gold layer's Iceberg tables, traced.

The registry describes where a feature view's data is (an Iceberg table of the gold catalog: an
``IcebergSource``); the profile decides what queries it. Production's ``feature_store.production.yaml``
names :class:`GoldTrinoOfflineStore`, which is Feast's ``TrinoOfflineStore`` reading such a source as
Trino's ``iceberg.<namespace>.<table>`` (Trino's Iceberg JDBC catalog reads the same catalog pyiceberg
writes). So one registry serves both readers:

- the platform's tasks (training sets, materialization windows, validation) query Trino;
- a user script keeps the DuckDB offline store and reads the same tables through its run's doors
  (:mod:`asgard.training.scripts.store_doors`), in its run's view of the gold layer: a view made per run
  that hides the gate's held-back labels, which one shared Trino catalog could not.

Every read through Trino is traced: :func:`traced_reads` gives the reads a ``source`` of their own, and
afterwards asks Trino's ``system.runtime.queries`` which queries carried it, so the task log (and the
caller's lineage) names the query ids Trino itself recorded.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd
from feast.infra.offline_stores.contrib.trino_offline_store.trino import (
    TrinoOfflineStore,
    TrinoOfflineStoreConfig,
    TrinoRetrievalJob,
)
from feast.infra.offline_stores.contrib.trino_offline_store.trino_source import TrinoSource
from pydantic import StrictStr

from asgard.core.dag_defaults import DEFAULT_ARGS

if TYPE_CHECKING:
    from feast.data_source import DataSource
    from feast.repo_config import RepoConfig

log = logging.getLogger(__name__)

# The ``type`` production's feature_store.yaml names (Feast imports the class, and its ``…Config`` beside it).
STORE_TYPE = f"{__name__}.GoldTrinoOfflineStore"
# Trino's catalog over the gold layer (asgard.local.trino writes it; ``./asgard trino-catalog`` prints it).
TRINO_GOLD_CATALOG = "iceberg"
# What a read's source tag starts with: Trino keeps it with each query (system.runtime.queries.source).
SOURCE_PREFIX = "asgard"
# Where a training set's entity rows are uploaded for Trino to join: a namespace of the gold catalog beside
# the gold tables (a script's view of the gold layer holds only those), read as iceberg.feast_uploads.*.
UPLOAD_NAMESPACE = "feast_uploads"
UPLOAD_TIME_FORMAT = "%Y%m%d%H%M%S"
# An upload is swept once older than any task may run (its own job drops it when it has run).
SWEEP_UPLOADS_AFTER = DEFAULT_ARGS["execution_timeout"] + timedelta(hours=1)


class GoldTrinoOfflineStoreConfig(TrinoOfflineStoreConfig):
    """Feast's Trino offline store configuration, under this store's type."""

    type: StrictStr = STORE_TYPE


class GoldTrinoOfflineStore(TrinoOfflineStore):
    """Feast's Trino offline store, reading gold Iceberg sources as Trino tables (see the module)."""

    @staticmethod
    def pull_latest_from_table_or_query(config: RepoConfig, data_source: DataSource, *args: Any, **kwargs: Any):
        return TrinoOfflineStore.pull_latest_from_table_or_query(config, as_trino_source(data_source), *args, **kwargs)

    @staticmethod
    def pull_all_from_table_or_query(config: RepoConfig, data_source: DataSource, *args: Any, **kwargs: Any):
        return TrinoOfflineStore.pull_all_from_table_or_query(config, as_trino_source(data_source), *args, **kwargs)

    @staticmethod
    def get_historical_features(
        config: RepoConfig, feature_views: list, feature_refs: list[str], entity_df: Any, *args: Any, **kwargs: Any
    ):
        views = [_through_trino(view) for view in feature_views]
        if not isinstance(entity_df, pd.DataFrame):  # a query: nothing to upload
            return TrinoOfflineStore.get_historical_features(config, views, feature_refs, entity_df, *args, **kwargs)
        # Feast would upload the frame as INSERT ... VALUES text, in statements of up to a million rows: past
        # ~20k rows more than Trino takes (query.max-length), and row by row in Python below that. Written
        # here as an Iceberg table of the gold catalog instead (columnar, in seconds), which Trino reads.
        upload = upload_entity_rows(entity_df)
        try:
            job = TrinoOfflineStore.get_historical_features(
                config, views, feature_refs, f"SELECT * FROM {upload.trino_name}", *args, **kwargs
            )
        except BaseException:
            upload.drop()
            raise
        return UploadedEntityRowsJob.of(job, upload)


class UploadedEntityRowsJob(TrinoRetrievalJob):
    """Feast's Trino retrieval over uploaded entity rows, which it drops once it has run (through pyiceberg:
    the platform's Trino user only reads the Iceberg catalog)."""

    upload: EntityUpload

    @classmethod
    def of(cls, job: TrinoRetrievalJob, upload: EntityUpload) -> UploadedEntityRowsJob:
        made = cls(
            query=job.to_sql(), client=job._client, config=job._config, full_feature_names=job.full_feature_names,
            on_demand_feature_views=job.on_demand_feature_views, metadata=job.metadata,
        )  # fmt: skip
        made.upload = upload
        return made

    def _drop_temp_table(self) -> None:
        upload = getattr(self, "upload", None)
        if upload is not None:
            upload.drop()


@dataclass
class EntityUpload:
    """Entity rows written as an Iceberg table of the uploads namespace, for one retrieval."""

    identifier: str
    dropped: bool = False

    @property
    def trino_name(self) -> str:
        return f"{TRINO_GOLD_CATALOG}.{self.identifier}"

    def drop(self) -> None:
        """The table and its files gone (idempotent; a failure is logged: the next upload's sweep retries)."""
        from asgard.features import gold

        if self.dropped:
            return
        self.dropped = True
        try:
            gold.load_catalog().purge_table(self.identifier)
        except Exception:
            log.exception("could not drop the uploaded entity rows %s (the next upload's sweep will)", self.identifier)


def upload_entity_rows(frame: pd.DataFrame) -> EntityUpload:
    """``frame`` as a new Iceberg table of :data:`UPLOAD_NAMESPACE` (timestamps to microseconds, Iceberg's
    precision), created with its rows in one commit; uploads left behind by a killed task are swept first."""
    import pyarrow as pa

    from asgard.features import gold

    catalog = gold.load_catalog()
    catalog.create_namespace_if_not_exists(UPLOAD_NAMESPACE)
    sweep_uploads(catalog)
    data = pa.Table.from_pandas(frame, preserve_index=False)
    fields = [
        pa.field(f.name, pa.timestamp("us", tz=f.type.tz) if pa.types.is_timestamp(f.type) else f.type)
        for f in data.schema
    ]
    data = data.cast(pa.schema(fields), safe=False)
    made = datetime.now(UTC).strftime(UPLOAD_TIME_FORMAT)
    upload = EntityUpload(f"{UPLOAD_NAMESPACE}.entity_rows_{made}_{uuid.uuid4().hex[:12]}")
    creation = catalog.create_table_transaction(upload.identifier, schema=data.schema)
    creation.append(data)
    creation.commit_transaction()
    return upload


def sweep_uploads(catalog: Any, *, older_than: timedelta = SWEEP_UPLOADS_AFTER) -> None:
    """Drop the uploads older than ``older_than`` (by the time in their name): a retrieval's task killed before
    its job ran leaves its upload behind."""
    cutoff = datetime.now(UTC) - older_than
    for identifier in catalog.list_tables(UPLOAD_NAMESPACE):
        name = identifier[-1]
        try:
            made = datetime.strptime(name.split("_")[2], UPLOAD_TIME_FORMAT).replace(tzinfo=UTC)
        except (IndexError, ValueError):
            continue
        if made < cutoff:
            EntityUpload(f"{UPLOAD_NAMESPACE}.{name}").drop()


def as_trino_source(source: DataSource) -> DataSource:
    """``source`` as Trino reads it: a gold Iceberg table becomes ``iceberg.<namespace>.<table>``; a Trino
    source stays as it is; anything else is refused, naming it (Trino has no catalog for it)."""
    if isinstance(source, TrinoSource):
        return source
    namespace, table = getattr(source, "namespace", None), getattr(source, "iceberg_table", None)
    if not (namespace and table):
        raise ValueError(
            f"data source {source.name!r} ({type(source).__name__}) is not a gold-layer table: "
            f"production's offline store (Trino) reads only Iceberg tables of the gold catalog"
        )
    return TrinoSource(
        name=source.name,
        table=f"{TRINO_GOLD_CATALOG}.{namespace}.{table}",
        timestamp_field=source.timestamp_field,
        created_timestamp_column=source.created_timestamp_column or "",
        field_mapping=dict(source.field_mapping or {}),
    )


def _through_trino(view):
    """A copy of ``view`` whose batch source Trino reads (the registry's object is left as it is)."""
    if isinstance(view.batch_source, TrinoSource):
        return view
    copied = copy.copy(view)
    copied.batch_source = as_trino_source(view.batch_source)
    return copied


def is_trino(config: RepoConfig) -> bool:
    return isinstance(config.offline_store, TrinoOfflineStoreConfig)


@contextlib.contextmanager
def traced_reads(config: RepoConfig, purpose: str) -> Iterator[list[str]]:
    """Around reads through ``config``'s offline store: yields a list that, once the reads succeeded, holds
    the ids of the queries they ran, as Trino's ``system.runtime.queries`` lists them (each logged). Stays
    empty when the offline store is not Trino."""
    query_ids: list[str] = []
    if not is_trino(config):
        yield query_ids
        return
    offline = config.offline_store
    tag = f"{SOURCE_PREFIX}-{purpose.replace(' ', '-')}-{uuid.uuid4().hex[:12]}"
    previous, offline.source = offline.source, tag
    # Feast's Trino queries take SIGINT and SIGTERM for themselves and never give them back: the task's
    # own handlers (Airflow ends a task with SIGTERM) are put back once the reads are done.
    handlers = _main_thread_handlers()
    try:
        yield query_ids
    finally:
        offline.source = previous
        for number, handler in handlers.items():
            signal.signal(number, handler)
    for query_id, state, text in queries_tagged(config, tag):
        query_ids.append(query_id)
        log.info("Trino query %s (%s) read the %s: %s", query_id, state, purpose, " ".join(text.split())[:160])


def _main_thread_handlers() -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}


def queries_tagged(config: RepoConfig, tag: str) -> list[tuple[str, str, str]]:
    """(query id, state, text) of every query Trino has run with the source ``tag``, oldest first."""
    import trino

    offline = config.offline_store
    connection = trino.dbapi.connect(
        host=offline.host, port=offline.port, user=offline.user, http_scheme=offline.http_scheme, source=SOURCE_PREFIX
    )
    with contextlib.closing(connection):
        cursor = connection.cursor()
        cursor.execute(
            "SELECT query_id, state, query FROM system.runtime.queries WHERE source = ? ORDER BY created", [tag]
        )
        return [(row[0], row[1], row[2]) for row in cursor.fetchall()]
