"""Reading a model's features from the Feast online store by entity id: ``{"entities": {...}}``.

The image does not carry Feast (its SDK and its dependencies would triple the image). It reads
Feast's own storage format directly, from what the platform wrote into the bundle at build time
(``serving.json``'s ``online_features``, made by ``asgard.features.online_reading`` with Feast's own
functions): the views and their features, the SQLite table of each view, the Redis hash field of
each feature (Feast's murmur3 of ``view:feature``), and entity keys Feast serialized for sample ids.
At start-up this module serializes the same sample ids and refuses to start if a single byte
differs, so a key it looks up is the key Feast wrote (``tests/include/test_online_features.py``
holds reads equal to ``FeatureStore.get_online_features``).

Where the store is comes from the environment, never from the image: ``ASGARD_ONLINE_STORE`` is
``sqlite:///<path>`` (SQLAlchemy's spelling: ``sqlite:////abs/path.db``; the embedded profile's
file, mounted read-only) or a ``redis://`` /
``rediss://`` URL (production; on Kubernetes from a Secret).
"""

from __future__ import annotations

import abc
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any

from asgard_serving.model import InputError, listed_names, shown_value

# Feast's ValueType numbers (feast.value_type.ValueType), as entity keys carry them.
VALUE_TYPES = {"STRING": 2, "INT32": 3, "INT64": 4}
INTEGER_FORMATS = {"INT32": "<i", "INT64": "<q"}
INTEGER_RANGES = {"INT32": (-(2**31), 2**31 - 1), "INT64": (-(2**63), 2**63 - 1)}
# Statements' bound parameters stay far below SQLite's limit (32,766; 999 before SQLite 3.32).
SQLITE_IDS_PER_QUERY = 500
# Up to this many ids are read from SQLite on the event loop; more on a worker thread.
SQLITE_INLINE_IDS = 16


class StoreUnavailable(RuntimeError):
    """The online store cannot be read now (answered 503, naming why)."""


@dataclass(frozen=True)
class FeatureRows:
    """Features read for a request's entities: model input columns (None where a view holds nothing for
    the entity), each row's oldest feature time, and the rows some view had no features for (their positions)."""

    columns: dict[str, list]
    timestamps: list[datetime | None]
    missing: list[int]


# --------------------------------------------------------------------------- Feast's formats
def serialize_entity_key(join_keys: dict[str, str], values: dict[str, Any]) -> bytes:
    """Feast's ``serialize_entity_key`` (version 3): key count, the sorted key names, then their values,
    each as type, length and bytes (integers little-endian)."""
    names = sorted(join_keys)
    parts = [struct.pack("<I", len(names))]
    for name in names:
        encoded = name.encode()
        parts.append(struct.pack("<II", VALUE_TYPES["STRING"], len(encoded)) + encoded)
    for name in names:
        value_type, value = join_keys[name], values[name]
        data = value.encode() if value_type == "STRING" else struct.pack(INTEGER_FORMATS[value_type], value)
        parts.append(struct.pack("<II", VALUE_TYPES[value_type], len(data)) + data)
    return b"".join(parts)


def key_serializer(join_keys: dict[str, str]):
    """``serialize_entity_key`` for one set of join keys; for the common single integer key, its fixed
    prefix computed once (what Feast writes before the value's eight bytes)."""
    if len(join_keys) == 1 and next(iter(join_keys.values())) == "INT64":
        name = next(iter(join_keys))
        prefix = serialize_entity_key(join_keys, {name: 0})[:-8]
        pack = struct.Struct("<q").pack
        return lambda entity: prefix + pack(entity[name])
    return lambda entity: serialize_entity_key(join_keys, entity)


# The first byte of each fixed-width value's message (field number << 3 | wire type), and its layout.
FIXED_WIDTH = {"DOUBLE": (5 << 3 | 1, struct.Struct("<d")), "FLOAT": (6 << 3 | 5, struct.Struct("<f"))}


def value_decoder(value_type: str) -> Decoder:
    """``decode_value`` for one feature type, a value or a column at a time: a double's or float's
    common shape decoded directly, any other value decoded once and remembered."""
    if value_type in FIXED_WIDTH:
        return FixedWidth(*FIXED_WIDTH[value_type])
    # Integers, strings and the rest: a feature's values repeat across entities (ages, counts, segments),
    # and a serialized value always decodes to the same immutable value, so each is decoded once.
    return Memoized(decode_value)


