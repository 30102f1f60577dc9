"""Batch scoring against a real MLflow registry (SQLite store), real Feast over a real Iceberg gold layer,
real Parquet files, and S3 through the amazon provider's connection to moto's S3 server.

The tasks' functions run here as the DAG runs them: plan, every partition, publish.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asgard.core.errors import InputError
from asgard.features import gold
from asgard.features import store as feature_store
from asgard.registry.versions import prepare_features
from asgard.scoring.batch import score_partition
from asgard.scoring.plan import plan_job
from asgard.scoring.publish import publish
from asgard.scoring.scorer import PREDICTION
from asgard.scoring.sources import SAMPLE_ENTITIES, ScoringError
from conftest import TEST_DATA_BUCKET, TEST_DATA_ROOTS, sqlite_mlflow_home
from sample_data.gold_layer import FEATURE_TABLE, GoldSpec, write_gold_layer
from sample_data.models import SAMPLE_FEATURES, register_sample_model

REPO = Path(__file__).resolve().parents[2]
SPEC = GoldSpec(customers=400, days=3, end="2026-11-01T00:00:00+00:00", seed=11)
AS_OF = SPEC.end_time
MODEL = "batch_churn"
TEAM = "default"  # the model's (registered without a team): its runs read and write in <root>/default/


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """ASGARD_HOME with a small gold layer, the feature repo applied, and one registered model version."""
    path = tmp_path_factory.mktemp("scoring-home")
    with sqlite_mlflow_home(path) as tracking_uri:
        write_gold_layer(SPEC, log=lambda _: None)
        feature_store.apply_repo()
        version = register_sample_model(tracking_uri, MODEL, customers=2000, features=SAMPLE_FEATURES)
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        client.set_model_version_tag(MODEL, version, "feast.feature_views", "customer_features")
        client.set_registered_model_alias(MODEL, "champion", version)
        yield {"path": path, "tracking_uri": tracking_uri, "version": version}


@pytest.fixture(scope="module")
def model(home):
    from asgard.hooks.mlflow import MlflowHook

    return MlflowHook().load_model(f"models:/{MODEL}/{home['version']}")


def run_job(params: dict, run_id: str = "manual__1") -> dict:
    """plan -> every partition -> publish, as the DAG's tasks run them (their results as XCom holds them)."""
    planned = plan_job(params, dag_id="score_batch", run_id=run_id, as_of=AS_OF, team=TEAM)
    parts = [score_partition(planned.job, partition) for partition in planned.partitions]
    return {
        "job": planned.job.to_dict(),
        "partitions": [partition.to_dict() for partition in planned.partitions],
        "published": publish(planned.job, parts).to_dict(),
    }


