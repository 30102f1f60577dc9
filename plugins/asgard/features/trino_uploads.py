"""A training set's entity rows, uploaded for Trino to join: an Iceberg table of the gold catalog, used once.

Feast's Trino store uploads a frame as ``INSERT ... VALUES`` text, in statements of up to a million rows:
past about 20k rows that is longer than Trino takes (``query.max-length``, 1,000,000 characters), and below
it each row is formatted in Python. Here the rows are written by pyiceberg, columnar, as a table of the
catalog the feature views name (the one Trino's ``iceberg`` catalog reads), in the namespace
:data:`UPLOAD_NAMESPACE` beside the gold tables: a script's view of the gold layer holds only those. Each
upload carries :data:`ROW_COLUMN`, its rows' positions, which the join keys its answer by.

An upload is dropped with its files once its retrieval has run; one a killed task left behind is swept by a
later upload once older than any task may run (its name carries when it was made).
"""

from __future__ import annotations

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
            gold.load_catalog(self.location).purge_table(self.identifier)
        except Exception:
            log.exception("could not drop the uploaded entity rows %s (a later upload's sweep will)", self.identifier)


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
    upload = EntityUpload(f"{UPLOAD_NAMESPACE}.entity_rows_{made}_{uuid.uuid4().hex[:12]}", location)
    creation = catalog.create_table_transaction(upload.identifier, schema=data.schema)
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
    """Drop the uploads older than ``older_than`` (by the time in their name), within ``budget`` seconds; how
    many were dropped. A sweep that fails is logged: it never fails the retrieval that runs it."""
    cutoff = datetime.now(UTC) - older_than
    deadline = time.monotonic() + budget
    dropped = 0
    try:
        for identifier in catalog.list_tables(UPLOAD_NAMESPACE):
            if time.monotonic() > deadline:
                log.info("swept %d left-behind uploads; the next upload goes on", dropped)
                break
            name = identifier[-1]
            try:
                made = datetime.strptime(name.split("_")[2], UPLOAD_TIME_FORMAT).replace(tzinfo=UTC)
            except (IndexError, ValueError):
                continue
            if made < cutoff:
                EntityUpload(f"{UPLOAD_NAMESPACE}.{name}", location).drop()
                dropped += 1
    except Exception:
        log.exception("could not sweep the left-behind entity uploads (the next upload tries again)")
    return dropped
