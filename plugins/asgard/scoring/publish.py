"""``score_batch``'s last step: the scored partitions become one Parquet file, at once.

A rename (local) or one copy or upload (S3: an object appears only when complete); a re-run of the
same DAG run finds its own output already published and replaces, never duplicates. A killed run
leaves only hidden staging files.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgard.core.storage import Location, partial_path
from asgard.core.xcom import XComRecord
from asgard.scoring.batch import ScoredPart
from asgard.scoring.plan import BatchJob, staging_location
from asgard.scoring.scorer import OUTPUT_METADATA_KEY

if TYPE_CHECKING:
    import pyarrow.fs as pafs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published(XComRecord):
    """The output ``score_batch`` published, and the Asset that announces it."""

    output_path: str
    asset_uri: str
    rows: int
    partitions: int


def publish(job: BatchJob, parts: list[ScoredPart]) -> Published:
    """Make the scored partitions the output in one step, then remove the staging files."""
    import pyarrow.parquet as pq

    output = job.output
    filesystem = output.filesystem()
    staging = staging_location(output, job.batch_id)
    parts = sorted(parts, key=lambda part: part.index)
    rows = sum(part.rows for part in parts)
    if _published_by(filesystem, output) == job.batch_id and not _all_exist(filesystem, parts):
        log.info("%s already holds this run's %d rows (an earlier try published it)", output.uri, rows)
    elif len(parts) == 1 and not output.is_s3:
        os.replace(parts[0].part, output.uri)
    elif len(parts) == 1:
        part = Location(parts[0].part, job.aws_conn_id)
        output.s3_hook().copy_object(part.key, output.key, part.bucket, output.bucket)
    else:
        _merge(filesystem, output, parts)
    written = pq.read_metadata(output.path, filesystem=filesystem).num_rows
    if written != rows:
        raise RuntimeError(f"{output.uri} holds {written} rows, the partitions scored {rows}")
    _remove_staging(filesystem, output, staging)
    log.info("published %d rows to %s", rows, output.uri)
    return Published(output.uri, output.asset_uri, rows, len(parts))


def announce(published: Published, job: BatchJob, events: Any) -> None:
    """Emit the output's Asset (through the batch-predictions alias): monitoring finds the window's batches by it."""
    from airflow.sdk import Asset

    events.add(
        Asset(published.asset_uri),
        extra={"rows": published.rows, "model_name": job.model_name, "model_version": job.model_version},
    )


def _merge(filesystem: pafs.FileSystem, output: Location, parts: list[ScoredPart]) -> None:
    """Concatenate the parts' row groups into one file (written beside the target, then renamed/uploaded)."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="asgard-publish-") as scratch:
        local = Path(scratch) / "output.parquet" if output.is_s3 else partial_path(output.uri)
        try:
            writer = None
            for part in parts:
                location = Location(part.part, output.aws_conn_id)
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


def _published_by(filesystem: pafs.FileSystem, output: Location) -> str | None:
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(output.path, filesystem=filesystem).metadata or {}
    except (FileNotFoundError, OSError):
        return None
    value = metadata.get(OUTPUT_METADATA_KEY)
    return value.decode() if value else None


def _all_exist(filesystem: pafs.FileSystem, parts: list[ScoredPart]) -> bool:
    import pyarrow.fs as pafs

    paths = [Location(part.part).path for part in parts]
    return all(info.type != pafs.FileType.NotFound for info in filesystem.get_file_info(paths))


def _remove_staging(filesystem: pafs.FileSystem, output: Location, staging: Location) -> None:
    if output.is_s3:
        hook = output.s3_hook()
        keys = hook.list_keys(bucket_name=staging.bucket, prefix=f"{staging.key}/")
        if keys:
            hook.delete_objects(staging.bucket, keys)
        return
    shutil.rmtree(staging.uri, ignore_errors=True)
    parent = Path(staging.uri).parent
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
