"""``score_batch``'s plan: the checked job and its partitions, before anything is written.

The whole job: plan (here), score each partition (:mod:`asgard.scoring.batch`), publish one Parquet
file atomically (:mod:`asgard.scoring.publish`).

``plan_job`` checks everything a request can get wrong before anything is written (the model
version, the entity source and its keys, the feature views, the output location) and splits the
entity source into partitions of about ``partition_rows`` (Parquet row groups, Iceberg data files):
the DAG maps one task over each, so Celery or Kubernetes workers share the work. Each partition is
scored in chunks of ``chunk_rows`` (:mod:`asgard.scoring.scorer`, memory independent of its size) into a
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgard.core.storage import Location, checked_connection, checked_data_path, team_data_roots
from asgard.core.xcom import XComRecord
from asgard.registry.versions import FEATURE_VIEWS_TAG, ORIGIN_TAG, model_inputs, resolve_model_version, trusted
from asgard.scoring.sources import EntitySource, Partition, ScoringError

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

BATCH_PREDICTIONS_ALIAS = "asgard-batch-predictions"
FEATURE_SOURCES = ("feast", "input")
# An s3://bucket/key, an absolute path, or a path relative to the team's first data root.
OUTPUT_PATTERN = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S+|/\S+|(?!s3:)[^/\s]\S*)\.parquet$"


@dataclass(frozen=True)
class BatchJob(XComRecord):
    """A checked scoring job: the model version, where its rows and features come from, where it goes."""

    model_name: str
    model_version: str
    input_columns: list[str]
    feature_source: str  # feast | input
    feature_views: list[str]
    feature_refs: list[str]  # "view:feature" for each model input
    key_columns: list[str]  # the entity columns copied to the output as they are
    timestamp_column: str | None
    source: dict[str, Any]  # an EntitySource
    output_path: str
    aws_conn_id: str
    batch_id: str
    as_of: str
    scored_at: str
    chunk_rows: int
    rows: int

    @property
    def output(self) -> Location:
        return Location(self.output_path, self.aws_conn_id)

    @property
    def entity_source(self) -> EntitySource:
        return EntitySource.from_dict(self.source)


@dataclass(frozen=True)
class BatchPlan:
    job: BatchJob
    partitions: list[Partition]


def staging_location(output: Location, batch_id: str) -> Location:
    """Hidden (a leading dot: Parquet readers skip it) and beside the output, so a rename publishes it."""
    name = posixpath.basename(output.uri)
    return output.sibling(f".{name}.staging").child(batch_id)


def default_output_path(dag_id: str, run_id: str, *, team: str, settings: Any = None) -> str:
    """Where a run that names no output writes: a file of its own in the team's first data root
    (``<root>/<team>/predictions/<dag_id>/``), so no two runs overwrite each other."""
    from asgard.core.settings import get_settings

    root = team_data_roots(team, settings or get_settings())[0]
    return posixpath.join(root, "predictions", dag_id, f"{batch_id(dag_id, run_id)}.parquet")


def batch_id(dag_id: str, run_id: str) -> str:
    """The same for every try and re-run of one DAG run: what makes re-runs replace, not duplicate."""
    return hashlib.sha256(f"{dag_id}\n{run_id}".encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- plan
def plan_job(params: dict[str, Any], *, dag_id: str, run_id: str, as_of: datetime, team: str) -> BatchPlan:
    """The checked job and its partitions, for ``team`` (the model's: the run acts for it, and reads and
    writes in its data roots only); raises :class:`ScoringError` naming every problem."""
    from asgard.features import store as feature_store
    from asgard.hooks.mlflow import MlflowHook

    aws_conn_id = checked_connection(params.get("aws_conn_id") or "aws_default")
    hook = MlflowHook()
    ref = resolve_model_version(
        hook, params["model_name"], version=_text(params.get("model_version")), alias=params.get("alias")
    )
    if not trusted(ref.tags):
        origin = ref.tags.get(ORIGIN_TAG, "unknown")
        raise ScoringError(
            f"{ref.name} v{ref.version} was not trained by the platform (origin: {origin}): "
            "batch scoring deserializes a model in a worker, which the platform does only for its own models; "
            "send the rows to the version's serving endpoint instead"
        )
    inputs = model_inputs(hook, ref.name, ref.version)
    path = params.get("output_path") or default_output_path(dag_id, run_id, team=team)
    output = Location(checked_data_path(_check_output_path(path), what="output_path", team=team), aws_conn_id)
    source = EntitySource.from_params(params, aws_conn_id, team=team)
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
        views, refs, join_keys = _feature_plan(params, ref.feature_views, inputs, feature_store.open_store(), problems)
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
    job = BatchJob(
        model_name=ref.name,
        model_version=ref.version,
        input_columns=inputs,
        feature_source=feature_source,
        feature_views=views,
        feature_refs=refs,
        key_columns=key_columns,
        timestamp_column=timestamp_column,
        source=source.to_dict(),
        output_path=output.uri,
        aws_conn_id=aws_conn_id,
        batch_id=batch_id(dag_id, run_id),
        as_of=as_of.isoformat(),
        scored_at=datetime.now(UTC).isoformat(),
        chunk_rows=chunk_rows,
        rows=sum(part.rows for part in partitions),
    )
    log.info(
        "scoring %d rows of %s in %d partition(s) with %s v%s (%s features, as of %s) into %s",
        job.rows,
        source.describe(),
        len(partitions),
        ref.name,
        ref.version,
        f"Feast {', '.join(views)}" if feature_source == "feast" else "input",
        job.as_of,
        output.uri,
    )
    return BatchPlan(job, partitions)


def _feature_plan(
    params: dict[str, Any], model_views: list[str], inputs: list[str], store: FeatureStore, problems: list[str]
) -> tuple[list[str], list[str], list[str]]:
    """Feature views to read, their ``view:feature`` references the model needs, and their join keys."""
    views = list(params.get("feature_views") or model_views)
    if not views:
        problems.append(f"the model version names no feature views (tag {FEATURE_VIEWS_TAG}): give feature_views")
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
            f"output_path {path!r} is neither a local path (absolute, or relative to the team's data root) "
            "nor an s3://bucket/key URI ending in .parquet"
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


def recheck_job(job: BatchJob, params: dict[str, Any], dag_run: Any) -> None:
    """What ``plan`` checked, checked again where the job acts (a scoring task, the publish): its model is
    the conf's and the run's user's team's, its paths in that team's roots (a hand-off can be changed)."""
    from asgard.core.settings import get_settings
    from asgard.registry.ownership import recheck

    team = recheck(dag_run, params["model_name"], {"model_name": job.model_name})
    team = team or get_settings().default_team
    checked_data_path(job.output_path, what="output_path", team=team)
    if job.source.get("path"):
        checked_data_path(str(job.source["path"]), what="entity_source path", team=team)
