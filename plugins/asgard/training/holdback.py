"""The gate's held-back labels: the newest labelled rows, which no user script can read.

A script that memorises every labelled row it can read scores perfectly on any holdout drawn from
those rows, whatever its seed. So the platform holds back the newest ``gate_holdback_fraction`` of
the label table's rows (by event timestamp; rows of one timestamp ordered by a digest of their entity
keys), scores a script's model and the champion it is compared with on those rows only, and hands the
script (embedded profile) a view of the gold layer whose label table holds only the other rows.

The choice needs no secret: knowing which rows are held back gives nothing without their labels.
It is stable: the same table gives the same rows on every worker and in every run (a held-back row a
script never saw cannot have been passed on by an earlier run), and as newer labels arrive the
window moves forward, so a row once visible is not judged again. What would break that: a larger
fraction, or labels backfilled with older timestamps (each moves the boundary back over rows scripts
have seen); an operator changes the fraction knowing it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from asgard.core.sandbox import Bind
from asgard.core.settings import Settings, get_settings
from asgard.features import gold
from asgard.training.data import ENTITY_TIMESTAMP, TrainingDataError

if TYPE_CHECKING:
    import pandas as pd
    import sqlalchemy
    from pyiceberg.table import Table

log = logging.getLogger(__name__)


def held_back(labels: pd.DataFrame, fraction: float, key_columns: Iterable[str]) -> pd.Series:
    """Which rows of ``labels`` the gate holds back: the newest ``fraction`` of them (at least one).

    Rows sharing the boundary's timestamp are ordered by a digest of ``key_columns`` (what identifies a
    row, never a label: :func:`key_columns`), so the choice is the same wherever it is made.
    """
    import numpy as np
    import pandas as pd

    if not 0 < fraction < 1:
        raise ValueError(f"the held-back fraction must be between 0 and 1, not {fraction}")
    if ENTITY_TIMESTAMP not in labels.columns:
        raise TrainingDataError(f"the label rows have no {ENTITY_TIMESTAMP!r} column to hold the newest back by")
    keys = list(key_columns)
    missing = [column for column in keys if column not in labels.columns]
    if missing or not keys:
        raise TrainingDataError(
            f"the label rows have no {', '.join(missing) or 'key'} column(s) to order the held-back rows by "
            "(ASGARD_GATE_HOLDBACK_KEYS)"
        )
    digest = pd.util.hash_pandas_object(labels[keys], index=False).to_numpy()
    # Missing timestamps count as the oldest (NaT is int64's minimum).
    stamps = pd.to_datetime(labels[ENTITY_TIMESTAMP], utc=True).to_numpy(dtype="datetime64[ns]").astype("int64")
    count = math.ceil(len(labels) * fraction) if len(labels) else 0
    newest_last = np.lexsort((digest, stamps))
    mask = np.zeros(len(labels), dtype=bool)
    if count:
        mask[newest_last[-count:]] = True
        # Rows the keys do not tell apart (one customer twice at one time) go together: which of them came
        # first is the scan's order, which may differ between the script's view and the gate.
        boundary = newest_last[-count]
        mask |= (stamps == stamps[boundary]) & (digest == digest[boundary])
    return pd.Series(mask, index=labels.index, name="held_back")


def key_columns(settings: Settings | None = None) -> list[str]:
    """The operator's columns that identify a labelled row (``ASGARD_GATE_HOLDBACK_KEYS``): :func:`held_back`'s
    tie-break. Not the feature store's entities: any team may register one, and a label column as a key would
    make which rows are held back depend on their labels, which a script could then infer."""
    return [column.strip() for column in (settings or get_settings()).gate_holdback_keys.split(",") if column.strip()]


def fraction(settings: Settings | None = None) -> float:
    """The operator's held-back share (``ASGARD_GATE_HOLDBACK_FRACTION``): never a request's, since a run
    that shrank it would let its script read rows a later run is judged on."""
    return float((settings or get_settings()).gate_holdback_fraction)


# --------------------------------------------------------------------------- the script's view (embedded)
def script_gold_view(
    folder: Path,
    label_table: str,
    key_columns: Iterable[str],
    *,
    settings: Settings | None = None,
) -> list[Bind]:
    """The binds that give a sandboxed script the embedded gold layer with ``label_table`` cut off.

    ``folder`` (new, the platform's) receives a catalog with every gold table as it is, except
    ``label_table``: a copy of it without the held-back rows, and with no history to travel back
    in. The script sees that catalog where the real one is (the Feast registry's sources name that
    path), the copy, and each other table's own folder; never the label table's files. A table whose
    folder holds any file of the label table is left out of the view (and logged), not bound.
    """
    settings = settings or get_settings()
    location = gold.GoldLocation.for_settings(settings)
    if location.catalog_type != "sql" or not location.catalog_uri.startswith("sqlite:///"):
        raise ValueError("a script's gold view is made for the embedded profile's SQLite catalog only")
    catalog_path = Path(location.catalog_uri.removeprefix("sqlite:///"))
    if not catalog_path.exists():
        return []  # a fresh install: no gold layer yet, nothing to see
    source = gold.load_catalog(location)
    names = gold.list_tables(location)
    folder.mkdir(parents=True, exist_ok=True)
    view_location = gold.GoldLocation(
        "sql", warehouse=f"file://{folder / 'warehouse'}", catalog_uri=f"sqlite:///{folder / 'catalog.db'}"
    )
    view = gold.load_catalog(view_location)
    view.create_namespace_if_not_exists(gold.GOLD_NAMESPACE)
    tables = {name: source.load_table(f"{gold.GOLD_NAMESPACE}.{name}") for name in names}
    held_files = _files_of(tables[label_table]) if label_table in tables else set()
    binds = [Bind(folder / "catalog.db", str(catalog_path)), Bind(folder / "warehouse")]
    for name, table in tables.items():
        identifier = f"{gold.GOLD_NAMESPACE}.{name}"
        if name == label_table:
            _write_cut_copy(view, identifier, table, key_columns, fraction(settings))
            continue
        table_folder = _local_path(table.location())
        if any(_is_within(path, table_folder) for path in held_files):
            log.warning("gold table %s holds files of %s: left out of the script's view", name, label_table)
            continue
        view.register_table(identifier, table.metadata_location)
        if table_folder.exists():
            binds.append(Bind(table_folder))
    return binds


def _write_cut_copy(
    view, identifier: str, table: Table, key_columns: Iterable[str], share: float, location: str | None = None
) -> None:
    """``table`` in ``view`` without its held-back rows: one snapshot of the rows scripts may read (at
    ``location``, or the view's warehouse's default)."""
    import pyarrow as pa

    rows = table.scan().to_arrow()
    mask = held_back(rows.to_pandas(), share, key_columns).to_numpy()
    visible = rows.filter(pa.array(~mask))
    copy = view.create_table(identifier, schema=table.schema(), location=location)
    copy.append(visible.cast(copy.schema().as_arrow()))
    log.info(
        "script's view of %s: %d of %d labelled rows (the newest %d held back for the gate)",
        identifier,
        visible.num_rows,
        rows.num_rows,
        int(mask.sum()),
    )


def _files_of(table: Table) -> set[Path]:
    """Every file of ``table`` on this disk: under its folder, its metadata history, its current data."""
    files = {_local_path(uri) for uri in _table_files(table)}
    root = _local_path(table.location())
    for parent, _, names in os.walk(root):
        files.update(Path(parent) / name for name in names)
    files.add(root)
    return files


def _table_files(table: Table) -> set[str]:
    """Every file ``table``'s catalog entry leads to, in every snapshot: its metadata and metadata history,
    manifest lists, manifests, data and delete files, statistics (any may lie outside the table's folder)."""
    files = {table.metadata_location}
    files.update(entry.metadata_file for entry in table.metadata.metadata_log)
    files.update(statistics.statistics_path for statistics in table.metadata.statistics)
    manifests = {}
    for snapshot in table.snapshots():  # each lists every manifest it keeps: each is read once
        files.add(snapshot.manifest_list)
        manifests.update((manifest.manifest_path, manifest) for manifest in snapshot.manifests(table.io))
    for path, manifest in manifests.items():
        files.add(path)
        files.update(
            entry.data_file.file_path for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False)
        )
    return files


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if "://" in uri:
        raise ValueError(f"{uri} is not a local file: the embedded gold layer's files are")
    return Path(uri)


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


# --------------------------------------------------------------------------- the script's view (production)
# Where a run's view lives: a schema of the gold catalog's database, and a prefix of the warehouse.
VIEW_SCHEMA_PREFIX = "script_view_"
VIEW_FOLDER = "script-views"


@dataclass(frozen=True)
class ProductionView:
    """A script run's view of the production gold layer, for its doors: the schema of the gold database its
    PostgreSQL sessions read the catalog from, and what of S3 it may read: its own folder (the cut copy) and
    the files of the tables its catalog registers ("<bucket>/<key>"), nothing else of the warehouse."""

    schema: str
    own: str
    files: frozenset[str]


@contextmanager
def production_script_view(
    run_key: str, reader_role: str, label_table: str, key_columns: Iterable[str], *, settings: Settings | None = None
) -> Iterator[ProductionView]:
    """The gold layer as a script run in production may read it: its catalog (PostgreSQL) and warehouse (S3)
    are services behind the run's doors, so the view is made there, with the platform's login, for the run.

    The run's own schema of the gold database (``script_view_<run_key>``, which the reader may SELECT in)
    holds a catalog of every gold table as it is, except ``label_table``: a copy of it without the
    held-back rows and with no history, under the warehouse's ``script-views/<run_key>/``. The PostgreSQL
    door opens the reader's sessions on that schema; the S3 door opens only the files those tables are made of
    and the copy (:class:`ProductionView`), never the real label table's, which the public schema's catalog
    still names: knowing where the labels are gives nothing. A table holding a file of the label table is left
    out. Both are removed when the run ends; those of a run whose worker was killed, by the next run's sweep
    (:func:`sweep_script_views`): the run holds its view's advisory lock on a session of its own for as long as
    the view lives, and PostgreSQL releases it when that session ends, however the run ends."""
    import sqlalchemy
    from pyiceberg.utils.config import Config

    settings = settings or get_settings()
    location = gold.GoldLocation.for_settings(settings)
    configured = Config().get_catalog_config(location.catalog_name) or {}
    uri = location.catalog_uri or configured.get("uri")
    if location.catalog_type != "sql" or not uri or not uri.startswith("postgresql"):
        raise ValueError("a script's production view is made in a PostgreSQL-backed SQL catalog of the gold layer")
    if not _is_view_key(run_key):
        raise ValueError(f"a view's run key is lower-case letters and digits, not {run_key!r}")
    schema = f"{VIEW_SCHEMA_PREFIX}{run_key}"
    engine = sqlalchemy.create_engine(uri)
    quoted = engine.dialect.identifier_preparer.quote
    view_uri = sqlalchemy.engine.make_url(uri).update_query_dict({"options": f"-csearch_path={schema}"})
    folder = f"{location.warehouse.rstrip('/')}/{VIEW_FOLDER}/{run_key}"
    view_location = gold.GoldLocation(
        "sql", warehouse=folder, catalog_uri=view_uri.render_as_string(hide_password=False),
        catalog_name=location.catalog_name,
    )  # fmt: skip
    # Taken before anything of the view exists, so a sweep never removes a view that is being made.
    holder = engine.connect()
    holder.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _view_lock(run_key)})
    holder.commit()
    try:
        try:
            sweep_script_views(engine, location)
        except Exception:  # another run's leftovers are no reason to fail this one
            log.warning("the sweep of finished runs' script views failed; the next run's tries again", exc_info=True)
        with engine.begin() as connection:
            for statement in (
                "CREATE SCHEMA {schema}",
                "GRANT USAGE ON SCHEMA {schema} TO {reader}",
                "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {reader}",
            ):
                connection.execute(sqlalchemy.text(statement.format(schema=quoted(schema), reader=quoted(reader_role))))
        source = gold.load_catalog(location)
        view = gold.load_catalog(view_location)  # its catalog tables are made in the schema
        view.create_namespace_if_not_exists(gold.GOLD_NAMESPACE)
        tables = {name: source.load_table(f"{gold.GOLD_NAMESPACE}.{name}") for name in gold.list_tables(location)}
        label = tables.get(label_table)
        held_files = _table_files(label) if label is not None else set()
        readable: set[str] = set()
        for name, table in tables.items():
            identifier = f"{gold.GOLD_NAMESPACE}.{name}"
            if name == label_table:
                _write_cut_copy(view, identifier, table, key_columns, fraction(settings), f"{folder}/{name}")
                continue
            files = _table_files(table)
            if files & held_files or any(_uri_within(file, table.location()) for file in held_files):
                log.warning("gold table %s holds files of %s: left out of the script's view", name, label_table)
                continue
            view.register_table(identifier, table.metadata_location)
            readable |= files
        # What the S3 door opens: the files of the registered tables as they are now (a table changed or made
        # during the run is not seen: its catalog entry here does not move) and the run's own folder. An
        # allow-list: the label table's files are not in it, wherever they lie or come to lie.
        yield ProductionView(schema, own=_s3_key(folder), files=frozenset(_s3_key(file) for file in readable))
    finally:
        try:
            _remove_view(engine, run_key, location)
        finally:
            holder.close()  # the lock goes with its session
            engine.dispose()