def expected(model, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The model's own in-process predictions on these rows."""
    x = prepare_features(frame[SAMPLE_FEATURES])
    return model.predict(x), model.predict_proba(x)


def assert_scored_like_the_model(output: pd.DataFrame, model, frame: pd.DataFrame, version: str) -> None:
    labels, probabilities = expected(model, frame)
    assert len(output) == len(frame)
    np.testing.assert_array_equal(output[PREDICTION].to_numpy(), labels)
    for index, label in enumerate(model.classes_):
        np.testing.assert_array_equal(output[f"probability_{label}"].to_numpy(), probabilities[:, index])
    assert set(output["model_name"]) == {MODEL} and set(output["model_version"]) == {version}
    assert output["prediction_id"].is_unique
    assert output["scored_at"].nunique() == 1


def feature_rows(rows: int, seed: int = 3) -> pd.DataFrame:
    """Entities that already carry the model's features (feature_source 'input')."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "customer_id": np.arange(rows, dtype=np.int64),
            "total_purchases": rng.integers(0, 60, rows),
            "avg_purchase_value": np.where(rng.random(rows) < 0.05, np.nan, rng.gamma(2.0, 40.0, rows)),
            "days_since_last_purchase": rng.integers(0, 200, rows),
            "customer_lifetime_value": rng.gamma(2.0, 800.0, rows),
            "account_age_days": rng.integers(30, 2000, rows),
            "support_tickets_count": rng.integers(0, 8, rows),
            "segment": rng.choice(["consumer", "smb", "enterprise"], rows),
        }
    )


def visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# --------------------------------------------------------------------------- results
def test_inline_entities_get_feast_features_as_of_and_the_models_exact_predictions(home, model, data_folder):
    ids = [5, 1, 42, 17, 399, 3, 250]
    out = data_folder / "batch.parquet"
    result = run_job(
        {
            "model_name": MODEL,
            "model_version": home["version"],
            "feature_views": ["customer_features"],
            "entities_df": {"customer_id": ids},
            "output_path": str(out),
        }
    )
    scored = pd.read_parquet(out)
    assert scored["customer_id"].tolist() == ids  # the request's order
    snapshot = gold.load_table(FEATURE_TABLE).scan().to_pandas()
    snapshot = snapshot[snapshot["event_timestamp"] <= pd.Timestamp(AS_OF)]
    newest = (
        snapshot.sort_values("event_timestamp").drop_duplicates("customer_id", keep="last").set_index("customer_id")
    )
    assert_scored_like_the_model(scored, model, newest.loc[ids].reset_index(), home["version"])
    assert list(scored.columns[:2]) == ["customer_id", PREDICTION]
    assert result["published"] == {
        "output_path": str(out),
        "asset_uri": f"file://{out}",
        "rows": len(ids),
        "partitions": 1,
    }
    assert sorted(path.name for path in data_folder.iterdir()) == ["batch.parquet"]  # staging removed


def test_alias_and_gold_table_source_score_every_row_as_of_its_own_timestamp(home, model, data_folder):
    out = data_folder / "table.parquet"
    result = run_job(
        {
            "model_name": MODEL,
            "alias": "champion",
            # As a run's params arrive from the form: its sample entities left as they were, a source given.
            "entities_df": SAMPLE_ENTITIES,
            "entity_source": {"table": FEATURE_TABLE, "timestamp_column": "event_timestamp"},
            "output_path": str(out),
            "partition_rows": SPEC.customers,  # one partition per daily data file
            "chunk_rows": 150,
        }
    )
    assert len(result["partitions"]) == SPEC.days
    scored = pd.read_parquet(out)
    table = gold.load_table(FEATURE_TABLE).scan().to_pandas()
    merged = scored.merge(table, on=["customer_id", "event_timestamp"], validate="one_to_one")
    assert_scored_like_the_model(merged, model, merged, home["version"])
    assert list(scored.columns[:2]) == ["customer_id", "event_timestamp"]


def test_large_parquet_input_is_partitioned_chunked_and_equals_one_in_memory_predict(home, model, data_folder):
    frame = feature_rows(5000)
    source = data_folder / "entities.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), source, row_group_size=1000)
    out = data_folder / "out" / "scores.parquet"
    result = run_job(
        {
            "model_name": MODEL,
            "model_version": int(home["version"]),
            "entity_source": {"path": str(source)},
            "feature_source": "input",
            "output_path": str(out),
            "partition_rows": 2000,
            "chunk_rows": 700,
        }
    )
    assert [part["rows"] for part in result["partitions"]] == [2000, 2000, 1000]
    scored = pd.read_parquet(out)
    assert scored["customer_id"].tolist() == frame["customer_id"].tolist()
    assert_scored_like_the_model(scored, model, frame, home["version"])
    assert visible_files(out.parent) == ["scores.parquet"] and len(list(out.parent.iterdir())) == 1  # staging gone

    # The same run again (a cleared DAG run): replaced, never duplicated, same prediction ids.
    again = run_job(
        {
            "model_name": MODEL,
            "model_version": home["version"],
            "entity_source": {"path": str(source)},
            "feature_source": "input",
            "output_path": str(out),
            "partition_rows": 2000,
        }
    )
    rescored = pd.read_parquet(out)
    assert again["published"]["rows"] == len(frame) == len(rescored)
    assert rescored["prediction_id"].tolist() == scored["prediction_id"].tolist()


KILLED_PARTITION = """
import json, sys
from asgard.scoring.batch import score_partition
from asgard.scoring.plan import BatchJob
from asgard.scoring.sources import Partition
planned = json.load(open(sys.argv[1]))
score_partition(BatchJob.from_dict(planned["job"]), Partition.from_dict(planned["partitions"][int(sys.argv[2])]))
"""


def test_a_run_killed_mid_partition_leaves_no_visible_output_and_a_rerun_completes_once(home, model, data_folder):
    frame = feature_rows(200_000, seed=5)
    source = data_folder / "big.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), source, row_group_size=50_000)
    out_dir = data_folder / "predictions"
    params = {
        "model_name": MODEL,
        "model_version": home["version"],
        "entity_source": {"path": str(source)},
        "feature_source": "input",
        "output_path": str(out_dir / "big.parquet"),
        "partition_rows": 100_000,
        "chunk_rows": 2_000,
    }
    planned = plan_job(params, dag_id="score_batch", run_id="killed", as_of=AS_OF, team=TEAM)
    plan_file = data_folder / "plan.json"
    plan_file.write_text(
        json.dumps({"job": planned.job.to_dict(), "partitions": [p.to_dict() for p in planned.partitions]})
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO / "include")])}
    worker = subprocess.Popen(
        [sys.executable, "-c", KILLED_PARTITION, str(plan_file), "0"], env=env, start_new_session=True
    )
    staging = out_dir / ".big.parquet.staging"
    deadline = time.monotonic() + 120
    while not list(staging.glob("*/.part-00000.parquet.*.partial")):  # the partition is being written
        assert worker.poll() is None, "the worker ended before it was killed"
        assert time.monotonic() < deadline, "the partition never started writing"
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()

    assert visible_files(out_dir) == []  # no output, no visible part: only the hidden staging folder
    assert not list(staging.glob("*/part-*.parquet"))

    result = run_job(params, run_id="killed")  # the re-run (or the task's retry) of the same DAG run
    scored = pd.read_parquet(out_dir / "big.parquet")
    assert result["published"]["rows"] == len(scored) == len(frame)
    assert scored["prediction_id"].is_unique
    assert scored["customer_id"].tolist() == frame["customer_id"].tolist()
    assert sorted(p.name for p in out_dir.iterdir()) == ["big.parquet"]


def test_s3_input_and_output_through_the_amazon_connection(home, model, moto_server, data_folder, monkeypatch):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    monkeypatch.setenv(
        "AIRFLOW_CONN_MOTO_S3",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing-key",
                "password": "testing-secret",
                "extra": {"endpoint_url": moto_server, "region_name": "us-east-1"},
            }
        ),
    )
    monkeypatch.setenv("ASGARD_ALLOWED_AWS_CONN_IDS", "aws_default,moto_s3")  # the operator allows it
    hook = S3Hook(aws_conn_id="moto_s3")
    hook.create_bucket(TEST_DATA_BUCKET)  # the suite's S3 data root: the default team's folder in it
    frame = feature_rows(3000, seed=9)
    local = data_folder / "entities.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), local, row_group_size=1000)
    hook.load_file(str(local), f"{TEAM}/entities/part-0.parquet", bucket_name=TEST_DATA_BUCKET)

    for partition_rows, name in ((1000, "many"), (10_000, "one")):  # merged upload; server-side copy
        uri = f"s3://{TEST_DATA_BUCKET}/{TEAM}/predictions/{name}.parquet"
        result = run_job(
            {
                "model_name": MODEL,
                "model_version": home["version"],
                "entity_source": {"path": f"s3://{TEST_DATA_BUCKET}/{TEAM}/entities/"},
                "feature_source": "input",
                "output_path": uri,
                "aws_conn_id": "moto_s3",
                "partition_rows": partition_rows,
                "chunk_rows": 400,
            },
            run_id=f"s3-{name}",
        )
        assert result["published"]["asset_uri"] == uri
        target = data_folder / f"{name}.parquet"
        hook.get_conn().download_file(TEST_DATA_BUCKET, f"{TEAM}/predictions/{name}.parquet", str(target))
        assert_scored_like_the_model(pd.read_parquet(target), model, frame, home["version"])
    assert sorted(hook.list_keys(TEST_DATA_BUCKET, prefix=f"{TEAM}/predictions/")) == [
        f"{TEAM}/predictions/many.parquet",
        f"{TEAM}/predictions/one.parquet",
    ]


# --------------------------------------------------------------------------- bad input
BAD_REQUESTS = {
    "unknown-model": ({"model_name": "no_such_model"}, "no registered model named 'no_such_model'"),
    "unknown-version": ({"model_version": "999"}, "has no version 999"),
    "unknown-alias": ({"model_version": None, "alias": "nightly"}, "has no alias @nightly"),
    "missing-entity-key": ({"entities_df": {"account_id": [1, 2]}}, "lack the entity key(s) customer_id"),
    "foreign-feature-view": ({"feature_views": ["customer_labels"]}, "customer_labels not in the model's feature list"),
    "unknown-feature-view": ({"feature_views": ["nope"]}, "nope not in the model's feature list"),
    "output-climbing-out-of-the-team": ({"output_path": "../beta/out.parquet"}, "outside the data roots of team"),
    "entities-of-another-team": (
        {"entities_df": None, "entity_source": {"path": "../beta/entities.parquet"}},
        "entity_source path ../beta/entities.parquet (in ",  # then: "... is outside the data roots of team"
    ),
    "not-parquet-output": ({"output_path": "/tmp/out.csv"}, "ending in .parquet"),
    "output-outside-the-data-roots": ({"output_path": "/proc/asgard/out.parquet"}, "is outside the data roots"),
    "both-sources": ({"entity_source": {"table": FEATURE_TABLE}}, "exactly one of entities_df"),
    "unknown-table": ({"entities_df": None, "entity_source": {"table": "nope"}}, "nope"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_named_and_nothing_is_written(home, data_folder, case):
    change, message = BAD_REQUESTS[case]
    params = {
        "model_name": MODEL,
        "model_version": home["version"],
        "entities_df": {"customer_id": [1, 2]},
        "output_path": str(data_folder / "out.parquet"),
        **change,
    }
    with pytest.raises(InputError, match=_escaped(message)):
        plan_job(params, dag_id="score_batch", run_id="bad", as_of=AS_OF, team=TEAM)
    assert list(data_folder.iterdir()) == []


def test_output_that_is_a_directory_or_a_missing_bucket_is_refused(home, moto_server, data_folder, monkeypatch):
    (data_folder / "taken.parquet").mkdir()
    base = {"model_name": MODEL, "model_version": home["version"], "entities_df": {"customer_id": [1]}}
    with pytest.raises(ScoringError, match="is a directory"):
        plan_job(
            {**base, "output_path": str(data_folder / "taken.parquet")}, dag_id="d", run_id="r", as_of=AS_OF, team=TEAM
        )
    monkeypatch.setenv(
        "AIRFLOW_CONN_MOTO_S3",
        json.dumps({"conn_type": "aws", "login": "k", "password": "s", "extra": {"endpoint_url": moto_server}}),
    )
    monkeypatch.setenv("ASGARD_ALLOWED_AWS_CONN_IDS", "aws_default,moto_s3")
    monkeypatch.setenv("ASGARD_DATA_ROOTS", f"{TEST_DATA_ROOTS},s3://no-such-bucket")  # a root, but no bucket
    with pytest.raises(ScoringError, match="bucket 'no-such-bucket' does not exist"):
        plan_job(
            {**base, "output_path": f"s3://no-such-bucket/{TEAM}/x.parquet", "aws_conn_id": "moto_s3"},
            dag_id="d",
            run_id="r",
            as_of=AS_OF,
            team=TEAM,
        )


def test_unwritable_output_is_refused_before_any_scoring(home, data_folder):
    (data_folder / "a-file").write_text("not a folder")
    params = {
        "model_name": MODEL,
        "model_version": home["version"],
        "entities_df": {"customer_id": [1, 2]},
        "output_path": str(data_folder / "a-file" / "out.parquet"),
    }
    with pytest.raises(InputError, match="is not writable"):
        plan_job(params, dag_id="score_batch", run_id="bad", as_of=AS_OF, team=TEAM)
    assert [p.name for p in data_folder.iterdir()] == ["a-file"]


def _escaped(message: str) -> str:
    import re

    return re.escape(message)


def test_scored_at_is_the_plan_time_and_as_of_defaults_to_the_run(home, data_folder):
    before = datetime.now(UTC)
    planned = plan_job(
        {"model_name": MODEL, "entities_df": {"customer_id": [1]}, "output_path": str(data_folder / "o.parquet")},
        dag_id="score_batch",
        run_id="times",
        as_of=AS_OF,
        team=TEAM,
    )
    assert planned.job.as_of == AS_OF.isoformat()
    assert datetime.fromisoformat(planned.job.scored_at) >= before


def test_relative_and_default_outputs_land_in_the_teams_first_root(home, data_folder):
    """A relative output_path, and none at all, write in the model's team's folder of the first data root."""
    from asgard.core.settings import get_settings

    root = Path(get_settings().data_root_list[0]) / TEAM
    request = {"model_name": MODEL, "model_version": home["version"], "entities_df": {"customer_id": [1, 2]}}
    result = run_job({**request, "output_path": f"{data_folder.name}/relative.parquet"}, run_id="relative")
    assert (
        result["published"]["output_path"]
        == str(data_folder / "relative.parquet")
        == str(root / data_folder.name / "relative.parquet")
    )
    assert len(pd.read_parquet(data_folder / "relative.parquet")) == 2
    default = run_job(request, run_id="no-output-path")["published"]["output_path"]
    assert Path(default).parent == root / "predictions" / "score_batch" and len(pd.read_parquet(default)) == 2
