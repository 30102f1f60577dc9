"""What the ``score_batch`` tasks do: plan the job, score partitions, publish one Parquet file atomically.

``plan_job`` checks everything a request can get wrong before anything is written (the model
version, the entity source and its keys, the feature views, the output location) and splits the
entity source into partitions of about ``partition_rows`` (Parquet row groups, Iceberg data files):
the DAG maps one task over each, so Celery or Kubernetes workers share the work. Each partition is
scored in chunks of ``chunk_rows`` (:mod:`asgard.scoring`, memory independent of its size) into a
staging file beside the output, named after the run; ``publish`` then makes the output appear at
once: a rename (local), or one copy or upload (S3: an object appears only when complete). A killed
run leaves only hidden staging files; a re-run rewrites its own partitions and replaces the output.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgard import gold
from asgard.errors import InputError
from asgard.scoring import OUTPUT_METADATA_KEY, Chunk, Scorer, score_stream

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs
    from feast import FeatureStore

log = logging.getLogger(__name__)

BATCH_PREDICTIONS_ALIAS = "asgard-batch-predictions"
FEATURE_VIEWS_TAG = "feast.feature_views"
ENTITY_TIMESTAMP = "event_timestamp"
ROW_NUMBER = "__asgard_row"
FEATURE_SOURCES = ("feast", "input")
OUTPUT_PATTERN = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S+|/\S+)\.parquet$"


class ScoringError(InputError):
    """A scoring request names something that does not exist or cannot be used (every problem listed)."""


# --------------------------------------------------------------------------- where files live
@dataclass(frozen=True)
class Location:
    """A local path or an ``s3://bucket/key`` URI, read through a pyarrow filesystem."""

    uri: str
    aws_conn_id: str = "aws_default"

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def bucket(self) -> str:
        return self.uri.removeprefix("s3://").split("/", 1)[0]

    @property
    def key(self) -> str:
        return self.uri.removeprefix("s3://").split("/", 1)[1]

    @property
    def path(self) -> str:
        """The path within :meth:`filesystem` (``bucket/key`` on S3)."""
        return self.uri.removeprefix("s3://") if self.is_s3 else self.uri

    @property
    def asset_uri(self) -> str:
        return self.uri if self.is_s3 else f"file://{self.uri}"

    def child(self, *names: str) -> Location:
        return Location(posixpath.join(self.uri, *names), self.aws_conn_id)

    def sibling(self, name: str) -> Location:
        return Location(posixpath.join(posixpath.dirname(self.uri), name), self.aws_conn_id)

    def filesystem(self) -> pafs.FileSystem:
        import pyarrow.fs as pafs

        return s3_filesystem(self.aws_conn_id) if self.is_s3 else pafs.LocalFileSystem()

    def s3_hook(self):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=self.aws_conn_id)


