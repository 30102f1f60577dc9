"""Production's offline store: Feast's Trino offline store over the gold layer's Iceberg tables, traced.

The registry describes where a feature view's data is (an Iceberg table of the gold catalog: an
``IcebergSource``); the profile decides what queries it. Production's ``feature_store.production.yaml``
names :class:`GoldTrinoOfflineStore`, which is Feast's ``TrinoOfflineStore`` reading such a source as
Trino's ``iceberg.<namespace>.<table>`` (Trino's Iceberg JDBC catalog reads the same catalog pyiceberg
writes), and joining a training set's entity rows in Trino (:mod:`asgard.features.trino_join`: uploaded
as an Iceberg table, :mod:`asgard.features.trino_uploads`). So one registry serves every reader:

- the platform's tasks query Trino for training sets and the rows a batch scores;
- ``materialize_features`` reads the Iceberg files itself, chunk by chunk (``features.materialization``);
- a user script keeps the DuckDB offline store and reads the same tables through its run's doors
  (:mod:`asgard.training.scripts.store_doors`), in its run's view of the gold layer: a view made per run
  that hides the gate's held-back labels, which one shared Trino catalog could not.

Every read through Trino is traced: :func:`traced_reads` gives the reads a ``source`` of their own, and
afterwards asks Trino's ``system.runtime.queries`` which queries carried it, so the task log names the
query ids Trino itself recorded.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pandas as pd
from feast.infra.offline_stores.contrib.trino_offline_store.trino import (
    TrinoOfflineStore,
    TrinoOfflineStoreConfig,
)
from feast.infra.offline_stores.contrib.trino_offline_store.trino_source import TrinoSource
from pydantic import StrictStr

from asgard.features import gold

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
        if not isinstance(entity_df, pd.DataFrame):  # a query over Trino's tables: Feast's own retrieval
            return TrinoOfflineStore.get_historical_features(config, views, feature_refs, entity_df, *args, **kwargs)
        from asgard.features.trino_join import historical_retrieval

        # The rows are uploaded to the catalog the views name (the one Trino's iceberg catalog reads).
        named = (gold.GoldLocation.of_source(view.batch_source) for view in feature_views)
        location = next((found for found in named if found), None) or gold.GoldLocation.for_settings()
        return historical_retrieval(config, views, feature_refs, entity_df, *args, location=location, **kwargs)


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
def traced_reads(config: RepoConfig, purpose: str) -> Iterator[None]:
    """Around reads through ``config``'s offline store: once they succeeded, logs the id of each query they ran,
    as Trino's ``system.runtime.queries`` lists them (nothing when the offline store is not Trino)."""
    if not is_trino(config):
        yield
        return
    offline = config.offline_store
    tag = f"{SOURCE_PREFIX}-{purpose.replace(' ', '-')}-{uuid.uuid4().hex[:12]}"
    previous, offline.source = offline.source, tag
    # Feast's Trino queries take SIGINT and SIGTERM for themselves and never give them back: the task's
    # own handlers (Airflow ends a task with SIGTERM) are put back once the reads are done.
    handlers = _main_thread_handlers()
    try:
        yield
    finally:
        offline.source = previous
        for number, handler in handlers.items():
            signal.signal(number, handler)
    try:
        queries = queries_tagged(config, tag)
    except Exception as error:  # the reads are done: not finding their ids is no reason to fail them
        log.warning("the %s was read through Trino, but its queries could not be listed: %s", purpose, error)
        return
    for query_id, state, text in queries:
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


def query_error_message(error: Any, address: str) -> str:
    """What a ``TrinoQueryError`` says, naming Trino and where: its query, Trino's error name and message (the
    client also raises one built from a bare string: a query cancelled before Trino ran it)."""
    bare = not isinstance(error._error, dict)
    details = {"message": str(error._error)} if bare else error._error
    query = f"query {error.query_id}" if error.query_id else "a query"
    reason = ": ".join(str(part) for part in (details.get("errorName"), details.get("message")) if part)
    if bare or details.get("errorName") == "USER_CANCELED":
        return f"Trino, the feature store's offline store, at {address}: {query} was cancelled ({reason})"
    return f"Trino, the feature store's offline store, at {address} ended {query}: {reason or 'no reason given'}"
