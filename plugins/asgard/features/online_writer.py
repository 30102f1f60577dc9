"""Writing a view's newest rows into the online store, in Feast's own storage format, at the store's speed.

Feast's ``write_to_online_store`` turns every value into a Python protobuf message, then writes one
SQL statement (SQLite) or two Redis round trips' worth of commands per entity: a few thousand
entities a second, whatever the store can take. The writers here produce the very same bytes —
entity keys through Feast's ``serialize_entity_key``, values as Feast's ``ValueProto`` — but encode
whole columns at once and hand the store a batch at a time: staged a row per entity and spread by
SQLite itself (:mod:`asgard.features.sqlite_writer`), or one pipeline of ``HSET``s (Redis). Columns
of numbers are encoded with numpy; every column's encoding is first checked against Feast's own on
its first values, and a column that does not match (a type this module does not know) is encoded
value by value with Feast's functions.

Anything else — another online store, vector columns, versioned tables, a Redis cluster — is written
by Feast itself (:class:`FeastWriter`), so the choice is never between fast and right.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Iterable, Iterator
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any

from asgard.features import encoding

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore, FeatureView

log = logging.getLogger(__name__)

# How many of a column's values are encoded both ways (numpy and Feast) before numpy is trusted.
CHECKED_VALUES = 64
# Entities whose commands are sent down the connection at once.
PIPELINE_ENTITIES = 10_000


def online_writer(store: FeatureStore, view: FeatureView) -> OnlineWriter:
    """The fastest writer that keeps Feast's format for ``view`` in ``store``'s online store."""
    config = store.config
    online = config.online_store
    kind = getattr(online, "type", "")
    versioned = getattr(config.registry, "enable_online_feature_view_versioning", False)
    if versioned:
        return FeastWriter(store, view)
    if kind == "sqlite" and not online.vector_enabled and not getattr(online, "enable_openai_compatible_store", False):
        from asgard.features.sqlite_writer import SqliteWriter

        return SqliteWriter(store, view)
    if kind == "redis" and str(getattr(online, "redis_type", "redis")).endswith("redis"):
        return RedisWriter(store, view)
    return FeastWriter(store, view)


class OnlineWriter(abc.ABC):
    """Writes frames of one view's newest rows (join keys, features, timestamps) to the online store."""

    def __init__(self, store: FeatureStore, view: FeatureView) -> None:
        self.store, self.view = store, view
        self.join_keys = {column.name: column.dtype.to_value_type() for column in view.entity_columns}
        self.features = {feature.name: feature.dtype.to_value_type() for feature in view.features}
        self.ts = view.batch_source.timestamp_field
        self.created = view.batch_source.created_timestamp_column or None

    # Whether batches go in entity-key order (a B-tree store) or as they come (a hash store).
    sorted_keys = False

    def write(self, frame: pd.DataFrame, *, batch_rows: int = 50_000) -> int:
        """Write ``frame``'s rows (one per entity) in batches of ``batch_rows``; the number written.

        The keys of the whole frame are serialized first (tens of bytes an entity). Each batch is
        prepared here (encoded: the Python work) while the one before is stored by a thread of its
        own (socket I/O, SQLite's C: both without the GIL), so the store works while Python encodes.
        One batch is in flight: memory holds two batches' encodings, not the frame's.
        """
        from concurrent.futures import Future, ThreadPoolExecutor

        if frame.empty:
            return 0
        with self.session() as session, ThreadPoolExecutor(1, thread_name_prefix="online-writer") as storer:
            storing: Future | None = None
            for number, (batch, keys) in enumerate(self.batches(frame, batch_rows)):
                prepared = self.prepare(session, number, batch, keys)
                if storing is not None:
                    storing.result()
                storing = storer.submit(self.store_batch, session, prepared)
            storing.result()
        return len(frame)

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """What one write holds for all its batches (none unless a writer needs it)."""
        yield None

    @abc.abstractmethod
    def prepare(self, session: Any, number: int, frame: pd.DataFrame, keys: list[bytes]) -> Any:
        """Batch ``number`` (``frame``'s rows and their serialized entity keys) made ready to store.
        Batch ``number - 2`` has been stored by then; ``number - 1`` may be storing meanwhile."""

    @abc.abstractmethod
    def store_batch(self, session: Any, prepared: Any) -> None:
        """Store one prepared batch (in the storing thread)."""

    def batches(self, frame: pd.DataFrame, batch_rows: int) -> Iterator[tuple[pd.DataFrame, list[bytes]]]:
        """``frame`` in batches of ``batch_rows`` rows, with their entity keys (in key order if
        :attr:`sorted_keys`)."""
        keys = self.entity_keys(frame)
        if not self.sorted_keys:  # slices of the frame, not copies
            for start in range(0, len(frame), batch_rows):
                yield frame.iloc[start : start + batch_rows], keys[start : start + batch_rows]
            return
        order = key_order(keys)
        for start in range(0, len(frame), batch_rows):
            rows = order[start : start + batch_rows]
            yield frame.take(rows), [keys[row] for row in rows]

    # ------------------------------------------------------------------ Feast's format, by column
    def entity_keys(self, frame: pd.DataFrame) -> list[bytes]:
        """Each row's entity key as Feast serializes it (``serialize_entity_key``).

        One integer join key (the common case) serializes as a fixed prefix and the number's eight
        little-endian bytes: taken from Feast on the first keys, checked on them, then applied to the
        column at once. Other keys go through Feast's function one by one.
        """
        if len(self.join_keys) == 1 and frame[next(iter(self.join_keys))].dtype.kind in "iu":
            import numpy as np

            numbers = frame[next(iter(self.join_keys))].to_numpy(dtype="<i8")
            expected = self._feast_entity_keys(frame.iloc[:CHECKED_VALUES])
            prefix = expected[0][:-8]
            packed = np.zeros(len(numbers), dtype=[("prefix", f"V{len(prefix)}"), ("key", "<i8")])
            packed["prefix"] = np.frombuffer(prefix, dtype=f"V{len(prefix)}")[0]
            packed["key"] = numbers
            keys = encoding.fixed_width_items(packed.tobytes(), len(prefix) + 8)
            if keys[: len(expected)] == expected:
                return keys
            log.warning("%s: entity keys differ from Feast's serialization; serializing one by one", self.view.name)
        return self._feast_entity_keys(frame)

    def _feast_entity_keys(self, frame: pd.DataFrame) -> list[bytes]:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import python_values_to_proto_values

        version = self.store.config.entity_key_serialization_version
        names = list(self.join_keys)
        values = [
            python_values_to_proto_values(frame[name].tolist(), value_type)
            for name, value_type in self.join_keys.items()
        ]
        return [
            serialize_entity_key(
                EntityKey(join_keys=names, entity_values=row), entity_key_serialization_version=version
            )
            for row in zip(*values, strict=True)
        ]

    def encoded_values(self, name: str, values: pd.Series, *, texts: bool = False) -> tuple[list[bytes], list]:
        """A column's values as serialized ``ValueProto``s, exactly as Feast writes them, and (``texts``)
        the ``value_text`` Feast's SQL stores keep beside each."""
        value_type = self.features[name]
        fast = encoding.fast_encoded(value_type.name, values, texts=texts)
        if fast is not None:
            sample = values.iloc[:CHECKED_VALUES]
            expected = encoding.feast_encoded(sample, value_type, texts=texts)
            if (fast[0][: len(sample)], fast[1][: len(sample)]) == expected:
                return fast
            log.warning("%s.%s: numpy's encoding differs from Feast's; encoding value by value", self.view.name, name)
        return encoding.feast_encoded(values, value_type, texts=texts)

    def timestamps(self, frame: pd.DataFrame, column: str | None) -> list[Any]:
        """Naive UTC datetimes (what Feast hands its stores), or Nones without the column."""

        if column is None:
            return [None] * len(frame)
        stamps = utc_stamps(frame[column]).tz_localize(None)
        return stamps.to_pydatetime().tolist()


