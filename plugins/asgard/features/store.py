"""The feature store: open it for the active profile, its data sources over the gold layer, its status.

Registering feature views is :mod:`asgard.features.registration`; loading the online store is
:mod:`asgard.features.materialization`.

The Feast repo lives in ``include/feature_repo``. The embedded profile reads the gold layer's
Iceberg tables through pyiceberg (DuckDB offline store, SQLite online store); production reads
``iceberg.gold.*`` through Trino and serves from Redis. Which one is configuration: the profile
picks the ``feature_store*.yaml`` and the data source class; no caller branches on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgard.core.errors import InputError
from asgard.core.settings import REPO_ROOT, Settings, get_settings
from asgard.features import gold

if TYPE_CHECKING:
    import pyarrow as pa
    from feast import FeatureStore
    from feast.data_source import DataSource
    from feast.repo_config import RepoConfig

log = logging.getLogger(__name__)

FEATURE_REPO = REPO_ROOT / "include" / "feature_repo"
# Production's offline store (asgard.features.trino_store, named here so that no caller imports Feast's Trino).
TRINO_STORE_TYPE = "asgard.features.trino_store.GoldTrinoOfflineStore"
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


class OfflineStoreUnavailableError(RuntimeError):
    """The offline store's query engine (Trino) does not answer; the message names it and where.

    Not an :class:`InputError`: the request is fine, and the task's retries may find the engine back.
    """


class OfflineStoreQueryError(RuntimeError):
    """The offline store's query engine (Trino) ended a query with an error of its own: its time or memory
    limit, or a table or column it does not have. The message names Trino, where, the query and its reason."""


def feature_view_asset_uri(name: str) -> str:
    return f"{FEATURE_VIEW_ASSET_PREFIX}{name}"


# --------------------------------------------------------------------------- the store
def store_yaml(settings: Settings | None = None) -> str:
    """The active profile's ``feature_store.yaml`` as Feast is to read it: ASGARD_HOME resolved, every
    other ``${VAR}`` (endpoints, credentials) left for the reading process's environment."""
    import yaml

    settings = settings or get_settings()
    text = (FEATURE_REPO / STORE_YAML[settings.profile]).read_text().replace("${ASGARD_HOME}", str(settings.home))
    if settings.profile == "production" and settings.offline_store == "duckdb":
        # One machine without Trino: the same Iceberg tables, read through pyiceberg into DuckDB.
        raw = yaml.safe_load(text)
        raw["offline_store"] = {"type": "duckdb"}
        text = yaml.safe_dump(raw, sort_keys=False)
    return text


