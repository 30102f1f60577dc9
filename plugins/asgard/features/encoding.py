"""Feast's online value formats, a column at a time.

Feast serializes every value as a ``ValueProto`` message, one Python call per value. The functions
here produce the same bytes for a whole pandas column at once (numpy for numbers, one tight loop
for strings); ``asgard.features.online_writer`` checks them against Feast's own on each column's
first values before it uses them, and the tests hold every edge (negative varints, NaN, float32,
multibyte strings, timestamps before the epoch) to Feast's and protobuf's own encodings.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import repeat
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# Value.proto field numbers and wire types (fixed64 = 1, fixed32 = 5) of the values encoded by numpy.
FIXED_WIDTH = {"DOUBLE": (5, 1, "<f8"), "FLOAT": (6, 5, "<f4")}
# ... and of the varint (wire type 0) and length-delimited (wire type 2) ones.
VARINT_FIELDS = {"INT32": 3, "INT64": 4}
STRING_FIELD = 2


def feast_encoded(values: pd.Series, value_type: Any, *, texts: bool) -> tuple[list[bytes], list]:
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.type_map import python_values_to_proto_values

    protos = python_values_to_proto_values(values.tolist(), value_type)
    encoded = [proto.SerializeToString() for proto in protos]
    return encoded, [extract_text_and_num(proto, False)[0] for proto in protos] if texts else []


def fast_encoded(type_name: str, values: pd.Series, *, texts: bool) -> tuple[list[bytes], list] | None:
    """Serialized ``ValueProto``s and texts of a column of numbers or strings, a column at a time;
    None for a type (or a pandas dtype) it does not cover."""
    kind = values.dtype.kind
    if type_name in FIXED_WIDTH and kind == "f":
        return _fixed_width(type_name, values, texts=texts)
    if type_name in VARINT_FIELDS and kind in "iu":
        return _varints(VARINT_FIELDS[type_name], values, texts=texts)
    if type_name in VARINT_FIELDS and kind == "f":  # integers with missing values, as pandas holds them
        missing = values.isna().to_numpy()
        present = values.to_numpy()[~missing]
        if not (present == present.round()).all():
            return None  # a fraction in an integer column: Feast decides what it becomes
        encoded, text = _varints(VARINT_FIELDS[type_name], values.fillna(0).astype("int64"), texts=texts)
        for row in missing.nonzero()[0].tolist():
            encoded[row] = b""
            if texts:
                text[row] = None
        return encoded, text
    if type_name == "STRING" and kind == "O":
        return _strings(values, texts=texts)
    return None


def _fixed_width(type_name: str, values: pd.Series, *, texts: bool) -> tuple[list[bytes], list]:
    """DOUBLE and FLOAT: a tag byte and the little-endian number; a missing value (NaN) is the empty
    message; the text is Python's repr of the (for FLOAT, widened) value."""
    import numpy as np

    field, wire, dtype = FIXED_WIDTH[type_name]
    numbers = values.to_numpy(dtype=dtype)
    width = 1 + numbers.itemsize
    packed = np.zeros(len(numbers), dtype=[("tag", "u1"), ("value", dtype)])
    packed["tag"] = field << 3 | wire
    packed["value"] = numbers
    encoded = fixed_width_items(packed.tobytes(), width)
    text = list(map(str, numbers.astype(np.float64).tolist())) if texts else []
    for row in np.flatnonzero(np.isnan(numbers)).tolist():
        encoded[row] = b""
        if texts:
            text[row] = None
    return encoded, text


def _varints(field: int, values: pd.Series, *, texts: bool) -> tuple[list[bytes], list]:
    """INT32 and INT64: a tag byte and the base-128 varint of the two's complement (ten bytes for a
    negative number)."""
    import numpy as np

    numbers = values.to_numpy(dtype=np.int64)
    unsigned = numbers.view(np.uint64)
    width = np.ones(len(numbers), dtype=np.int64)
    for count in range(1, 10):
        width += unsigned >= np.uint64(1) << np.uint64(7 * count)
    table = np.zeros((len(numbers), 11), dtype=np.uint8)
    table[:, 0] = field << 3
    for position in range(10):
        group = (unsigned >> np.uint64(7 * position)) & np.uint64(0x7F)
        more = (width > position + 1).astype(np.uint8) << 7
        table[:, position + 1] = np.where(width > position, group.astype(np.uint8) | more, 0)
    starts = np.arange(0, 11 * len(numbers), 11)
    encoded = _slices(table.tobytes(), starts.tolist(), (starts + width + 1).tolist())
    return encoded, list(map(str, numbers.tolist())) if texts else []


def _strings(values: pd.Series, *, texts: bool) -> tuple[list[bytes], list] | None:
    """STRING: a tag byte, the varint length and the UTF-8 bytes; a missing value (None or NaN) is the
    empty message. None when a value is not a string (Feast decides what it becomes)."""
    import numpy as np

    items = values.tolist()
    missing = np.flatnonzero(values.isna().to_numpy()).tolist()
    for row in missing:
        if not (items[row] is None or isinstance(items[row], float)):
            return None  # pandas' other missing values (pd.NA, NaT): Feast decides
        items[row] = ""
    if not all(map(isinstance, items, repeat(str))):
        return None
    data = list(map(str.encode, items))
    lengths = list(map(len, data))
    short = max(lengths, default=0) < 0x80  # one length byte: the common case, from a table
    prefixes = map(SHORT_STRING_PREFIXES.__getitem__ if short else _string_prefix, lengths)
    encoded = list(map(bytes.__add__, prefixes, data))
    for row in missing:
        encoded[row] = b""
        items[row] = None
    return encoded, items if texts else []


SHORT_STRING_PREFIXES = [bytes([STRING_FIELD << 3 | 2, length]) for length in range(0x80)]


def _string_prefix(length: int) -> bytes:
    prefix = bytearray([STRING_FIELD << 3 | 2])
    while length >= 0x80:
        prefix.append(length & 0x7F | 0x80)
        length >>= 7
    prefix.append(length)
    return bytes(prefix)


def fixed_width_items(raw: bytes, width: int) -> list[bytes]:
    """``raw`` cut into items of ``width`` bytes."""
    return _slices(raw, range(0, len(raw), width), range(width, len(raw) + width, width))


def _slices(raw: bytes, starts: Iterable[int], stops: Iterable[int]) -> list[bytes]:
    """``raw[start:stop]`` for each pair, cut in C: no bytecode runs per item."""
    return list(map(raw.__getitem__, map(slice, starts, stops)))


def timestamps(stamps: Any) -> list[bytes]:
    """Serialized ``Timestamp``s of a ``DatetimeIndex``: field 1 the seconds, field 2 the nanoseconds
    (to the microsecond, as ``FromDatetime`` keeps them), both varints, each left out when zero."""
    import numpy as np
    import pandas as pd

    seconds, nanos = np.divmod(stamps.as_unit("ns").asi8, 1_000_000_000)
    nanos = nanos // 1000 * 1000
    encoded = _varints(1, pd.Series(seconds), texts=False)[0]
    for row in np.flatnonzero(seconds == 0).tolist():
        encoded[row] = b""
    if nanos.any():
        nano_parts = _varints(2, pd.Series(nanos), texts=False)[0]
        for row in np.flatnonzero(nanos == 0).tolist():
            nano_parts[row] = b""
        encoded = list(map(bytes.__add__, encoded, nano_parts))
    return encoded
