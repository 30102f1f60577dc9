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

import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from asgard.core.sandbox import Bind
from asgard.core.settings import Settings, get_settings
from asgard.features import gold
from asgard.training.data import ENTITY_TIMESTAMP, TrainingDataError

if TYPE_CHECKING:
    import pandas as pd
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
            write_cut_copy(view, identifier, table, key_columns, fraction(settings))
            continue
        table_folder = _local_path(table.location())
        if any(_is_within(path, table_folder) for path in held_files):
            log.warning("gold table %s holds files of %s: left out of the script's view", name, label_table)
            continue
        view.register_table(identifier, table.metadata_location)
        if table_folder.exists():
            binds.append(Bind(table_folder))
    return binds


def write_cut_copy(
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
    files = {_local_path(uri) for uri in table_files(table)}
    root = _local_path(table.location())
    for parent, _, names in os.walk(root):
        files.update(Path(parent) / name for name in names)
    files.add(root)
    return files


def table_files(table: Table) -> set[str]:
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