def load_repo_config(settings: Settings | None = None, *, online_store: dict[str, Any] | None = None) -> RepoConfig:
    """The Feast configuration of the active profile (``${VAR}`` expanded; ASGARD_HOME from the settings)."""
    import yaml
    from feast.repo_config import RepoConfig

    settings = settings or get_settings()
    raw = yaml.safe_load(os.path.expandvars(store_yaml(settings)))
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

    Embedded: paths resolved (the script does not get ASGARD_HOME). Production: its ``${VAR}``
    placeholders unexpanded, so no platform credential reaches the script.
    """
    import yaml

    settings = settings or get_settings()
    folder.mkdir(parents=True, exist_ok=True)
    text = store_yaml(settings)
    if settings.profile == "embedded":
        load_repo_config(settings)  # creates the store folders the paths point into
    else:
        # A script trains offline and has no door to the online store: its file names none (Feast's
        # default, unused), so the script needs no client for it either. It reads the gold layer through
        # DuckDB, in its run's view behind its doors, never through the platform's Trino (trino_store).
        raw = yaml.safe_load(text)
        raw.pop("online_store", None)
        raw["offline_store"] = {"type": "duckdb"}
        text = yaml.safe_dump(raw, sort_keys=False)
    (folder / "feature_store.yaml").write_text(text)
    return folder


def script_data_paths(settings: Settings | None = None) -> list[Path]:
    """What a sandboxed user script must read to use the feature store (read-only), by profile.

    Embedded: the Feast registry and online store, and the gold layer's catalog and data files (their
    absolute paths are in the registry). Production: nothing local; its stores are network services
    whose credentials the script is not given (its ``feature_store.yaml`` keeps their placeholders).
    """
    settings = settings or get_settings()
    if settings.profile != "embedded":
        return []
    load_repo_config(settings)  # creates the folders the paths point into
    # A fresh install has no gold layer until one is written: a script that reads none runs all the same.
    return [path for path in (settings.data_dir / "feast", settings.data_dir / "gold") if path.exists()]


def open_store(settings: Settings | None = None, *, online_store: dict[str, Any] | None = None) -> FeatureStore:
    """A FeatureStore for the active profile; ``online_store`` overrides the configured one (tests, tools)."""
    from feast import FeatureStore

    return FeatureStore(config=load_repo_config(settings, online_store=online_store))


def trino_address(config: RepoConfig) -> str | None:
    """The coordinator the configured offline store queries, when that store is Trino."""
    offline = config.offline_store
    if getattr(offline, "type", "") not in ("trino", TRINO_STORE_TYPE):
        return None
    return f"{offline.http_scheme}://{offline.host}:{offline.port}"


def trino_info(address: str, *, timeout: float, named: str = "Trino") -> dict[str, Any]:
    """The coordinator's ``/v1/info`` once it has started; :class:`OfflineStoreUnavailableError` saying what
    is wrong (``named`` first, then the address) when it does not answer or is still starting."""
    import httpx

    try:
        body = httpx.get(f"{address}/v1/info", timeout=timeout).json()
    except (httpx.HTTPError, ValueError) as error:
        raise OfflineStoreUnavailableError(
            f"{named} does not answer at {address}: {error or type(error).__name__}"
        ) from None
    if not isinstance(body, dict) or body.get("starting") is not False:
        raise OfflineStoreUnavailableError(f"{named} is still starting at {address}")
    return body


def check_offline_store(config: RepoConfig, *, timeout: float = 5.0) -> None:
    """Raise :class:`OfflineStoreUnavailableError` when the offline store is a Trino that is down or still
    starting (a query would otherwise fail deep in Feast, or wait); any other offline store passes."""
    address = trino_address(config)
    if address is not None:
        trino_info(address, timeout=timeout, named="Trino, the feature store's offline store,")


@contextlib.contextmanager
def offline_store_errors(config: RepoConfig) -> Iterator[None]:
    """Around an offline read: a Trino that is down before it or goes away during it, or that ends the query
    (a slow one past its time limit), is said so, by name."""
    check_offline_store(config)
    address = trino_address(config)
    if address is None:
        yield
        return
    import requests
    from trino.exceptions import HttpError, TrinoConnectionError, TrinoQueryError

    try:
        yield
    except (TrinoConnectionError, HttpError, requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
        raise OfflineStoreUnavailableError(
            f"Trino, the feature store's offline store, stopped answering at {address} during the query: {error}"
        ) from None
    except TrinoQueryError as error:  # a slow query past the time limit (asgard.local.trino) among them
        from asgard.features.trino_store import query_error_message

        raise OfflineStoreQueryError(query_error_message(error, address)) from error


# Trino's type names (information_schema.columns.data_type) → the Arrow types pyiceberg reports for the
# same Iceberg columns; parameterised ones (decimal, timestamp precision) are parsed below.
TRINO_ARROW_TYPES = {
    "boolean": "bool_",
    "tinyint": "int8",
    "smallint": "int16",
    "integer": "int32",
    "bigint": "int64",
    "real": "float32",
    "double": "float64",
    "varchar": "string",
    "varbinary": "binary",
    "date": "date32",
}


def arrow_type_of_trino(type_name: str) -> pa.DataType:
    """The Arrow type of a column Trino reports as ``type_name`` (``pa.null()`` for nested types, which no
    feature, entity or timestamp may have)."""
    import re

    import pyarrow as pa

    name = type_name.strip().lower()
    base = name.split("(", 1)[0]
    if base in TRINO_ARROW_TYPES:
        return getattr(pa, TRINO_ARROW_TYPES[base])()
    if base == "timestamp":
        precision = re.match(r"timestamp(?:\((\d+)\))?", name).group(1) or "3"
        unit = {"0": "s", "3": "ms", "6": "us", "9": "ns"}.get(precision, "us")
        return pa.timestamp(unit, tz="UTC" if name.endswith("with time zone") else None)
    if base == "decimal":
        precision, scale = (int(part) for part in re.findall(r"\d+", name)[:2])
        return pa.decimal128(precision, scale)
    if base == "uuid":
        return pa.uuid()
    return pa.null()


def trino_table_columns(config: RepoConfig, table_name: str) -> dict[str, pa.DataType]:
    """Column name → Arrow type of the gold table ``table_name`` as Trino sees it (its ``information_schema``),
    read as the offline store's user; an unknown table raises :class:`gold.GoldLayerError` naming the known ones."""
    import trino

    address = trino_address(config)
    if address is None:
        raise ValueError("the offline store is not Trino")
    offline = config.offline_store
    with offline_store_errors(config):
        connection = trino.dbapi.connect(
            host=offline.host, port=offline.port, user=offline.user, http_scheme=offline.http_scheme,
            source=offline.source,
        )  # fmt: skip
        cursor = connection.cursor()
        cursor.execute(
            "SELECT column_name, data_type FROM iceberg.information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [gold.GOLD_NAMESPACE, table_name],
        )
        rows = cursor.fetchall()
        if not rows:
            cursor.execute(f"SHOW TABLES FROM iceberg.{gold.GOLD_NAMESPACE}")
            known = sorted(row[0] for row in cursor.fetchall())
            raise gold.GoldLayerError(
                f"table {table_name!r} is not in the gold layer; known tables: {', '.join(known) or 'none'}"
            )
    return {name: arrow_type_of_trino(type_name) for name, type_name in rows}


