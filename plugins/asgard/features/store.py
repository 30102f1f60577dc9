"""The feature store: open it for the active profile, its data sources over the gold layer, its status.

Registering feature views is :mod:`asgard.features.registration`; loading the online store is
:mod:`asgard.features.materialization`.

The Feast repo lives in ``include/feature_repo``. The embedded profile reads the gold layer's
Iceberg tables through pyiceberg (DuckDB offline store, SQLite online store); production reads
``iceberg.gold.*`` through Trino and serves from Redis. Which one is configuration: the profile
picks the ``feature_store*.yaml`` and the data source class; no caller branches on it.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgard.core.errors import InputError
from asgard.core.settings import REPO_ROOT, Settings, get_settings
from asgard.features import gold

if TYPE_CHECKING:
    from feast import FeatureStore
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
        # default, unused), so the script needs no client for it either.
        raw = yaml.safe_load(text)
        raw.pop("online_store", None)
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
    """The Feast data source over a gold table, for the active profile."""
    settings = settings or get_settings()
    name = f"gold_{table_name}"
    if settings.profile == "production" and settings.offline_store == "trino":
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
    from asgard.core.settings import redact_url

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