class Decoder(abc.ABC):
    @abc.abstractmethod
    def __call__(self, data: bytes | None) -> Any:
        """One serialized value, decoded."""

    def column(self, values: list[bytes | None]) -> list:
        """A column of serialized values, decoded."""
        return list(map(self, values))


class FixedWidth(Decoder):
    """Doubles and floats: a tag byte and the little-endian number; a column of them in one numpy call."""

    def __init__(self, tag: int, layout: struct.Struct) -> None:
        import numpy as np

        self.tag, self.size, self.unpack = tag, 1 + layout.size, layout.unpack_from
        self.records = np.dtype([("tag", "u1"), ("value", layout.format)])

    def __call__(self, data: bytes | None) -> Any:
        if data and len(data) == self.size and data[0] == self.tag:
            return self.unpack(data, 1)[0]
        return decode_value(data)

    def column(self, values: list[bytes | None]) -> list:
        import numpy as np

        if None not in values:
            joined = b"".join(values)
            if len(joined) == self.size * len(values):  # every value present, in the common shape
                records = np.frombuffer(joined, self.records)
                if (records["tag"] == self.tag).all():
                    return records["value"].tolist()
        return super().column(values)


# Distinct serialized values remembered per decoder: bounded, emptied when full.
MEMO_ENTRIES = 65_536
_UNSEEN = object()


class Memoized(Decoder):
    """``decode`` remembering its answers: for pure functions of bytes (or numbers) to immutable values."""

    def __init__(self, decode: Callable[[Any], Any]) -> None:
        self.decode = decode
        self.answers: dict = {}

    def __call__(self, data: Any) -> Any:
        value = self.answers.get(data, _UNSEEN)
        if value is _UNSEEN:
            value = self.decode(data)
            if len(self.answers) >= MEMO_ENTRIES:
                self.answers.clear()
            self.answers[data] = value
        return value

    def column(self, values: list) -> list:
        decoded = list(map(self.answers.get, values, repeat(_UNSEEN)))  # (a dict lookup each, in C)
        for row, value in enumerate(decoded):
            if value is _UNSEEN:
                decoded[row] = self(values[row])
        return decoded


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[offset]
        offset += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, offset
        shift += 7


def _signed(value: int, bits: int = 64) -> int:
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def decode_value(data: bytes | None) -> Any:
    """A serialized Feast ``ValueProto`` of a scalar (the one field it sets) as a Python value; the
    empty message (a missing value) and an absent one are None."""
    if not data:
        return None
    tag, offset = _varint(data, 0)
    field, wire = tag >> 3, tag & 7
    if field == 5 and wire == 1:  # double_val
        return struct.unpack_from("<d", data, offset)[0]
    if field == 6 and wire == 5:  # float_val
        return struct.unpack_from("<f", data, offset)[0]
    if field in (3, 4, 7, 8) and wire == 0:  # int32_val, int64_val, bool_val, unix_timestamp_val
        number, _ = _varint(data, offset)
        return bool(number) if field == 7 else _signed(number)
    if field == 2 and wire == 2:  # string_val
        length, offset = _varint(data, offset)
        return data[offset : offset + length].decode()
    if field == 19:  # null_val
        return None
    raise ValueError(f"a stored value of a kind this reader does not decode (field {field})")


