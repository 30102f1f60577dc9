"""Checking a user's file against the gold layer before anything is written (see ``gold_load``).

Every problem found is named at once: column names, types the gold layer keeps (integers, floats,
booleans, strings, timestamps), an entity key that is an integer or a string and never empty,
timestamps that parse (a naive one is taken as UTC) and are never empty, no (entity, timestamp)
pair twice, and, for an existing table, exactly its columns with types that convert to its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from asgard.core.errors import InputError

if TYPE_CHECKING:
    import pyarrow as pa

MODES = ("append", "replace")
FORMATS = ("csv", "parquet")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")  # the whole name (fullmatch: no trailing newline either)
# Trino's reserved words: a table or column so named breaks the SQL that queries it (Trino reads the gold layer).
# fmt: off
RESERVED = frozenset((
    "alter", "and", "as", "between", "by", "case", "cast", "constraint", "create", "cross", "cube",
    "current_catalog", "current_date", "current_path", "current_role", "current_schema", "current_time",
    "current_timestamp", "current_user", "deallocate", "delete", "describe", "distinct", "drop", "else", "end",
    "escape", "except", "execute", "exists", "extract", "false", "for", "from", "full", "group", "grouping",
    "having", "in", "inner", "insert", "intersect", "into", "is", "join", "json_array", "json_exists", "json_object",
    "json_query", "json_table", "json_value", "left", "like", "listagg", "localtime", "localtimestamp", "natural",
    "normalize", "not", "null", "on", "or", "order", "outer", "prepare", "recursive", "right", "rollup", "select",
    "skip", "table", "then", "trim", "true", "uescape", "union", "unnest", "using", "values", "when", "where",
    "with",
))
# fmt: on


def name_problem(name: str | None) -> str | None:
    """Why ``name`` is not one the gold layer takes (None: it is)."""
    if not NAME.fullmatch(name or ""):
        return "letters, digits and '_', not starting with a digit"
    if name.lower() in RESERVED:
        return "a reserved word of SQL (Trino queries the gold layer)"
    return None


# Table properties that say which columns a table's rows are keyed and timed by.
ENTITY_PROPERTY = "asgard.entity_column"
TIMESTAMP_PROPERTY = "asgard.timestamp_column"
# The team whose gold load created a table: only its members (and admins) load into it.
TEAM_PROPERTY = "asgard.team"


class GoldLoadError(InputError):
    """The file cannot become (or join) the gold table as asked; the message names every problem."""


@dataclass(frozen=True)
class LoadRequest:
    """What to load into which table, and how."""

    table: str
    entity_column: str
    timestamp_column: str
    mode: Literal["append", "replace"] = "append"
    # The team the load acts for (a new table becomes its); None: the platform's own load, unchecked.
    team: str | None = None
    # An admin's load: into any team's table, and into tables no gold load made (the seed's, other tools').
    any_table: bool = False

    def check(self) -> None:
        problems = [
            f"{what} {value!r} is not a name the gold layer takes ({name_problem(value)})"
            for what, value in (
                ("table", self.table),
                ("entity column", self.entity_column),
                ("timestamp column", self.timestamp_column),
            )
            if name_problem(value)
        ]
        if self.mode not in MODES:
            problems.append(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.entity_column == self.timestamp_column and not problems:
            problems.append(f"the entity and timestamp columns are both {self.entity_column!r}")
        if problems:
            raise GoldLoadError("; ".join(problems))


# --------------------------------------------------------------------------- reading
def read_file(stream: Any, fmt: str, known: dict[str, pa.DataType], *, source: str) -> pa.Table:
    """The file as an Arrow table; a CSV's columns the existing table knows are parsed as its types."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            table = pq.read_table(stream)
        else:
            # Timestamps are parsed below (any ISO form, naive as UTC); the table's other types here.
            types = {name: kind for name, kind in known.items() if not pa.types.is_timestamp(kind)}
            table = pacsv.read_csv(stream, convert_options=pacsv.ConvertOptions(column_types=types))
        table.column_names  # noqa: B018 - arrow decodes the names only when asked: a binary header fails here
        return table
    except UnicodeDecodeError:
        raise GoldLoadError(f"{source} is not readable {fmt}: its column names are not UTF-8 text") from None
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as error:
        message = _first_line(error)
        column = re.search(r"CSV column #(\d+)", message)
        names = _csv_header(stream) if column else []
        if column and int(column.group(1)) < len(names):  # arrow counts from 0 and names no column
            message = f"column {names[int(column.group(1))]!r}: {message}"
        raise GoldLoadError(f"{source} is not readable {fmt}: {message}") from None