def key_order(keys: list[bytes]) -> list[int]:
    """The positions of ``keys`` in byte order (SQLite's order for blobs); keys of one width (the
    common case) sorted by numpy, which compares fixed-width byte strings as memcmp does."""
    import numpy as np

    widths = set(map(len, keys))
    if len(widths) == 1 and 0 not in widths:
        return np.argsort(np.frombuffer(b"".join(keys), dtype=f"S{widths.pop()}"), kind="stable").tolist()
    return sorted(range(len(keys)), key=keys.__getitem__)


def utc_stamps(values: pd.Series) -> pd.DatetimeIndex:
    """A column of times as UTC; one already of datetimes is converted as a whole (``to_datetime``
    looks at every value first, to decide whether to cache its parsing)."""
    import pandas as pd

    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return pd.DatetimeIndex(values).tz_convert("UTC")
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True))


class RedisWriter(OnlineWriter):
    """Feast's Redis hashes (key: entity key + project; fields: murmur3 of ``view:feature`` and
    ``_ts:view``), one ``HSET`` per entity, pipelined."""

    def __init__(self, store: FeatureStore, view: FeatureView) -> None:
        from feast.infra.online_stores.helpers import _mmh3

        super().__init__(store, view)
        self.online_store = store._get_provider().online_store
        self.fields = {name: _bulk(_mmh3(f"{view.name}:{name}")) for name in self.features}
        self.ts_field = f"_ts:{view.name}".encode()
        self.project = store.config.project.encode()
        self.ttl = store.config.online_store.key_ttl_seconds

    def prepare(self, session: Any, number: int, frame: pd.DataFrame, keys: list[bytes]) -> list[tuple[bytes, int]]:
        return list(self.pipelines(frame, keys))

    def store_batch(self, session: Any, prepared: list[tuple[bytes, int]]) -> None:
        self.send(prepared)

    def pipelines(self, frame: pd.DataFrame, keys: list[bytes]) -> Iterator[tuple[bytes, int]]:
        """The commands of ``frame``'s entities in RESP, the protocol itself, a pipeline's worth at a
        time, with the number of replies each pipeline gets.

        Each command's parts are columns (the fixed parts repeated), zipped and joined in C: no
        bytecode runs per entity.
        """
        redis_keys = list(map(bytes.__add__, keys, repeat(self.project)))
        key_parts = _bulk_items(redis_keys)
        parts = [repeat(b"*%d\r\n$4\r\nHSET\r\n" % (4 + 2 * len(self.features))), *key_parts]
        parts += [repeat(_bulk(self.ts_field)), *_bulk_items(self.timestamp_protos(frame))]
        for name in self.features:
            parts += [repeat(self.fields[name]), *_bulk_items(self.encoded_values(name, frame[name])[0])]
        commands_per_entity = 1
        if self.ttl:
            parts += [repeat(b"*3\r\n$6\r\nEXPIRE\r\n"), *key_parts, repeat(_bulk(str(self.ttl).encode()))]
            commands_per_entity = 2
        for start in range(0, len(keys), PIPELINE_ENTITIES):
            stop = start + PIPELINE_ENTITIES
            window = [part if isinstance(part, repeat) else part[start:stop] for part in parts]
            # The repeated parts never end: the columns' slices end each pipeline.
            payload = b"".join(chain.from_iterable(zip(*window, strict=False)))
            yield payload, len(redis_keys[start:stop]) * commands_per_entity

    def send(self, pipelines: Iterable[tuple[bytes, int]]) -> None:
        """Send the pipelines down one of redis-py's connections (its pipeline packs each command in
        Python); each one's replies are read after the next is sent, so Redis works meanwhile."""
        client = self.online_store._get_client(self.store.config.online_store)
        connection = client.connection_pool.get_connection()
        try:
            unread = 0
            for payload, replies in pipelines:
                connection.send_packed_command([payload])
                self._read_replies(connection, unread)
                unread = replies
            self._read_replies(connection, unread)
        except BaseException:
            connection.disconnect()  # replies may be left unread: never hand this connection out again
            raise
        finally:
            client.connection_pool.release(connection)

    @staticmethod
    def _read_replies(connection: Any, count: int) -> None:
        for _ in range(count):
            connection.read_response()  # an error reply raises, naming it

    def timestamp_protos(self, frame: pd.DataFrame) -> list[bytes]:
        """Each row's event time as the serialized ``Timestamp`` Feast stores (seconds, then nanos
        when not zero, both varints): a column at a time, checked against protobuf's on the first rows."""
        from google.protobuf.timestamp_pb2 import Timestamp

        stamps = utc_stamps(frame[self.ts])
        encoded = encoding.timestamps(stamps)
        expected = []
        for stamp in stamps[:CHECKED_VALUES].to_pydatetime():
            proto = Timestamp()
            proto.FromDatetime(stamp)
            expected.append(proto.SerializeToString())
        if encoded[: len(expected)] == expected:
            return encoded
        log.warning("%s: timestamps differ from protobuf's encoding; encoding one by one", self.view.name)
        protos = []
        for stamp in stamps.to_pydatetime():
            proto = Timestamp()
            proto.FromDatetime(stamp)
            protos.append(proto.SerializeToString())
        return protos


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