def s3_filesystem(aws_conn_id: str) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem with the credentials, region and endpoint of an Airflow AWS connection."""
    from urllib.parse import urlparse

    import pyarrow.fs as pafs
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=aws_conn_id)
    credentials = hook.get_credentials()
    options: dict[str, Any] = {
        "access_key": credentials.access_key,
        "secret_key": credentials.secret_key,
        "session_token": credentials.token,
        "region": hook.conn_region_name or "us-east-1",
    }
    endpoint = hook.conn_config.endpoint_url
    if endpoint:
        parsed = urlparse(endpoint)
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    return pafs.S3FileSystem(**options)


def staging_location(output: Location, batch_id: str) -> Location:
    """Hidden (a leading dot: Parquet readers skip it) and beside the output, so a rename publishes it."""
    name = posixpath.basename(output.uri)
    return output.sibling(f".{name}.staging").child(batch_id)


def batch_id(dag_id: str, run_id: str) -> str:
    """The same for every try and re-run of one DAG run: what makes re-runs replace, not duplicate."""
    return hashlib.sha256(f"{dag_id}\n{run_id}".encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- plan
def plan_job(params: dict[str, Any], *, dag_id: str, run_id: str, as_of: datetime) -> dict[str, Any]:
    """The checked job and its partitions; raises :class:`ScoringError` naming every problem."""
    from asgard import features
    from asgard.hooks.mlflow import MlflowHook
    from asgard.serving_image import resolve_model_version

    aws_conn_id = params.get("aws_conn_id") or "aws_default"
    output = Location(_check_output_path(params["output_path"]), aws_conn_id)
    hook = MlflowHook()
    ref = resolve_model_version(
        hook, params["model_name"], version=_text(params.get("model_version")), alias=params.get("alias")
    )
    inputs = model_inputs(hook, ref.name, ref.version)
    source = EntitySource.from_params(params, aws_conn_id)
    columns = source.columns()
    feature_source = params.get("feature_source") or "feast"
    if params.get("as_of"):
        as_of = datetime.fromisoformat(str(params["as_of"]).replace("Z", "+00:00"))
    as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)

    problems: list[str] = []
    timestamp_column = (params.get("entity_source") or {}).get("timestamp_column")
    if timestamp_column and timestamp_column not in columns:
        problems.append(f"the entities have no timestamp column {timestamp_column!r} ({', '.join(columns)})")
    if feature_source == "feast":
        views, refs, join_keys = _feature_plan(params, ref.tags, inputs, features.open_store(), problems)
        missing_keys = [key for key in join_keys if key not in columns]
        if missing_keys:
            problems.append(
                f"the entities lack the entity key(s) {', '.join(missing_keys)} of feature view(s) {', '.join(views)} "
                f"(they have {', '.join(columns) or 'no columns'})"
            )
        key_columns = join_keys + ([timestamp_column] if timestamp_column and timestamp_column not in join_keys else [])
    else:
        views, refs = [], []
        missing = [column for column in inputs if column not in columns]
        if missing:
            problems.append(
                f"feature_source 'input' but the entities lack the model's input column(s) {', '.join(missing)}"
            )
        key_columns = [column for column in columns if column not in inputs]
    if problems:
        raise ScoringError("; ".join(problems))
    _check_writable(output)

    chunk_rows = int(params.get("chunk_rows") or 100_000)
    partitions = source.partitions(int(params.get("partition_rows") or 1_000_000))
    job = {
        "model_name": ref.name,
        "model_version": ref.version,
        "input_columns": inputs,
        "feature_source": feature_source,
        "feature_views": views,
        "feature_refs": refs,
        "key_columns": key_columns,
        "timestamp_column": timestamp_column,
        "source": source.as_dict(),
        "output_path": output.uri,
        "aws_conn_id": aws_conn_id,
        "batch_id": batch_id(dag_id, run_id),
        "as_of": as_of.isoformat(),
        "scored_at": datetime.now(UTC).isoformat(),
        "chunk_rows": chunk_rows,
        "rows": sum(part["rows"] for part in partitions),
    }
    log.info(
        "scoring %d rows of %s in %d partition(s) with %s v%s (%s features, as of %s) into %s",
        job["rows"],
        source.describe(),
        len(partitions),
        ref.name,
        ref.version,
        f"Feast {', '.join(views)}" if feature_source == "feast" else "input",
        job["as_of"],
        output.uri,
    )
    return {"job": job, "partitions": partitions}


def model_inputs(hook: Any, model_name: str, version: str) -> list[str]:
    """The input columns of a registered version, from its signature."""
    import mlflow

    with hook.using_server():
        signature = mlflow.models.get_model_info(f"models:/{model_name}/{version}").signature
    if signature is None or not signature.inputs.input_names():
        raise ScoringError(f"{model_name} v{version} has no input signature: its input columns are unknown")
    return list(signature.inputs.input_names())


def _feature_plan(
    params: dict[str, Any], tags: dict[str, str], inputs: list[str], store: FeatureStore, problems: list[str]
) -> tuple[list[str], list[str], list[str]]:
    """Feature views to read, their ``view:feature`` references the model needs, and their join keys."""
    model_views = [name for name in (tags.get(FEATURE_VIEWS_TAG) or "").split(",") if name]
    views = list(params.get("feature_views") or model_views)
    if not views:
        problems.append("the model version names no feature views (tag feast.feature_views): give feature_views")
        return [], [], []
    if model_views:
        foreign = [name for name in views if name not in model_views]
        if foreign:
            problems.append(
                f"feature view(s) {', '.join(foreign)} not in the model's feature list "
                f"(it was trained on {', '.join(model_views)})"
            )
    registered = {view.name: view for view in store.list_feature_views()}
    unknown = [name for name in views if name not in registered]
    if unknown:
        problems.append(
            f"unknown feature view(s) {', '.join(unknown)}; registered: {', '.join(sorted(registered)) or 'none'}"
        )
    known = [registered[name] for name in views if name in registered]
    refs, covered = [], set()
    for view in known:
        for feature in view.features:
            if feature.name in inputs and feature.name not in covered:
                refs.append(f"{view.name}:{feature.name}")
                covered.add(feature.name)
    uncovered = [column for column in inputs if column not in covered]
    if known and uncovered:
        problems.append(
            f"the model's input column(s) {', '.join(uncovered)} are in none of the feature views {', '.join(views)}"
        )
    join_keys = list(dict.fromkeys(column.name for view in known for column in view.entity_columns))
    return views, refs, join_keys


def _check_output_path(path: str) -> str:
    if not re.match(OUTPUT_PATTERN, path or ""):
        raise ScoringError(
            f"output_path {path!r} is neither an absolute local path nor an s3://bucket/key URI ending in .parquet"
        )
    return path if path.startswith("s3://") else os.path.normpath(path)


def _check_writable(output: Location) -> None:
    """The output's folder (or bucket) exists or can be made, and takes a file: checked before any work."""
    if output.is_s3:
        hook = output.s3_hook()
        if not hook.check_for_bucket(output.bucket):
            raise ScoringError(f"output_path {output.uri}: bucket {output.bucket!r} does not exist or is not reachable")
        probe = staging_location(output, "probe").child(f"{os.getpid()}.txt")
        try:
            hook.load_string("probe", probe.key, bucket_name=output.bucket, replace=True)
            hook.delete_objects(output.bucket, [probe.key])
        except Exception as error:
            raise ScoringError(f"output_path {output.uri} is not writable: {error}") from None
        return
    target = Path(output.uri)
    if target.is_dir():
        raise ScoringError(f"output_path {output.uri} is a directory; give a file name ending in .parquet")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.probe"):
            pass
    except OSError as error:
        raise ScoringError(f"output_path {output.uri} is not writable: {error.strerror or error}") from None


