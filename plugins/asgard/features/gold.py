"""The gold layer: the curated Iceberg tables every feature is computed from.

Embedded default: a pyiceberg SQL catalog (SQLite) over a local warehouse folder. Production: the
catalog the settings name (pyiceberg's SQL catalog in PostgreSQL, which Trino's Iceberg JDBC catalog
reads; or REST, or Glue) over a warehouse on S3, read by Trino as ``iceberg.gold.*``. Callers ask
this module for a table's columns, its current snapshot, or a time slice of its rows; they never
open a catalog themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from asgard.core.errors import InputError, redact_url
from asgard.core.settings import Settings, get_settings

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

GOLD_NAMESPACE = "gold"
CATALOG_NAME = "asgard_gold"
# Production's catalog is configured through PYICEBERG_CATALOG__GOLD__* (pyiceberg cannot find a
# name with an underscore in its environment variables).
PRODUCTION_CATALOG_NAME = "gold"


class GoldLayerError(InputError, LookupError):
    """A table or column the caller named is not in the gold layer (the message names it)."""


@dataclass(frozen=True)
class GoldLocation:
    """Where the gold layer lives: its catalog's kind, its warehouse and (embedded) its catalog database.

    Nothing here is a secret, so it may be stored (Feast's registry keeps it in each data source):
    production's catalog uri and credentials come from ``PYICEBERG_CATALOG__GOLD__*`` in the
    environment of the process that opens the catalog.
    """

    catalog_type: str
    warehouse: str
    catalog_uri: str | None = None
    catalog_name: str = CATALOG_NAME

    @classmethod
    def for_settings(cls, settings: Settings | None = None) -> GoldLocation:
        settings = settings or get_settings()
        if settings.profile == "production":
            return cls(settings.gold_catalog, settings.gold_warehouse_uri, catalog_name=PRODUCTION_CATALOG_NAME)
        root = settings.data_dir / "gold"
        return cls("sql", warehouse=f"file://{root / 'warehouse'}", catalog_uri=f"sqlite:///{root / 'catalog.db'}")

    @classmethod
    def of_source(cls, source: Any) -> GoldLocation | None:
        """The gold catalog a Feast ``IcebergSource`` names (None for any other data source)."""
        if not (hasattr(source, "iceberg_table") and hasattr(source, "catalog_type")):
            return None
        return cls(source.catalog_type, source.warehouse, source.endpoint or None, source.catalog_name)

    def catalog_properties(self) -> dict[str, str]:
        """Properties for ``pyiceberg.catalog.load_catalog`` (and Feast's ``IcebergSource``)."""
        return {"type": self.catalog_type, "warehouse": self.warehouse} | (
            {"uri": self.catalog_uri} if self.catalog_uri else {}
        )


def load_catalog(location: GoldLocation | None = None) -> Catalog:
    """The gold layer's catalog (an embedded one is created on first use)."""
    from pyiceberg.catalog import load_catalog as open_catalog
    from pyiceberg.utils.config import Config

    location = location or GoldLocation.for_settings()
    if location.catalog_uri and location.catalog_uri.startswith("sqlite:///"):
        from pathlib import Path

        Path(location.catalog_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        Path(location.warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    # The environment's catalog settings as they are now (pyiceberg reads its own at import).
    configured = Config().get_catalog_config(location.catalog_name) or {}
    return open_catalog(location.catalog_name, **{**configured, **location.catalog_properties()})


def warehouse_fs(location: GoldLocation, folder: str) -> tuple[Any, str]:
    """The filesystem ``folder`` (a URI under ``location``'s warehouse, local or S3) is on, opened with the
    catalog's own settings, and its path there."""
    from pyiceberg.io.pyarrow import PyArrowFileIO
    from pyiceberg.utils.config import Config

    io = PyArrowFileIO(Config().get_catalog_config(location.catalog_name) or {})
    scheme, netloc, path = io.parse_location(folder)
    return io.fs_by_scheme(scheme, netloc), path


def delete_folder(folder: str, location: GoldLocation) -> None:
    """Every file under ``folder`` (a URI under ``location``'s warehouse); nothing there is no error."""
    filesystem, path = warehouse_fs(location, folder)
    with contextlib.suppress(FileNotFoundError):  # nothing was written
        filesystem.delete_dir(path)


def folder_names(folder: str, location: GoldLocation) -> list[str]:
    """The names of the folders in ``folder`` (a URI under ``location``'s warehouse); none when it is absent."""
    from pyarrow import fs

    filesystem, path = warehouse_fs(location, folder)
    found = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    return [info.base_name for info in found if info.type == fs.FileType.Directory]


def load_table(table_name: str, location: GoldLocation | None = None) -> Table:
    """The gold table ``table_name``; an unknown name raises :class:`GoldLayerError` listing the known ones."""
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    catalog = load_catalog(location)
    try:
        return catalog.load_table(f"{GOLD_NAMESPACE}.{table_name}")
    except (NoSuchTableError, NoSuchNamespaceError):
        known = list_tables(location)
        raise GoldLayerError(
            f"table {table_name!r} is not in the gold layer; known tables: {', '.join(known) or 'none'}"
        ) from None


def list_tables(location: GoldLocation | None = None) -> list[str]:
    from pyiceberg.exceptions import NoSuchNamespaceError

    try:
        return sorted(ident[-1] for ident in load_catalog(location).list_tables(GOLD_NAMESPACE))
    except NoSuchNamespaceError:
        return []


def table_columns(table_name: str, location: GoldLocation | None = None) -> dict[str, pa.DataType]:
    """Column name → Arrow type of a gold table."""
    schema = load_table(table_name, location).schema().as_arrow()
    return {field.name: field.type for field in schema}


def snapshot_id(table_name: str, location: GoldLocation | None = None) -> int | None:
    """The table's current snapshot id: the lineage of anything computed from it."""
    snapshot = load_table(table_name, location).current_snapshot()
    return snapshot.snapshot_id if snapshot else None


def scan_chunks(
    table: Table,
    timestamp_field: str,
    start: datetime,
    end: datetime,
    columns: list[str] | None = None,
    *,
    chunk_rows: int = 500_000,
) -> Iterator[pa.Table]:
    """Rows with ``start <= timestamp_field < end``, as Arrow tables of whole data files, about ``chunk_rows`` each.

    The files are planned once for the whole window (their min/max timestamp statistics skip every
    file outside it) and read a group at a time, so memory is bounded by one chunk, not the window.
    """
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan
    from pyiceberg.io.pyarrow import ArrowScan

    row_filter = And(
        GreaterThanOrEqual(timestamp_field, start.isoformat()),
        LessThan(timestamp_field, end.isoformat()),
    )
    scan = table.scan(row_filter=row_filter, selected_fields=tuple(columns) if columns else ("*",))
    reader = ArrowScan(scan.table_metadata, scan.io, scan.projection(), scan.row_filter, scan.case_sensitive)
    group, rows = [], 0
    for task in scan.plan_files():
        group.append(task)
        rows += task.file.record_count
        if rows >= chunk_rows:
            yield reader.to_table(group)
            group, rows = [], 0
    if group:
        yield reader.to_table(group)


def trino_catalog(settings: Settings | None = None) -> str:
    """Trino's ``iceberg`` catalog (``etc/catalog/iceberg.properties``) over the same gold layer, made from
    the same settings and catalog configuration pyiceberg reads: Trino then serves ``iceberg.gold.*``.

    Secrets stay out of the file: Trino reads them from its own environment (``${ENV:…}``).
    """
    from pyiceberg.utils.config import Config
    from sqlalchemy.engine import make_url

    settings = settings or get_settings()
    location = GoldLocation.for_settings(settings)
    configured = Config().get_catalog_config(location.catalog_name) or {}
    lines = ["connector.name=iceberg"]
    if location.catalog_type == "sql":
        uri = configured.get("uri") or location.catalog_uri
        if not uri or not str(uri).startswith("postgresql"):
            raise GoldLayerError(
                f"Trino's JDBC catalog needs the gold catalog in PostgreSQL; PYICEBERG_CATALOG__"
                f"{location.catalog_name.upper()}__URI is {redact_url(str(uri)) if uri else 'unset'}"
            )
        database = make_url(str(uri))
        lines += [
            "iceberg.catalog.type=jdbc",
            f"iceberg.jdbc-catalog.catalog-name={location.catalog_name}",
            "iceberg.jdbc-catalog.driver-class=org.postgresql.Driver",
            f"iceberg.jdbc-catalog.connection-url=jdbc:postgresql://{database.host}:{database.port or 5432}/"
            f"{database.database}",
            f"iceberg.jdbc-catalog.connection-user={database.username}",
            "iceberg.jdbc-catalog.connection-password=${ENV:ASGARD_GOLD_CATALOG_PASSWORD}",
            f"iceberg.jdbc-catalog.default-warehouse-dir={location.warehouse}",
        ]
    elif location.catalog_type == "rest":
        lines += ["iceberg.catalog.type=rest", f"iceberg.rest-catalog.uri={configured.get('uri', '')}"]
    else:
        lines += ["iceberg.catalog.type=glue"]
    endpoint = configured.get("s3.endpoint")
    lines += [
        "fs.native-s3.enabled=true",
        f"s3.region={configured.get('s3.region', 'us-east-1')}",
        *([f"s3.endpoint={endpoint}", "s3.path-style-access=true"] if endpoint else []),
        "s3.aws-access-key=${ENV:AWS_ACCESS_KEY_ID}",
        "s3.aws-secret-key=${ENV:AWS_SECRET_ACCESS_KEY}",
    ]
    return "\n".join(lines) + "\n"