def decode_timestamp(data: bytes | None) -> datetime | None:
    """A serialized protobuf ``Timestamp`` (seconds, nanos), as Feast keeps a view's event time in Redis
    (the empty message is the epoch; None is no timestamp stored)."""
    if data is None:
        return None
    seconds = nanos = offset = 0
    while offset < len(data):
        tag, offset = _varint(data, offset)
        value, offset = _varint(data, offset)
        if tag >> 3 == 1:
            seconds = _signed(value)
        elif tag >> 3 == 2:
            nanos = value
    return datetime.fromtimestamp(seconds, tz=UTC) + timedelta(microseconds=nanos // 1000)


def _sqlite_timestamp(value: Any) -> datetime | None:
    """``event_ts`` as Feast's SQLite store keeps it: epoch seconds (its adapter), or ISO text."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    stamp = datetime.fromisoformat(value.decode() if isinstance(value, bytes) else value)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- the reader
class OnlineFeatures:
    """One model version's features in the online store: entities in, model input columns out."""

    def __init__(
        self, spec: dict[str, Any], location: str, *, max_entities: int = 1000, cache_entities: int = 0
    ) -> None:
        self.spec = spec
        self.join_keys: dict[str, str] = spec["join_keys"]
        self.views: list[dict[str, Any]] = spec["views"]
        self.key_of = key_serializer(self.join_keys)
        features = [feature for view in self.views for feature in view["features"]]
        self.decoders = {feature["name"]: value_decoder(feature["type"]) for feature in features}
        self.max_entities = max_entities
        for sample in spec["key_samples"]:
            if self.key_of(sample["entities"]).hex() != sample["key"]:
                raise RuntimeError(
                    f"this image serializes entity {sample['entities']} differently from the Feast that wrote "
                    "the store: refusing to read keys that would never match"
                )
        if location.startswith("sqlite:///"):
            path = location.removeprefix("sqlite:///")
            self.store: _Store = _SqliteStore(path, self.views, cache_entities=cache_entities)
        elif location.startswith(("redis://", "rediss://", "unix://")):
            self.store = _RedisStore(location, self.views, spec["project"])
        else:
            raise RuntimeError("ASGARD_ONLINE_STORE must be sqlite:///<path> or a redis:// URL")
        self.where = self.store.where

    def entity_values(self, entities: Any) -> tuple[list[dict[str, Any]], dict[str, list]]:
        """The request's ``entities`` checked: one dict of join-key values per row, and the columns."""
        if not isinstance(entities, dict) or entities.keys() != self.join_keys.keys():
            self._refuse_keys(entities)
        columns = {name: value if isinstance(value, list) else [value] for name, value in entities.items()}
        lengths = {len(values) for values in columns.values()}
        if len(lengths) > 1:
            raise InputError(f"entity keys have different numbers of ids: {sorted(lengths)}")
        rows = lengths.pop()
        if rows == 0:
            raise InputError("no entity ids to predict")
        if rows > self.max_entities:
            limit = self.max_entities
            raise InputError(f"{rows} entity ids in one request; at most {limit} (ASGARD_SERVING_MAX_ENTITIES)")
        for name, values in columns.items():
            _check_ids(name, self.join_keys[name], values)
        return [{name: columns[name][row] for name in columns} for row in range(rows)], columns

    def _refuse_keys(self, entities: Any) -> None:
        expected = ", ".join(sorted(self.join_keys))
        keyed_by = f"this model's features are keyed by {expected}"
        if not isinstance(entities, dict) or not entities:
            raise InputError(f'entities must be an object of id lists, such as {{"{expected.split(", ")[0]}": [1, 2]}}')
        unknown = sorted(set(entities) - set(self.join_keys))
        if unknown:
            raise InputError(f"unknown entity key(s) {listed_names(unknown)}: {keyed_by}")
        absent = sorted(set(self.join_keys) - set(entities))
        raise InputError(f"missing entity key(s) {', '.join(absent)}: {keyed_by}")

    async def close(self) -> None:
        await self.store.close()

    async def read(self, entities: list[dict[str, Any]], inputs: list[str]) -> FeatureRows:
        """The model's ``inputs`` for each entity, as Feast's ``get_online_features`` would return them: a
        view that holds nothing for an entity gives it None for each of its features (and lists its row
        in ``missing``)."""
        keys = list(map(self.key_of, entities))
        found = [list(map(per_key.get, keys)) for per_key in await self.store.read(keys)]
        columns: dict[str, list] = {name: [None] * len(keys) for name in inputs}
        missing = sorted({row for stored in found for row, entry in enumerate(stored) if entry is None})
        timestamps: list[datetime | None] = [None] * len(keys)
        for view, stored in zip(self.views, found, strict=True):
            nothing = ([None] * len(view["features"]), None)  # (an id the view does not hold)
            if missing:
                stored = [nothing if entry is None else entry for entry in stored]
            values = [entry[0] for entry in stored]
            for position, feature in enumerate(view["features"]):
                name = feature["name"]
                columns[name] = self.decoders[name].column([row[position] for row in values])
            for row, (_, stamp) in enumerate(stored):
                if stamp is not None and (timestamps[row] is None or stamp < timestamps[row]):
                    timestamps[row] = stamp  # the oldest of the row's views: how fresh its stalest feature is
        return FeatureRows(columns, timestamps, missing)


def _check_ids(name: str, value_type: str, values: list) -> None:
    if value_type == "STRING":
        # (Not ``next(..., None)``: a null id is itself what must be refused; it crashed the key's encoding.)
        wrong = [v for v in values if not isinstance(v, str)][:1]
        if wrong:
            raise InputError(f"entity key {name} takes strings: got {shown_value(wrong[0])}")
        return
    low, high = INTEGER_RANGES[value_type]
    for value in values:
        if type(value) is not int or not low <= value <= high:
            raise InputError(f"entity key {name} takes {value_type.lower()} integers: got {shown_value(value)}")


# What a store returns for one view: each stored key's serialized values (in the view's feature order,
# None where absent) and its event time.
Stored = dict[bytes, tuple[list[bytes | None], datetime | None]]


class _Store(abc.ABC):
    where: str

    @abc.abstractmethod
    async def close(self) -> None:
        """Let go of the store's connections."""

    @abc.abstractmethod
    async def read(self, keys: list[bytes]) -> list[Stored]:
        """Per view, what is stored for ``keys``."""


class _SqliteStore(_Store):
    """Feast's SQLite tables (``entity_key, feature_name, value, event_ts``), opened read-only.

    A few ids are read on the event loop: a hop to a worker thread would cost more than the read.
    More are read on a worker thread, with a connection of its own: SQLite searches its B-trees with
    the interpreter lock released, so the loop keeps answering other requests meanwhile.

    What was read is remembered per entity (up to ``cache_entities``; 0 remembers nothing) until the
    file changes: SQLite's ``PRAGMA data_version``, asked on every request (microseconds), moves
    when any other connection commits, such as a materialization. So an answer is never older than
    the store, and between materializations (the store does not change) an entity costs a dict
    lookup rather than seven rows' B-tree searches. A read that was in flight when a change was seen
    is answered but not remembered.
    """

    def __init__(self, path: str, views: list[dict[str, Any]], *, cache_entities: int) -> None:
        import pathlib

        self.path = pathlib.Path(path).resolve()
        self.where = f"sqlite:///{path}"
        self.views = views
        self.local = threading.local()
        self.connections: list = []
        self.queries: dict[tuple[str, int], str] = {}  # (view name, ids) -> its statement
        self.timestamp = Memoized(_sqlite_timestamp)  # (entities materialized together share one)
        self.cache_entities = cache_entities
        self.cache: dict[bytes, tuple] = {}  # entity key -> per view: (values, event time) or None
        self.data_version: int | None = None
        self.generation = 0  # moves when the cache is emptied for a change

    def _connection(self):
        import sqlite3

        connection = getattr(self.local, "connection", None)
        if connection is None:
            if not self.path.is_file():
                raise StoreUnavailable(f"the online store {self.path} does not exist (nothing materialized yet?)")
            # (closed from the loop at shutdown; used only by the thread that opened it)
            uri = f"{self.path.as_uri()}?mode=ro"
            connection = self.local.connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self.connections.append(connection)
        return connection

    async def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self.connections.clear()
        self.local = threading.local()

    def _forget_if_changed(self) -> None:
        """Empty the cache if the store changed since the last request (asked on the loop's connection:
        data_version compares only with itself on one connection)."""
        import sqlite3

        try:
            (version,) = self._connection().execute("PRAGMA data_version").fetchone()
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(f"reading {self.where}: {error}") from error
        if version != self.data_version:
            self.data_version = version
            self.cache = {}
            self.generation += 1

    async def read(self, keys: list[bytes]) -> list[Stored]:
        if self.cache_entities:
            self._forget_if_changed()
        generation, cache = self.generation, self.cache
        entries = {key: cache[key] for key in keys if key in cache}
        unseen = [key for key in dict.fromkeys(keys) if key not in entries]
        if unseen:
            if len(unseen) <= SQLITE_INLINE_IDS:
                per_view = self._read(unseen)
            else:
                import anyio.to_thread

                per_view = await anyio.to_thread.run_sync(self._read, unseen)
            read = {key: tuple(stored.get(key) for stored in per_view) for key in unseen}
            entries.update(read)
            if self.cache_entities and generation == self.generation:
                if len(cache) + len(read) > self.cache_entities:
                    cache.clear()  # bounded: emptied when full
                # (an id the store does not hold is not remembered: a caller cannot fill the cache with them)
                cache.update((key, entry) for key, entry in read.items() if any(entry))
        return [
            {key: entry[view] for key, entry in entries.items() if entry[view] is not None}
            for view in range(len(self.views))
        ]

    def _read(self, unique: list[bytes]) -> list[Stored]:
        import sqlite3

        connection = self._connection()
        found = []
        for view in self.views:
            wanted = [feature["name"] for feature in view["features"]]
            per_key: Stored = {}
            for start in range(0, len(unique), SQLITE_IDS_PER_QUERY):
                chunk = unique[start : start + SQLITE_IDS_PER_QUERY]
                query = self.queries.get((view["name"], len(chunk)))
                if query is None:
                    query = self.queries[view["name"], len(chunk)] = _grouped_query(view, len(chunk))
                try:
                    rows = connection.execute(query, [*wanted, *chunk, *wanted]).fetchall()
                except sqlite3.OperationalError as error:
                    raise StoreUnavailable(f"reading view {view['name']} from {self.where}: {error}") from error
                for key, *values, event_ts in rows:
                    per_key[key] = (values, self.timestamp(event_ts))
            found.append(per_key)
        return found


def _grouped_query(view: dict[str, Any], ids: int) -> str:
    """One row per stored entity: its key, the view's features in order (NULL where absent), its event
    time. Feast keeps a row per feature; grouping them in SQLite (the rows arrive in key order from the
    primary key, so no sort) hands Python one row per entity instead of one per value."""
    table = '"' + view["sqlite_table"].replace('"', '""') + '"'
    features = len(view["features"])
    columns = ", ".join(["max(CASE WHEN feature_name = ? THEN value END)"] * features)
    return (
        f"SELECT entity_key, {columns}, min(event_ts) FROM {table} "
        f"WHERE entity_key IN ({','.join('?' * ids)}) AND feature_name IN ({','.join('?' * features)}) "
        "GROUP BY entity_key"
    )


# HMGET of the same fields on each key, in one call (Lua's false is the reply's nil: a missing field).
HMGET_EACH = """
local found = {}
for index, key in ipairs(KEYS) do
  found[index] = redis.call('HMGET', key, unpack(ARGV))
end
return found
"""


class _RedisStore(_Store):
    """Feast's Redis hashes: key = entity key + project; fields = murmur3 of ``view:feature``, ``_ts:view``.

    One ``HMGET`` per entity (every view's fields at once: they share the hash), all in one server-side
    script call: one command out and one reply back, parsed by hiredis in C — a pipeline of a hundred
    ``HMGET``s costs redis-py's Python packing and parsing ~80 µs each, more than the model. Awaited:
    the event loop serves other requests while Redis answers."""

    def __init__(self, url: str, views: list[dict[str, Any]], project: str) -> None:
        from urllib.parse import urlsplit

        import redis.asyncio

        parts = urlsplit(url)
        self.where = f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
        self.client = redis.asyncio.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.hmget_each = self.client.register_script(HMGET_EACH)  # EVALSHA, loading the script when missing
        self.views = views
        self.project = project.encode()
        self.timestamp = Memoized(decode_timestamp)
        self.fields: list[bytes] = []
        for view in views:
            self.fields += [bytes.fromhex(feature["redis_field"]) for feature in view["features"]]
            self.fields.append(view["redis_ts_field"].encode())

    async def close(self) -> None:
        await self.client.aclose()

    async def read(self, keys: list[bytes]) -> list[Stored]:
        import redis

        unique = list(dict.fromkeys(keys))
        try:
            replies = await self.hmget_each(keys=[key + self.project for key in unique], args=self.fields)
        except redis.RedisError as error:
            raise StoreUnavailable(f"reading {self.where}: {error}") from error
        found = []
        offset = 0
        for view in self.views:
            width = len(view["features"])
            per_key: Stored = {}
            for key, reply in zip(unique, replies, strict=True):
                values, stamp = reply[offset : offset + width], reply[offset + width]
                if stamp is None and not any(values):
                    continue  # the entity is not in this view
                per_key[key] = (values, self.timestamp(stamp))
            found.append(per_key)
            offset += width + 1
        return found