def _text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


# --------------------------------------------------------------------------- entity sources
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
    def from_params(cls, params: dict[str, Any], aws_conn_id: str) -> EntitySource:
        inline, source = params.get("entities_df"), params.get("entity_source") or {}
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
        path = str(source["path"])
        if not (path.startswith("s3://") or path.startswith("/")):
            raise ScoringError(f"entity_source path {path!r} is neither an absolute local path nor an s3:// URI")
        return cls("parquet", path=path, aws_conn_id=aws_conn_id)

    def as_dict(self) -> dict[str, Any]:
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

    def partitions(self, partition_rows: int) -> list[dict[str, Any]]:
        """Contiguous pieces of about ``partition_rows`` rows (whole row groups / data files)."""
        if self.kind == "inline":
            return [{"index": 0, "rows": len(next(iter(self.entities.values())))}]
        pieces: list[tuple[Any, int]] = []
        if self.kind == "table":
            for task in self._table_scan().plan_files():
                pieces.append((task.file.file_path, task.file.record_count))
        else:
            for fragment in self._dataset().get_fragments():
                metadata = fragment.metadata
                for group in range(metadata.num_row_groups):
                    pieces.append(([fragment.path, group], metadata.row_group(group).num_rows))
        partitions: list[dict[str, Any]] = []
        current: list[Any] = []
        rows = 0
        for piece, count in pieces:
            current.append(piece)
            rows += count
            if rows >= partition_rows:
                partitions.append({"index": len(partitions), "rows": rows, "pieces": current})
                current, rows = [], 0
        if current or not partitions:
            partitions.append({"index": len(partitions), "rows": rows, "pieces": current})
        return partitions

    def read(self, partition: dict[str, Any], columns: list[str] | None, chunk_rows: int) -> Iterator[pa.Table]:
        """The partition's rows (``columns`` of them, all when None), ``chunk_rows`` at a time."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.kind == "inline":
            yield from _rechunked(pa.table(self.entities).to_batches(), columns, chunk_rows)
        elif self.kind == "table":
            from pyiceberg.io.pyarrow import ArrowScan

            scan = self._table_scan()
            wanted = set(partition["pieces"])
            tasks = [task for task in scan.plan_files() if task.file.file_path in wanted]
            reader = ArrowScan(scan.table_metadata, scan.io, scan.projection(), scan.row_filter, scan.case_sensitive)
            yield from _rechunked(reader.to_record_batches(tasks), columns, chunk_rows)
        else:
            filesystem = Location(self.path, self.aws_conn_id).filesystem()
            by_file: dict[str, list[int]] = {}
            for path, group in partition["pieces"]:
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


# --------------------------------------------------------------------------- score one partition
def score_partition(job: dict[str, Any], partition: dict[str, Any]) -> dict[str, Any]:
    """Score one partition into its staging file (replaced whole on a retry); its path and row count."""
    from asgard.hooks.mlflow import MlflowHook

    hook = MlflowHook()
    model = hook.load_model(f"models:/{job['model_name']}/{job['model_version']}")
    scorer = Scorer.for_model(model, job["input_columns"], job["model_name"], job["model_version"])
    source = EntitySource.from_dict(job["source"])
    output = Location(job["output_path"], job["aws_conn_id"])
    part = staging_location(output, job["batch_id"]).child(f"part-{partition['index']:05d}.parquet")
    key_columns = job["key_columns"]
    read_columns = None if job["feature_source"] == "input" else key_columns
    tables = source.read(partition, read_columns, job["chunk_rows"])
    chunks = _with_features(job, tables) if job["feature_source"] == "feast" else _split_inputs(tables, key_columns)

    with tempfile.TemporaryDirectory(prefix="asgard-score-") as scratch:
        local = Path(scratch) / "part.parquet" if output.is_s3 else _partial(part.uri)
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        try:
            rows = _write_scored(scorer, chunks, local, job, partition, key_columns, source)
            if output.is_s3:
                output.s3_hook().load_file(str(local), part.key, bucket_name=part.bucket, replace=True)
            else:
                os.replace(local, part.uri)
        finally:
            Path(local).unlink(missing_ok=True)
    log.info("partition %d: %d rows scored into %s", partition["index"], rows, part.uri)
    return {"index": partition["index"], "rows": rows, "part": part.uri}


def _write_scored(scorer, chunks, path, job, partition, key_columns, source) -> int:
    import pyarrow.parquet as pq

    schema = scorer.output_schema(source.schema(key_columns))
    schema = schema.with_metadata({OUTPUT_METADATA_KEY: job["batch_id"].encode()})
    with pq.ParquetWriter(str(path), schema, compression="zstd") as writer:
        return score_stream(
            scorer,
            chunks,
            writer,
            id_prefix=f"{job['batch_id']}-{partition['index']}",
            scored_at=datetime.fromisoformat(job["scored_at"]),
            total_rows=partition["rows"],
        )


def _partial(path: str | Path) -> Path:
    """A hidden temporary name beside ``path``: renamed onto it when whole, never read as output."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def _split_inputs(tables: Iterator[pa.Table], key_columns: list[str]) -> Iterator[Chunk]:
    for table in tables:
        yield Chunk(table.select(key_columns), table.to_pandas())


