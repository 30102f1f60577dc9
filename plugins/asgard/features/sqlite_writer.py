"""Writing a view's newest rows into Feast's SQLite online table at the speed of SQLite itself.

Feast's table holds a row per entity and feature (``entity_key, feature_name, value, value_text,
event_ts, created_ts``). Bound from Python one at a time, each such row costs microseconds of the
sqlite3 binding layer, holding the GIL: more than SQLite takes to store it. So a batch is bound a
row per entity (every feature's value and text side by side) into a staging database, and SQLite
spreads it into Feast's rows itself — one ``INSERT ... SELECT`` with Feast's conflict clause, in C,
without the GIL. Two staging databases take turns: while the spread of one batch runs (on Feast's
connection, in the writer's storing thread), the next batch is encoded and staged into the other. The
store's time is the run's time.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from asgard.features.online_writer import CHECKED_VALUES, OnlineWriter, utc_stamps

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore, FeatureView

# Two staging databases: one being spread into Feast's table while the other is staged.
STAGES = ("asgard_stage_0", "asgard_stage_1")


class SqliteWriter(OnlineWriter):
    """Feast's SQLite table, upserted with Feast's own conflict clause, a batch per transaction."""

    sorted_keys = True  # each row lands beside the previous one in the table's B-trees: several times faster

    def __init__(self, store: FeatureStore, view: FeatureView) -> None:
        from feast.infra.online_stores.sqlite import _quote_id, _table_id

        super().__init__(store, view)
        self.online_store = store._get_provider().online_store
        self.table = _quote_id(_table_id(store.config.project, view))
        self.names = sorted(self.features)  # Feast's key order: SQLite compares names as UTF-8 bytes
        stamps = ["event_ts", "created_ts"] if self.created else ["event_ts"]
        values = [f"value_{index}" for index in range(len(self.names))]
        texts = [f"text_{index}" for index in range(len(self.names))]
        self.staged_columns = ["entity_key", *stamps, *values, *texts]
        self.insert_staged = f"INSERT INTO entities VALUES ({', '.join(['?'] * len(self.staged_columns))})"

        def by_feature(columns: list[str]) -> str:
            cases = " ".join(f"WHEN {index} THEN e.{column}" for index, column in enumerate(columns))
            return f"CASE f.position {cases} END"

        # Entities come in key order (staged so) and features in name order: every row lands beside
        # the previous one in the table's B-trees. Without a created column every created_ts is NULL,
        # as Feast writes it. WHERE true: SQLite's parser needs it before ON CONFLICT.
        columns = ["entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts"]
        updates = ", ".join(f"{column} = excluded.{column}" for column in columns[2:])
        created = "e.created_ts" if self.created else "NULL"
        self.spreads = {
            stage: f"INSERT INTO main.{self.table} ({', '.join(columns)}) "
            f"SELECT e.entity_key, f.name, {by_feature(values)}, {by_feature(texts)}, e.event_ts, {created} "
            f"FROM {stage}.entities AS e CROSS JOIN {stage}.features AS f WHERE true ORDER BY e.rowid, f.position "
            f"ON CONFLICT(entity_key, feature_name) DO UPDATE SET {updates}"
            for stage in STAGES
        }

    @contextlib.contextmanager
    def session(self) -> Iterator[tuple[sqlite3.Connection, list[tuple[str, sqlite3.Connection]]]]:
        """Feast's connection, with the two staging databases — scratch files without a journal,
        removed afterwards — each with its own connection and both attached to Feast's."""
        connection = self.online_store._get_conn(self.store.config)
        with tempfile.TemporaryDirectory(prefix="asgard-sqlite-staging-") as scratch, contextlib.ExitStack() as stack:
            stages = []
            for stage in STAGES:
                path = str(Path(scratch, f"{stage}.db"))
                staging = stack.enter_context(contextlib.closing(sqlite3.connect(path, check_same_thread=False)))
                staging.execute("PRAGMA journal_mode = OFF")
                staging.execute("PRAGMA synchronous = OFF")
                staging.execute(f"CREATE TABLE entities ({', '.join(self.staged_columns)})")
                staging.execute("CREATE TABLE features (position INTEGER PRIMARY KEY, name TEXT)")
                staging.executemany("INSERT INTO features VALUES (?, ?)", enumerate(self.names))
                staging.commit()
                connection.execute(f"ATTACH DATABASE ? AS {stage}", (path,))
                stack.callback(connection.execute, f"DETACH DATABASE {stage}")
                stages.append((stage, staging))
            # First out: a failed spread's transaction, if one is open (DETACH refuses inside one).
            stack.callback(connection.rollback)
            yield connection, stages

    def prepare(self, session: tuple, number: int, frame: pd.DataFrame, keys: list[bytes]) -> str:
        """Stage the batch into the staging database the spread of batch ``number - 2`` has freed."""
        _, stages = session
        stage, staging = stages[number % 2]
        self.stage(staging, frame, keys)
        return stage

    def store_batch(self, session: tuple, prepared: str) -> None:
        """Spread a staged batch into Feast's table, a row per entity and feature, in one transaction."""
        connection, _ = session
        with connection:
            connection.execute(self.spreads[prepared])

    def stage(self, staging: sqlite3.Connection, frame: pd.DataFrame, keys: list[bytes]) -> None:
        """``frame``'s entities, a row each, in place of the batch staged before."""
        with staging:
            staging.execute("DELETE FROM entities")
            staging.executemany(self.insert_staged, self.staged_rows(frame, keys))

    def staged_rows(self, frame: pd.DataFrame, keys: list[bytes]) -> Iterator[tuple]:
        """A staging row per entity: its key, timestamps, then each feature's value and each one's text.

        Blobs go as bytearrays: sqlite3 binds those as they are, while each bytes object is first
        offered to its adapters (two failed attribute lookups, a fifth of a value's cost). The maps
        run in C while executemany pulls the rows: no bytecode runs per entity.
        """
        encoded = [self.encoded_values(name, frame[name], texts=True) for name in self.names]
        stamps = [self.stored_timestamps(frame, self.ts)]
        if self.created:
            stamps.append(self.stored_timestamps(frame, self.created))
        values = [map(bytearray, values) for values, _ in encoded]
        return zip(map(bytearray, keys), *stamps, *values, *(texts for _, texts in encoded), strict=True)

    def stored_timestamps(self, frame: pd.DataFrame, column: str | None) -> list:
        """What SQLite stores for each row's ``column``: the adapter Feast registers for datetimes
        (whole epoch seconds), computed for the column at once and checked against the adapter
        on its first rows; Nones without the column."""
        import numpy as np

        if column is None:
            return [None] * len(frame)
        adapt = sqlite3.adapters.get((datetime, sqlite3.PrepareProtocol))
        stamps = utc_stamps(frame[column])
        if adapt is not None and not stamps.hasnans:
            nanos = stamps.as_unit("ns").asi8
            seconds, fraction = np.divmod(nanos, 1_000_000_000)
            seconds += (fraction != 0) & (nanos < 0)  # int() of a negative timestamp truncates toward zero
            epoch = seconds.tolist()
            sample = self.timestamps(frame.iloc[:CHECKED_VALUES], column)
            if epoch[: len(sample)] == [adapt(stamp) for stamp in sample]:
                return epoch
        return _stored_timestamps(self.timestamps(frame, column))


def _stored_timestamps(stamps: list) -> list:
    """What SQLite stores for each datetime: the adapter Feast registers, value by value."""
    adapt = sqlite3.adapters.get((datetime, sqlite3.PrepareProtocol))
    if adapt is None:
        return stamps
    return [None if stamp is None else adapt(stamp) for stamp in stamps]