def _csv_header(stream: Any) -> list[str]:
    import pyarrow.csv as pacsv

    try:
        stream.seek(0)
        return pacsv.open_csv(stream).schema.names
    except Exception:  # the header itself is unreadable: the column stays a number
        return []


def prepare(frame: pa.Table, request: LoadRequest, existing: Any | None) -> pa.Table:
    """The file's rows checked and converted to the gold table's types (every problem named at once)."""
    import pyarrow as pa

    problems: list[str] = []
    names = frame.column_names
    if frame.num_rows == 0:
        problems.append("the file has no rows")
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"column {name!r} appears twice")
    for name in names:
        if name_problem(name):
            problems.append(f"column name {name!r} is not one the gold layer takes ({name_problem(name)})")
    for role, name in (("entity", request.entity_column), ("timestamp", request.timestamp_column)):
        if name not in names:
            problems.append(f"{role} column {name!r} is not in the file (its columns: {', '.join(names)})")
    if existing is not None:
        problems += _table_key_problems(existing, request)
    if problems:
        raise GoldLoadError("; ".join(problems))

    target = existing.schema().as_arrow() if existing is not None else None
    columns: dict[str, pa.Array] = {}
    for name in names:
        column = frame.column(name).combine_chunks()
        if pa.types.is_dictionary(column.type):  # pandas' categories, as Parquet keeps them
            column = column.dictionary_decode()
        if name == request.timestamp_column:
            converted = _timestamps(name, column, problems)
        elif target is not None and name in target.names:
            converted = _to_table_type(name, column, target.field(name).type, problems)
        else:
            converted = _gold_type(name, column, problems)
        if converted is not None:
            columns[name] = converted
    if target is not None:
        missing = [name for name in target.names if name not in names]
        extra = [name for name in names if name not in target.names]
        if missing:
            problems.append(f"table {request.table!r} has columns the file lacks: {', '.join(missing)}")
        if extra:
            problems.append(f"the file has columns table {request.table!r} does not: {', '.join(extra)}")
    key = columns.get(request.entity_column)
    if key is not None:
        if not (pa.types.is_integer(key.type) or pa.types.is_string(key.type)):
            problems.append(
                f"entity column {request.entity_column!r} is {key.type}; an entity key is an integer or a string"
            )
        _no_nulls(request.entity_column, "entity", key, problems)
    stamps = columns.get(request.timestamp_column)
    if stamps is not None:
        _no_nulls(request.timestamp_column, "timestamp", stamps, problems)
    if not problems and key is not None and stamps is not None:
        _unique_keys(request, key, stamps, problems)
    if problems:
        raise GoldLoadError("; ".join(problems))
    table = pa.table(columns)
    if target is not None:
        table = table.select(target.names)
    # Rows in time order: each data file's timestamp statistics then let a window's scan skip it.
    return table.sort_by([(request.timestamp_column, "ascending"), (request.entity_column, "ascending")])


def _gold_type(name: str, column: pa.Array, problems: list[str]) -> pa.Array | None:
    """A new table's column as the gold layer keeps it: int64, float64, bool, string or UTC timestamps."""
    import pyarrow as pa

    kind = column.type
    if pa.types.is_integer(kind):
        return _cast(name, column, pa.int64(), problems)
    if pa.types.is_floating(kind):
        return _cast(name, column, pa.float64(), problems)
    if pa.types.is_boolean(kind):
        return column
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _cast(name, column, pa.string(), problems)
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return _timestamps(name, column, problems)
    if pa.types.is_null(kind):
        problems.append(f"column {name!r} has no values, so its type is unknown")
        return None
    problems.append(f"column {name!r} is {kind}; the gold layer keeps integers, floats, booleans, strings, timestamps")
    return None


def _to_table_type(name: str, column: pa.Array, kind: pa.DataType, problems: list[str]) -> pa.Array | None:
    """A column of an existing table, converted to the table's type when that loses nothing."""
    import pyarrow as pa

    if pa.types.is_timestamp(kind):
        return _timestamps(name, column, problems)
    if column.type == kind or pa.types.is_null(column.type):
        return column.cast(kind)
    widening = (
        (pa.types.is_integer(column.type) and (pa.types.is_integer(kind) or pa.types.is_floating(kind)))
        or (pa.types.is_floating(column.type) and pa.types.is_floating(kind))
        or (_is_text(column.type) and _is_text(kind))
    )
    if not widening:
        problems.append(f"column {name!r} is {column.type} in the file but {kind} in the table")
        return None
    return _cast(name, column, kind, problems)