# The header of a bulk string of each length up to 1 KiB, looked up rather than formatted.
BULK_HEADERS = [b"$%d\r\n" % length for length in range(1024)]


def _bulk_items(values: list[bytes]) -> list:
    """The RESP bulk strings of ``values`` as three columns to zip: headers, values, line ends."""
    lengths = list(map(len, values))
    if max(lengths, default=0) < len(BULK_HEADERS):
        headers = list(map(BULK_HEADERS.__getitem__, lengths))
    else:
        headers = [b"$%d\r\n" % length for length in lengths]
    return [headers, values, repeat(b"\r\n")]


class FeastWriter(OnlineWriter):
    """Feast's own ``write_to_online_store``, for what the writers above do not cover."""

    def write(self, frame: pd.DataFrame, *, batch_rows: int = 50_000) -> int:
        """In slices of ``batch_rows``, one after the other, and without entity keys (Feast makes its own)."""
        for start in range(0, len(frame), batch_rows):
            self.store_batch(None, frame.iloc[start : start + batch_rows])
        return len(frame)

    def prepare(self, session: Any, number: int, frame: pd.DataFrame, keys: list[bytes]) -> pd.DataFrame:
        return frame

    def store_batch(self, session: Any, prepared: pd.DataFrame) -> None:
        self.store.write_to_online_store(self.view.name, prepared)
