"""Bringing a user's own data into the gold layer: a CSV or Parquet file becomes one Iceberg snapshot.

A load names the table, its entity column (the join key of the feature views over it) and its event
timestamp column. The file is checked before anything is written (``gold_checks``: every problem
named at once), then written as one snapshot:
``append`` adds the rows, ``replace`` swaps every row for the file's in a single overwrite snapshot;
a new table is created together with its first snapshot. A reader sees the table before the load or
after it, never in between; a load that fails leaves the table as it was.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from asgard.features.gold import GOLD_NAMESPACE, GoldLocation, load_catalog
from asgard.features.gold_checks import (
    ENTITY_PROPERTY,
    FORMATS,
    MODES,
    TEAM_PROPERTY,
    TIMESTAMP_PROPERTY,
    GoldLoadError,
    LoadRequest,
    check_table_owner,
    prepare,
    read_file,
)

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "ENTITY_PROPERTY",
    "MODES",
    "TEAM_PROPERTY",
    "TIMESTAMP_PROPERTY",
    "GoldLoadError",
    "LoadRequest",
    "LoadResult",
]
# A path load reads the whole file into memory (one snapshot is one write): larger files are refused.
MAX_FILE_BYTES = 512 * 1024 * 1024
# Loads into one table that commit at once: each is checked again and retried this many times in all.
COMMIT_ATTEMPTS = 3


@dataclass(frozen=True)
class LoadResult:
    table: str
    mode: str
    rows: int
    snapshot_id: int
    created: bool
    total_rows: int
    columns: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "mode": self.mode,
            "rows": self.rows,
            "snapshot_id": self.snapshot_id,
            "created": self.created,
            "total_rows": self.total_rows,
            "columns": self.columns,
        }


def file_format(name: str, given: str | None = None) -> str:
    """``csv`` or ``parquet``: the one given, else from the file name's suffix."""
    if given:
        if given not in FORMATS:
            raise GoldLoadError(f"format {given!r} is not one of {', '.join(FORMATS)}")
        return given
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise GoldLoadError(f"{name}: cannot tell its format from its name; give the format (csv or parquet)")


def load_bytes(
    data: bytes, fmt: str, request: LoadRequest, *, source: str = "upload", location: GoldLocation | None = None
) -> LoadResult:
    """Load a file's content (an upload) into the gold table ``request.table``."""
    request.check()
    return _load(location, request, source, lambda known: read_file(io.BytesIO(data), fmt, known, source=source))


def load_path(
    uri: str, request: LoadRequest, *, team: str, fmt: str | None = None, location: GoldLocation | None = None
) -> LoadResult:
    """Load a file at ``uri``: a local path or an ``s3://`` URI a request names for ``team`` (the
    caller's), which must lie in that team's data roots and outside the platform's own folders (the
    gold layer's included). The gold layer itself is shared by every team."""
    from asgard.core.storage import Location, checked_data_path

    request.check()
    if "\x00" in uri or not (uri.startswith(("/", "s3://"))):
        raise GoldLoadError(f"path {uri[:200]!r} is not an absolute path or an s3:// URI")
    fmt = file_format(uri, fmt)
    uri = checked_data_path(uri, what="file", team=team)
    place = Location(uri)
    filesystem = place.filesystem()
    try:
        info = filesystem.get_file_info(place.path)
    except (OSError, ValueError) as error:  # a name too long, or one the filesystem refuses
        raise GoldLoadError(f"{uri[:200]}: cannot be read ({str(error)[:200]})") from None
    if info.type.name != "File":
        raise GoldLoadError(f"{uri}: no such file")
    if info.size > MAX_FILE_BYTES:
        raise GoldLoadError(f"{uri} is {info.size} bytes, more than a load takes ({MAX_FILE_BYTES}); split it")

    def read(known: dict[str, pa.DataType]) -> pa.Table:
        with filesystem.open_input_file(place.path) as stream:
            return read_file(stream, fmt, known, source=uri)

    return _load(location, request, PurePosixPath(uri).name, read)


def _load(
    location: GoldLocation | None, request: LoadRequest, source: str, read: Callable[[dict], pa.Table]
) -> LoadResult:
    """Check and write; when another load committed first (the catalog refuses a commit made on an
    older snapshot, or the table was created meanwhile), check again against the table as it is now."""
    from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError

    catalog, attempt = load_catalog(location), 1
    while True:
        existing = _existing_table(catalog, request.table)
        check_table_owner(existing, request)  # again on a retry: the table may have been created meanwhile
        data = prepare(read(_known_types(existing)), request, existing)
        try:
            return _write(catalog, existing, data, request, source)
        except (CommitFailedException, TableAlreadyExistsError):
            if attempt >= COMMIT_ATTEMPTS:
                raise
            attempt += 1


def _existing_table(catalog: Any, table: str) -> Any | None:
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    try:
        return catalog.load_table(f"{GOLD_NAMESPACE}.{table}")
    except (NoSuchTableError, NoSuchNamespaceError):
        return None


def _known_types(existing: Any | None) -> dict[str, pa.DataType]:
    if existing is None:
        return {}
    return {field.name: field.type for field in existing.schema().as_arrow()}


def _write(catalog: Any, existing: Any | None, data: pa.Table, request: LoadRequest, source: str) -> LoadResult:
    """One snapshot: the table created with its rows, the rows appended, or every row replaced."""
    import pyarrow as pa

    summary = {"asgard.source": source[-200:], "asgard.mode": request.mode}
    created = existing is None
    if created:
        catalog.create_namespace_if_not_exists(GOLD_NAMESPACE)
        schema = pa.schema(
            [
                pa.field(f.name, f.type, nullable=f.name not in (request.entity_column, request.timestamp_column))
                for f in data.schema
            ]
        )
        properties = {ENTITY_PROPERTY: request.entity_column, TIMESTAMP_PROPERTY: request.timestamp_column}
        if request.team is not None:
            properties[TEAM_PROPERTY] = request.team
        # The table and its first snapshot in one commit: no empty table is ever visible.
        creation = catalog.create_table_transaction(
            f"{GOLD_NAMESPACE}.{request.table}", schema=schema, properties=properties
        )
        creation.append(data.cast(schema), snapshot_properties=summary)
        creation.commit_transaction()
    elif request.mode == "append":
        existing.append(data.cast(existing.schema().as_arrow()), snapshot_properties=summary)
    else:
        _replace(existing, data.cast(existing.schema().as_arrow()), summary)
    table = catalog.load_table(f"{GOLD_NAMESPACE}.{request.table}")
    snapshot = table.current_snapshot()
    total = int(snapshot.summary.additional_properties.get("total-records", data.num_rows))
    columns = {field.name: str(field.type) for field in table.schema().as_arrow()}
    return LoadResult(request.table, request.mode, data.num_rows, snapshot.snapshot_id, created, total, columns)


def _replace(table: Any, data: pa.Table, summary: dict[str, str]) -> None:
    """Every current data file out and the new ones in, as one overwrite snapshot in one commit."""
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    with (
        table.transaction() as transaction,
        transaction.update_snapshot(snapshot_properties=summary).overwrite() as overwrite,
    ):
        for task in table.scan().plan_files():
            overwrite.delete_data_file(task.file)
        for data_file in _dataframe_to_data_files(
            table_metadata=transaction.table_metadata, write_uuid=overwrite.commit_uuid, df=data, io=table.io
        ):
            overwrite.append_data_file(data_file)