def _is_text(kind: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _cast(name: str, column: pa.Array, kind: pa.DataType, problems: list[str]) -> pa.Array | None:
    import pyarrow as pa

    try:
        return column.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        problems.append(f"column {name!r} does not convert to {kind}: {_first_line(error)}")
        return None


def _timestamps(name: str, column: pa.Array, problems: list[str]) -> pa.Array | None:
    """Timestamps as microseconds in UTC: text in any ISO form, dates, naive times (taken as UTC)."""
    import pandas as pd
    import pyarrow as pa

    target = pa.timestamp("us", tz="UTC")
    kind = column.type
    if pa.types.is_timestamp(kind):
        if kind.tz is None:
            column = column.cast(pa.timestamp(kind.unit)).cast(pa.timestamp(kind.unit, tz="UTC"))
        return column.cast(target, safe=False)  # nanoseconds truncated: Iceberg keeps microseconds
    if pa.types.is_date(kind):
        return column.cast(pa.timestamp("s")).cast(pa.timestamp("s", tz="UTC")).cast(target)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        problems.append(f"timestamp column {name!r} is {kind}, not a time")
        return None
    text = pd.Series(column.to_pylist(), dtype="object")
    parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    bad = parsed.isna() & text.notna()
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        problems.append(
            f"timestamp column {name!r} has {int(bad.sum())} value(s) that are not times, "
            f"e.g. {str(text.iloc[row])[:40]!r} at row {row + 1}"
        )
        return None
    return pa.array(parsed.dt.as_unit("us"), type=target)


def _no_nulls(name: str, role: str, column: pa.Array, problems: list[str]) -> None:
    if column.null_count:
        first = column.is_null().to_pylist().index(True)
        problems.append(f"{role} column {name!r} is empty in {column.null_count} row(s), e.g. row {first + 1}")


def _unique_keys(request: LoadRequest, key: pa.Array, stamps: pa.Array, problems: list[str]) -> None:
    """No (entity, timestamp) pair twice: a point-in-time join could not say which row holds."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pairs = pa.table({"key": key, "at": stamps})
    counts = pairs.group_by(["key", "at"]).aggregate([("key", "count")])
    repeated = counts.filter(pc.greater(counts["key_count"], 1))
    if repeated.num_rows:
        example = repeated.slice(0, 1).to_pylist()[0]
        problems.append(
            f"{repeated.num_rows} ({request.entity_column}, {request.timestamp_column}) pair(s) appear more than "
            f"once, e.g. ({example['key']!r}, {example['at'].isoformat()})"
        )


def check_table_owner(existing: Any | None, request: LoadRequest) -> None:
    """A load changes an existing table only for the team that made it (a TeamRefusal, a 403, otherwise);
    a table no team's gold load made is every team's data, which only an admin changes."""
    from asgard.core.teams import TeamRefusal

    if existing is None or request.team is None or request.any_table:
        return
    owner = existing.properties.get(TEAM_PROPERTY)
    if owner is None:
        raise TeamRefusal(
            f"gold table {request.table!r} was not made by a team's gold load (every team reads it): only an "
            "admin loads into it; load your rows into a table of your own"
        )
    if owner != request.team:
        raise TeamRefusal(
            f"gold table {request.table!r} belongs to team {owner!r}: a load for team {request.team!r} may not "
            f"{request.mode} to it"
        )


def _table_key_problems(existing: Any, request: LoadRequest) -> list[str]:
    """An existing table keeps the entity and timestamp columns it was created with."""
    properties = existing.properties
    problems: list[str] = []
    for role, name, key in (
        ("entity", request.entity_column, ENTITY_PROPERTY),
        ("timestamp", request.timestamp_column, TIMESTAMP_PROPERTY),
    ):
        recorded = properties.get(key)
        if recorded and recorded != name:
            problems.append(f"table {request.table!r} is keyed by {role} column {recorded!r}, not {name!r}")
        elif not recorded and name not in existing.schema().column_names:
            problems.append(f"{role} column {name!r} is not in table {request.table!r}")
    return problems


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
