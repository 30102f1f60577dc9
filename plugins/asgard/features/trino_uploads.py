"""A training set's entity rows, uploaded for Trino to join: an Iceberg table of the gold catalog, used once.

Feast's Trino store uploads a frame as ``INSERT ... VALUES`` text, in statements of up to a million rows:
past about 20k rows that is longer than Trino takes (``query.max-length``, 1,000,000 characters), and below
it each row is formatted in Python. Here the rows are written by pyiceberg, columnar, as a table of the
catalog the feature views name (the one Trino's ``iceberg`` catalog reads), in the namespace
:data:`UPLOAD_NAMESPACE` beside the gold tables: a script's view of the gold layer holds only those. Each
upload carries :data:`ROW_COLUMN`, its rows' positions, which the join keys its answer by.

An upload is dropped with its files once its retrieval has run; one a killed task left behind is swept by a
later upload once older than any task may run (its name carries when it was made), and so are the files
and folders a drop leaves (each upload's files are a folder named as it is).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from asgard.core.dag_defaults import DEFAULT_ARGS
from asgard.features import gold

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

UPLOAD_NAMESPACE = "feast_uploads"
ROW_COLUMN = "asgard_entity_row"
UPLOAD_TIME_FORMAT = "%Y%m%d%H%M%S"
# An upload is swept once older than any task may run (its own retrieval drops it when it has run).
SWEEP_UPLOADS_AFTER = DEFAULT_ARGS["execution_timeout"] + timedelta(hours=1)
# Seconds a sweep may take before the upload that runs it goes ahead (the next one goes on with it).
SWEEP_BUDGET = 10.0


@dataclass
class EntityUpload:
    """Entity rows written as an Iceberg table of the uploads namespace, for one retrieval."""

    identifier: str
    location: gold.GoldLocation
    dropped: bool = False

    @property
    def trino_name(self) -> str:
        from asgard.features.trino_store import TRINO_GOLD_CATALOG

        return f"{TRINO_GOLD_CATALOG}.{self.identifier}"

    def drop(self) -> None:
        """The table and its files gone (idempotent; a failure is logged: a later sweep tries again)."""
        if self.dropped:
            return
        self.dropped = True
        try:
            catalog = gold.load_catalog(self.location)
            catalog.purge_table(self.identifier)
        except Exception:
            log.exception("could not purge the uploaded entity rows %s (a later upload's sweep will)", self.identifier)
            # Its entry goes all the same (a table whose metadata is gone cannot be purged, only dropped): the
            # files left are the folder sweep's.
            with contextlib.suppress(Exception):
                gold.load_catalog(self.location).drop_table(self.identifier)


def upload_entity_rows(frame: pd.DataFrame, location: gold.GoldLocation) -> EntityUpload:
    """``frame`` and its rows' positions (:data:`ROW_COLUMN`) as a new table of :data:`UPLOAD_NAMESPACE` in
    ``location``'s catalog (timestamps at microseconds, Iceberg's precision), made with its rows in one commit."""
    import numpy as np
    import pyarrow as pa

    if ROW_COLUMN in frame.columns:
        raise ValueError(f"entity rows may not have a column named {ROW_COLUMN!r}: the upload's own")
    catalog = gold.load_catalog(location)
    catalog.create_namespace_if_not_exists(UPLOAD_NAMESPACE)
    sweep_uploads(catalog, location)
    data = pa.Table.from_pandas(frame, preserve_index=False)
    data = data.append_column(ROW_COLUMN, pa.array(np.arange(len(frame), dtype=np.int64)))
    fields = [
        pa.field(f.name, pa.timestamp("us", tz=f.type.tz) if pa.types.is_timestamp(f.type) else f.type)
        for f in data.schema
    ]
    data = data.cast(pa.schema(fields), safe=False)
    made = datetime.now(UTC).strftime(UPLOAD_TIME_FORMAT)
    name = f"entity_rows_{made}_{uuid.uuid4().hex[:12]}"
    upload = EntityUpload(f"{UPLOAD_NAMESPACE}.{name}", location)
    # Its files in a folder named as the table is, which the sweep can find without the catalog (a SQL
    # catalog's warehouse is a place; a REST catalog's may be a name, and its server places the files).
    where = {"location": f"{uploads_folder(location)}/{name}"} if location.catalog_type == "sql" else {}
    creation = catalog.create_table_transaction(upload.identifier, schema=data.schema, **where)
    creation.append(data)
    creation.commit_transaction()
    return upload


def sweep_uploads(
    catalog: Any,
    location: gold.GoldLocation,
    *,
    older_than: timedelta = SWEEP_UPLOADS_AFTER,
    budget: float = SWEEP_BUDGET,
) -> int:
    """Drop the uploads older than ``older_than`` (by the time in their name); how many were dropped. Then
    (a SQL catalog's warehouse) remove the old folders of uploads the catalog no longer names: what a purge
    leaves (it deletes the files it knows of, not folders, and not files a failed purge did not reach). A
    young folder without a table may be an upload being written (its files come before its entry): it is
    left. The budget (``budget`` seconds) is checked between drops and folders. A sweep that fails is
    logged: it never fails the retrieval that runs it."""
    cutoff = datetime.now(UTC) - older_than
    deadline = time.monotonic() + budget
    dropped = 0
    try:
        for identifier in catalog.list_tables(UPLOAD_NAMESPACE):
            if time.monotonic() > deadline:
                log.info("swept %d left-behind uploads; the next upload goes on", dropped)
                return dropped
            name = identifier[-1]
            if _made(name, cutoff):
                EntityUpload(f"{UPLOAD_NAMESPACE}.{name}", location).drop()
                dropped += 1
        if location.catalog_type != "sql":
            return dropped
        named = {identifier[-1] for identifier in catalog.list_tables(UPLOAD_NAMESPACE)}
        for name in gold.folder_names(uploads_folder(location), location):
            if time.monotonic() > deadline:
                break
            if name in named or not _made(name, cutoff):
                continue
            try:  # one folder that cannot go holds up none of the others
                gold.delete_folder(f"{uploads_folder(location)}/{name}", location)
            except OSError as error:
                log.warning("could not remove the files of the upload %s: %s", name, error)
    except Exception:
        log.exception("could not sweep the left-behind entity uploads (the next upload tries again)")
    return dropped


def uploads_folder(location: gold.GoldLocation) -> str:
    """Where the uploads' files are: a folder of the warehouse, one folder per upload, named as its table."""
    return f"{location.warehouse.rstrip('/')}/{UPLOAD_NAMESPACE}"


def _made(name: str, before: datetime) -> bool:
    """Whether ``name`` is an upload's (``entity_rows_<made>_<hex>``) made before ``before``."""
    parts = name.split("_")
    if len(parts) != 4 or parts[:2] != ["entity", "rows"]:
        return False
    try:
        return datetime.strptime(parts[2], UPLOAD_TIME_FORMAT).replace(tzinfo=UTC) < before
    except ValueError:
        return False