def sweep_script_views(engine: sqlalchemy.Engine, location: gold.GoldLocation) -> list[str]:
    """Remove the views of script runs that are gone (a worker killed mid-run leaves its schema and copy behind)
    and return their keys. A view whose lock is free has no run: its run held the lock on a session of its own
    from before the view was made until after it was removed."""
    import sqlalchemy

    with engine.connect() as connection:
        schemas = connection.execute(
            sqlalchemy.text("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, :prefix)"),
            {"prefix": VIEW_SCHEMA_PREFIX},
        ).scalars()
        keys = {schema.removeprefix(VIEW_SCHEMA_PREFIX) for schema in schemas}
    keys |= _view_folder_keys(location)
    swept = []
    for key in sorted(filter(_is_view_key, keys)):
        with engine.connect() as connection:
            if not connection.execute(
                sqlalchemy.text("SELECT pg_try_advisory_lock(:key)"), {"key": _view_lock(key)}
            ).scalar():
                continue  # its run is alive
            try:
                log.warning("removing the script view %s: the run that made it is gone", key)
                _remove_view(engine, key, location)
                swept.append(key)
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _view_lock(key)})
                connection.commit()
    return swept


def _remove_view(engine: sqlalchemy.Engine, key: str, location: gold.GoldLocation) -> None:
    """A view's copy (its S3 folder) and its schema; a schema a reader holds a lock on is left for a later sweep."""
    import sqlalchemy

    try:
        _delete_folder(f"{location.warehouse.rstrip('/')}/{VIEW_FOLDER}/{key}", location)
    finally:
        try:
            with engine.begin() as connection:
                # Every run's script is the one reader, which may hold a lock on this schema's tables from another
                # run: the drop waits a while, not for ever (a schema left behind opens no file).
                quoted = engine.dialect.identifier_preparer.quote(f"{VIEW_SCHEMA_PREFIX}{key}")
                connection.execute(sqlalchemy.text("SET LOCAL lock_timeout = '30s'"))
                connection.execute(sqlalchemy.text(f"DROP SCHEMA IF EXISTS {quoted} CASCADE"))
        except sqlalchemy.exc.OperationalError as error:
            log.warning("the script view %s was left in the gold database for a later sweep: %s", key, error.orig)