def _with_features(job: dict[str, Any], tables: Iterator[pa.Table]) -> Iterator[Chunk]:
    """Each chunk of entity keys with its features as of ``as_of`` (or each row's timestamp), in row order."""
    import numpy as np
    import pandas as pd

    from asgard import features

    store = features.open_store()
    join_keys = [key for key in job["key_columns"] if key != job.get("timestamp_column")]
    as_of = pd.Timestamp(job["as_of"])
    for table in tables:
        entity = table.select(join_keys).to_pandas()
        entity[ROW_NUMBER] = np.arange(len(entity))
        if job.get("timestamp_column"):
            entity[ENTITY_TIMESTAMP] = pd.to_datetime(table.column(job["timestamp_column"]).to_pandas(), utc=True)
        else:
            entity[ENTITY_TIMESTAMP] = as_of
        joined = store.get_historical_features(entity_df=entity, features=job["feature_refs"]).to_df()
        joined = joined.sort_values(ROW_NUMBER, kind="stable").reset_index(drop=True)
        if len(joined) != len(entity):
            raise RuntimeError(f"Feast returned {len(joined)} rows for {len(entity)} entity rows")
        yield Chunk(table, joined)


# --------------------------------------------------------------------------- publish
def publish(job: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Make the scored partitions the output in one step, then remove the staging files."""
    import pyarrow.parquet as pq

    output = Location(job["output_path"], job["aws_conn_id"])
    filesystem = output.filesystem()
    staging = staging_location(output, job["batch_id"])
    parts = sorted(parts, key=lambda part: part["index"])
    rows = sum(part["rows"] for part in parts)
    if _published_by(filesystem, output) == job["batch_id"] and not _all_exist(filesystem, parts):
        log.info("%s already holds this run's %d rows (an earlier try published it)", output.uri, rows)
    elif len(parts) == 1 and not output.is_s3:
        os.replace(parts[0]["part"], output.uri)
    elif len(parts) == 1:
        part = Location(parts[0]["part"], job["aws_conn_id"])
        output.s3_hook().copy_object(part.key, output.key, part.bucket, output.bucket)
    else:
        _merge(filesystem, output, parts)
    written = pq.read_metadata(output.path, filesystem=filesystem).num_rows
    if written != rows:
        raise RuntimeError(f"{output.uri} holds {written} rows, the partitions scored {rows}")
    _remove_staging(filesystem, output, staging)
    log.info("published %d rows to %s", rows, output.uri)
    return {"output_path": output.uri, "asset_uri": output.asset_uri, "rows": rows, "partitions": len(parts)}


def _merge(filesystem, output: Location, parts: list[dict[str, Any]]) -> None:
    """Concatenate the parts' row groups into one file (written beside the target, then renamed/uploaded)."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="asgard-publish-") as scratch:
        local = Path(scratch) / "output.parquet" if output.is_s3 else _partial(output.uri)
        try:
            writer = None
            for part in parts:
                location = Location(part["part"], output.aws_conn_id)
                with filesystem.open_input_file(location.path) as handle:
                    reader = pq.ParquetFile(handle)
                    if writer is None:
                        writer = pq.ParquetWriter(str(local), reader.schema_arrow, compression="zstd")
                    for group in range(reader.num_row_groups):
                        writer.write_table(reader.read_row_group(group))
            writer.close()
            if output.is_s3:
                output.s3_hook().load_file(str(local), output.key, bucket_name=output.bucket, replace=True)
            else:
                os.replace(local, output.uri)
        finally:
            local.unlink(missing_ok=True)


def _published_by(filesystem, output: Location) -> str | None:
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(output.path, filesystem=filesystem).metadata or {}
    except (FileNotFoundError, OSError):
        return None
    value = metadata.get(OUTPUT_METADATA_KEY)
    return value.decode() if value else None


def _all_exist(filesystem, parts: list[dict[str, Any]]) -> bool:
    import pyarrow.fs as pafs

    paths = [Location(part["part"]).path for part in parts]
    return all(info.type != pafs.FileType.NotFound for info in filesystem.get_file_info(paths))


def _remove_staging(filesystem, output: Location, staging: Location) -> None:
    if output.is_s3:
        hook = output.s3_hook()
        keys = hook.list_keys(bucket_name=staging.bucket, prefix=f"{staging.key}/")
        if keys:
            hook.delete_objects(staging.bucket, keys)
        return
    import shutil

    shutil.rmtree(staging.uri, ignore_errors=True)
    parent = Path(staging.uri).parent
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
