"""Where the rows to score come from: inline ``entities_df``, a gold-layer table, or Parquet files.

An entity source is split into partitions of whole pieces (Iceberg data files, Parquet row groups)
that mapped tasks score independently, and each partition is read in chunks of a fixed number of
rows, so memory does not grow with the input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asgard.core.errors import InputError
from asgard.core.storage import Location, checked_data_path
from asgard.core.xcom import XComRecord
from asgard.features import gold

if TYPE_CHECKING:
    import pyarrow as pa


# score_batch's form opens with these inline entities (the sample's first three customers), so that
# pressing Trigger scores the sample batch. Left as they are beside an entity_source, the source is
# what the user gave; any other entities_df beside a source is ambiguous, and refused.
SAMPLE_ENTITIES = {"customer_id": [1, 2, 3]}


class ScoringError(InputError):
    """A scoring request names something that does not exist or cannot be used (every problem listed)."""


@dataclass(frozen=True)
class Partition(XComRecord):
    """Contiguous pieces of a source (data file paths, or ``[path, row group]``) that one task scores."""

    index: int
    rows: int
    pieces: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class EntitySource:
    """Where the rows to score come from: inline ``entities_df``, a gold-layer table, or Parquet."""

    kind: str  # inline | table | parquet
    entities: dict[str, list[Any]] | None = None
    table: str | None = None
    snapshot_id: int | None = None
    path: str | None = None
    aws_conn_id: str = "aws_default"

    @classmethod
    def from_params(cls, params: dict[str, Any], aws_conn_id: str, *, team: str) -> EntitySource:
        """The entity source a request names; a path must lie in ``team``'s data roots."""
        inline, source = params.get("entities_df"), params.get("entity_source") or {}
        if source and inline == SAMPLE_ENTITIES:
            inline = None  # the form's default, left as it was
        if bool(inline) == bool(source):
            raise ScoringError("give exactly one of entities_df (inline rows) and entity_source (a table or a path)")
        if inline:
            lengths = {name: len(values) for name, values in inline.items()}
            if len(set(lengths.values())) != 1 or not next(iter(lengths.values())):
                raise ScoringError(f"entities_df columns must be non-empty and of equal length, got {lengths}")
            return cls("inline", entities=dict(inline), aws_conn_id=aws_conn_id)
        if source.get("table"):
            try:
                return cls("table", table=source["table"], snapshot_id=gold.snapshot_id(source["table"]))
            except gold.GoldLayerError as error:
                raise ScoringError(str(error)) from None
        # An absolute path, an s3:// URI or a path relative to the team's first data root.
        path = checked_data_path(str(source["path"]), what="entity_source path", team=team)
        return cls("parquet", path=path, aws_conn_id=aws_conn_id)

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EntitySource:
        return cls(**data)

    def describe(self) -> str:
        return {"inline": "entities_df", "table": f"gold table {self.table}", "parquet": str(self.path)}[self.kind]

    def columns(self) -> list[str]:
        if self.kind == "inline":
            return list(self.entities)
        if self.kind == "table":
            return list(gold.table_columns(self.table))
        return list(self._dataset().schema.names)

    def partitions(self, partition_rows: int) -> list[Partition]:
        """Contiguous pieces of about ``partition_rows`` rows (whole row groups / data files)."""
        if self.kind == "inline":
            return [Partition(0, len(next(iter(self.entities.values()))))]
        pieces: list[tuple[Any, int]] = []
        if self.kind == "table":
            for task in self._table_scan().plan_files():
                pieces.append((task.file.file_path, task.file.record_count))
        else:
            for fragment in self._dataset().get_fragments():
                metadata = fragment.metadata
                for group in range(metadata.num_row_groups):
                    pieces.append(([fragment.path, group], metadata.row_group(group).num_rows))
        partitions: list[Partition] = []
        current: list[Any] = []
        rows = 0
        for piece, count in pieces:
            current.append(piece)
            rows += count
            if rows >= partition_rows:
                partitions.append(Partition(len(partitions), rows, current))
                current, rows = [], 0
        if current or not partitions:
            partitions.append(Partition(len(partitions), rows, current))
        return partitions

    def read(self, partition: Partition, columns: list[str] | None, chunk_rows: int) -> Iterator[pa.Table]:
        """The partition's rows (``columns`` of them, all when None), ``chunk_rows`` at a time."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.kind == "inline":
            yield from _rechunked(pa.table(self.entities).to_batches(), columns, chunk_rows)
        elif self.kind == "table":
            from pyiceberg.io.pyarrow import ArrowScan

            scan = self._table_scan()
            wanted = set(partition.pieces)
            tasks = [task for task in scan.plan_files() if task.file.file_path in wanted]
            reader = ArrowScan(scan.table_metadata, scan.io, scan.projection(), scan.row_filter, scan.case_sensitive)
            yield from _rechunked(reader.to_record_batches(tasks), columns, chunk_rows)
        else:
            filesystem = Location(self.path, self.aws_conn_id).filesystem()
            by_file: dict[str, list[int]] = {}
            for path, group in partition.pieces:
                by_file.setdefault(path, []).append(group)
            for path, groups in by_file.items():
                with filesystem.open_input_file(path) as handle:
                    yield from _rechunked(
                        _row_group_batches(pq.ParquetFile(handle), groups, columns, chunk_rows), None, chunk_rows
                    )

    def schema(self, columns: list[str]) -> pa.Schema:
        """The Arrow types of ``columns`` as the source holds them (known before any row is read)."""
        import pyarrow as pa

        if self.kind == "inline":
            return pa.table(self.entities).select(columns).schema
        if self.kind == "table":
            from pyiceberg.io.pyarrow import schema_to_pyarrow

            full = schema_to_pyarrow(gold.load_table(self.table).schema(), include_field_ids=False)
        else:
            full = self._dataset().schema
        return pa.schema([full.field(name) for name in columns])

    def _table_scan(self):
        return gold.load_table(self.table).scan(snapshot_id=self.snapshot_id)

    def _dataset(self):
        import pyarrow.dataset as ds

        location = Location(self.path, self.aws_conn_id)
        try:
            return ds.dataset(location.path, format="parquet", filesystem=location.filesystem())
        except (FileNotFoundError, OSError) as error:
            raise ScoringError(f"entity_source path {self.path} cannot be read as Parquet: {error}") from None


def _row_group_batches(parquet, groups: list[int], columns: list[str] | None, chunk_rows: int):
    """Record batches of ``groups``, one reader per row group: a reader over many row groups keeps
    buffers of every group it passed (memory grew ~30 MB per 1M-row group), one per group does not."""
    for group in groups:
        yield from parquet.iter_batches(batch_size=chunk_rows, row_groups=[group], columns=columns)


def _rechunked(batches, columns: list[str] | None, chunk_rows: int) -> Iterator[pa.Table]:
    """Tables of exactly ``chunk_rows`` rows (the last one fewer), whatever sizes the reader produced."""
    import pyarrow as pa

    pending, rows = [], 0
    for batch in batches:
        if columns is not None:
            batch = batch.select(columns)
        pending.append(batch)
        rows += batch.num_rows
        while rows >= chunk_rows:
            table = pa.Table.from_batches(pending).combine_chunks()
            yield table.slice(0, chunk_rows)
            rest = table.slice(chunk_rows)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending).combine_chunks()