def _view_folder_keys(location: gold.GoldLocation) -> set[str]:
    """The keys of the views' folders under the warehouse's ``script-views/``."""
    from pyarrow import fs as pafs
    from pyiceberg.io.pyarrow import PyArrowFileIO
    from pyiceberg.utils.config import Config

    io = PyArrowFileIO(Config().get_catalog_config(location.catalog_name) or {})
    scheme, netloc, path = io.parse_location(f"{location.warehouse.rstrip('/')}/{VIEW_FOLDER}")
    entries = io.fs_by_scheme(scheme, netloc).get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return {entry.base_name for entry in entries if entry.type == pafs.FileType.Directory}


def _is_view_key(key: str) -> bool:
    return bool(key) and key.isascii() and key.isalnum() and key == key.lower()


def _view_lock(key: str) -> int:
    """The advisory lock (a signed 64-bit number) a view's run holds."""
    return int.from_bytes(
        hashlib.blake2b(f"asgard script view {key}".encode(), digest_size=8).digest(), "big", signed=True
    )


def _delete_folder(folder: str, location: gold.GoldLocation) -> None:
    """Every object under ``folder`` (an S3 prefix), with the catalog's own S3 settings."""
    from pyiceberg.io.pyarrow import PyArrowFileIO
    from pyiceberg.utils.config import Config

    io = PyArrowFileIO(Config().get_catalog_config(location.catalog_name) or {})
    scheme, netloc, path = io.parse_location(folder)
    with suppress(FileNotFoundError):  # nothing was written
        io.fs_by_scheme(scheme, netloc).delete_dir(path)


def _s3_key(uri: str) -> str:
    """``s3://bucket/key`` as the S3 door names objects: ``bucket/key``."""
    if not uri.startswith(("s3://", "s3a://")):
        raise ValueError(f"{uri} is not on S3: production's gold warehouse is")
    return uri.split("://", 1)[1]


def _uri_within(uri: str, folder: str) -> bool:
    return uri == folder.rstrip("/") or uri.startswith(folder.rstrip("/") + "/")