def gold_columns(table_name: str, settings: Settings | None = None) -> dict[str, pa.DataType]:
    """Column name → Arrow type of a gold table, read where the profile's offline store reads it: through
    Trino's ``information_schema`` when that is Trino, else the Iceberg catalog (pyiceberg)."""
    settings = settings or get_settings()
    if settings.profile == "production" and settings.offline_store == "trino":
        from asgard.features.trino_store import traced_reads

        config = load_repo_config(settings)
        with traced_reads(config, "feature validation"):
            return trino_table_columns(config, table_name)
    return gold.table_columns(table_name)


# The page size of a new SQLite online store. Feast's rows are small and a materialization writes
# them in key order: 16 KiB pages (SQLite's default is 4) hold four times as many, and the same
# writes take about a quarter less time (bench/materialize_bench.py).
SQLITE_PAGE_SIZE = 16_384


def create_sqlite_online_store(config: RepoConfig) -> None:
    """Create the SQLite online store's file, with :data:`SQLITE_PAGE_SIZE` pages, if it does not
    exist yet (Feast would create it with SQLite's default); an existing one is left as it is."""
    import contextlib
    import sqlite3

    if getattr(config.online_store, "type", "") != "sqlite":
        return
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    path = Path(SqliteOnlineStore._get_db_path(config))
    if path.exists() and path.stat().st_size > 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
        connection.execute("VACUUM")  # writes the header: the page size is the file's from now on


def apply_repo(settings: Settings | None = None) -> str:
    """``feast apply`` of ``include/feature_repo`` for the active profile; returns Feast's report.

    Feast imports the repo's Python files, which read the profile from the environment: running the
    real CLI in a child process with this installation's environment keeps that exact and uncached.
    """
    import subprocess
    import sys
    import tempfile

    settings = settings or get_settings()
    env = {
        **os.environ,
        "ASGARD_HOME": str(settings.home),
        "ASGARD_PROFILE": settings.profile,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(settings.plugins_folder), os.environ.get("PYTHONPATH")])),
    }
    # Fails early, naming the file, on a broken configuration; Feast then creates the online tables.
    create_sqlite_online_store(load_repo_config(settings))
    feast = os.path.join(os.path.dirname(sys.executable), "feast")
    with tempfile.TemporaryDirectory(prefix="asgard-feast-") as folder:
        # The profile's configuration as Feast is to read it (no secret in it: Feast expands them).
        config = Path(folder) / "feature_store.yaml"
        config.write_text(store_yaml(settings))
        command = [feast, "-c", str(FEATURE_REPO), "-f", str(config), "apply"]
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
    """The Feast data source over a gold table: where its data is (an Iceberg table of the profile's gold
    catalog). What queries it is the offline store's part: DuckDB, or Trino in production (``trino_store``)."""
    settings = settings or get_settings()
    name = f"gold_{table_name}"
    from feast.infra.data_sources.contrib.iceberg_catalog.iceberg_source import IcebergSource

    location = gold.GoldLocation.for_settings(settings)
    return IcebergSource(
        name=name,
        catalog_type=location.catalog_type,
        catalog_name=location.catalog_name,
        endpoint=location.catalog_uri or "",
        warehouse=location.warehouse,
        namespace=gold.GOLD_NAMESPACE,
        table=table_name,
        timestamp_field=timestamp_field,
        created_timestamp_column=created_timestamp_column or "",
    )


def store_status(store: FeatureStore) -> dict[str, Any]:
    """Which project, registry and stores the profile uses, and what the registry holds."""
    from asgard.core.errors import redact_url

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


def to_utc(value: datetime | str) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
