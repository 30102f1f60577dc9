"""``score_batch``'s mapped task: score one partition into its staging file beside the output.

Each partition is scored in chunks of ``chunk_rows`` (:mod:`asgard.scoring.scorer`: memory
independent of its size) into a hidden staging file named after the run, replaced whole on a retry;
:mod:`asgard.scoring.publish` then makes the output appear at once.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from asgard.core.storage import partial_path
from asgard.core.xcom import XComRecord
from asgard.registry.versions import load_platform_model
from asgard.scoring.plan import BatchJob, staging_location
from asgard.scoring.scorer import OUTPUT_METADATA_KEY, Chunk, Scorer, score_stream
from asgard.scoring.sources import EntitySource, Partition

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

ENTITY_TIMESTAMP = "event_timestamp"
ROW_NUMBER = "__asgard_row"


@dataclass(frozen=True)
class ScoredPart(XComRecord):
    """One partition's scored rows, in its staging file."""

    index: int
    rows: int
    part: str


def score_partition(job: BatchJob, partition: Partition) -> ScoredPart:
    """Score one partition into its staging file (replaced whole on a retry); its path and row count."""
    from asgard.hooks.mlflow import MlflowHook

    hook = MlflowHook()
    model = load_platform_model(hook, job.model_name, job.model_version)
    scorer = Scorer.for_model(model, job.input_columns, job.model_name, job.model_version)
    source = job.entity_source
    output = job.output
    part = staging_location(output, job.batch_id).child(f"part-{partition.index:05d}.parquet")
    read_columns = None if job.feature_source == "input" else job.key_columns
    tables = source.read(partition, read_columns, job.chunk_rows)
    chunks = _with_features(job, tables) if job.feature_source == "feast" else _split_inputs(tables, job.key_columns)

    with tempfile.TemporaryDirectory(prefix="asgard-score-") as scratch:
        local = Path(scratch) / "part.parquet" if output.is_s3 else partial_path(part.uri)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            rows = _write_scored(scorer, chunks, local, job, partition, source)
            if output.is_s3:
                output.s3_hook().load_file(str(local), part.key, bucket_name=part.bucket, replace=True)
            else:
                os.replace(local, part.uri)
        finally:
            local.unlink(missing_ok=True)
    log.info("partition %d: %d rows scored into %s", partition.index, rows, part.uri)
    return ScoredPart(partition.index, rows, part.uri)


def _write_scored(
    scorer: Scorer, chunks: Iterator[Chunk], path: Path, job: BatchJob, partition: Partition, source: EntitySource
) -> int:
    import pyarrow.parquet as pq

    schema = scorer.output_schema(source.schema(job.key_columns))
    schema = schema.with_metadata({OUTPUT_METADATA_KEY: job.batch_id.encode()})
    with pq.ParquetWriter(str(path), schema, compression="zstd") as writer:
        return score_stream(
            scorer,
            chunks,
            writer,
            id_prefix=f"{job.batch_id}-{partition.index}",
            scored_at=datetime.fromisoformat(job.scored_at),
            total_rows=partition.rows,
        )


def _split_inputs(tables: Iterator[pa.Table], key_columns: list[str]) -> Iterator[Chunk]:
    for table in tables:
        yield Chunk(table.select(key_columns), table.to_pandas())


def _with_features(job: BatchJob, tables: Iterator[pa.Table]) -> Iterator[Chunk]:
    """Each chunk of entity keys with its features as of ``as_of`` (or each row's timestamp), in row order."""
    import numpy as np
    import pandas as pd

    from asgard.features import training_sets
    from asgard.features.store import open_store

    store = open_store()
    join_keys = [key for key in job.key_columns if key != job.timestamp_column]
    as_of = pd.Timestamp(job.as_of)
    for table in tables:
        entity = table.select(join_keys).to_pandas()
        entity[ROW_NUMBER] = np.arange(len(entity))
        if job.timestamp_column:
            entity[ENTITY_TIMESTAMP] = pd.to_datetime(table.column(job.timestamp_column).to_pandas(), utc=True)
        else:
            entity[ENTITY_TIMESTAMP] = as_of
        # The training sets' join (out of core on the embedded offline store): features as the model saw them.
        joined = training_sets.get_historical_features(store, entity, list(job.feature_refs), purpose="scored rows")
        joined = joined.sort_values(ROW_NUMBER, kind="stable").reset_index(drop=True)
        if len(joined) != len(entity):
            raise RuntimeError(f"Feast returned {len(joined)} rows for {len(entity)} entity rows")
        yield Chunk(table, joined)
