"""score_batch through the real Airflow REST API: mapped partitions on the scheduler, one published file,
the Asset event, and a bad request failing at the plan with nothing written."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asgard.hooks.mlflow import MlflowHook
from asgard.registry.versions import prepare_features
from conftest import team_folder
from sample_data.models import SEED_FEATURES, register_sample_model

pytestmark = pytest.mark.integration

MODEL = "batch_scored"


def entity_rows(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(21)
    frame = pd.DataFrame({"customer_id": np.arange(rows, dtype=np.int64)})
    for name in SEED_FEATURES:
        frame[name] = rng.gamma(2.0, 20.0, rows).round(1)
    return frame


def test_partitions_are_mapped_tasks_and_the_output_appears_once(embedded_stack, data_folder, monkeypatch):
    settings, api = embedded_stack.settings, embedded_stack.api
    version = register_sample_model(settings.mlflow_url, MODEL, customers=1000)  # no team tag: the default team's
    frame = entity_rows(3000)
    source = data_folder / "entities.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), source, row_group_size=1000)
    output = data_folder / "scored" / "batch.parquet"

    outcome = api.run_and_wait(
        "score_batch",
        {
            "model_name": MODEL,
            "model_version": version,
            "entity_source": {"path": str(source)},
            "feature_source": "input",
            "output_path": str(output),
            "partition_rows": 1000,
            "chunk_rows": 400,
        },
        timeout=600,
    )
    assert outcome.state == "success", outcome.failure
    mapped = {task: state for task, state in outcome.task_states.items() if task.startswith("score_partition[")}
    assert sorted(mapped) == [f"score_partition[partition {i} (1000 rows)]" for i in range(3)]
    assert set(mapped.values()) == {"success"}
    assert "scored 1000 / 1000 rows (100%)" in api.task_log("score_batch", outcome.run_id, "score_partition", 1)

    scored = pd.read_parquet(output)
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", f"http://{settings.mlflow_url.removeprefix('http://')}")
    model = MlflowHook().load_model(f"models:/{MODEL}/{version}")
    features = prepare_features(frame[SEED_FEATURES])
    np.testing.assert_array_equal(scored["prediction"].to_numpy(), model.predict(features))
    np.testing.assert_array_equal(scored["probability_1"].to_numpy(), model.predict_proba(features)[:, 1])
    assert scored["customer_id"].tolist() == frame["customer_id"].tolist() and scored["prediction_id"].is_unique
    assert sorted(path.name for path in output.parent.iterdir()) == ["batch.parquet"]

    events = api.asset_events(f"file://{output}")
    assert events and events[0]["extra"]["rows"] == 3000 and events[0]["source_run_id"] == outcome.run_id

    unknown = api.run_and_wait(
        "score_batch",
        {"model_name": MODEL, "alias": "nightly", "entities_df": {"customer_id": [1]}, "output_path": str(output)},
        timeout=300,
    )
    assert unknown.state == "failed" and unknown.task_states["plan"] == "failed"
    assert f"registered model '{MODEL}' has no alias @nightly" in api.task_log("score_batch", unknown.run_id, "plan")
    assert pd.read_parquet(output)["prediction_id"].tolist() == scored["prediction_id"].tolist()  # untouched


def test_a_run_reads_and_writes_only_in_its_models_teams_data_roots(embedded_stack):
    """A model of team-a: an output path in team-b's folder fails the run at the plan, naming team-a and
    its roots, with nothing written; a relative output path lands in team-a's first root."""
    from mlflow import MlflowClient

    from asgard.registry.ownership import TEAM_TAG

    settings, api = embedded_stack.settings, embedded_stack.api
    model = f"{MODEL}_team_a_{uuid.uuid4().hex[:6]}"
    MlflowClient(settings.mlflow_url, settings.mlflow_url).create_registered_model(model, tags={TEAM_TAG: "team-a"})
    version = register_sample_model(settings.mlflow_url, model, customers=300)
    ours, theirs = team_folder("team-a"), team_folder("team-b")
    source = ours / "entities.parquet"
    entity_rows(50).to_parquet(source, index=False)
    request = {"model_name": model, "model_version": version, "entity_source": {"path": str(source)},
               "feature_source": "input"}  # fmt: skip

    # The admin starts both runs: a run acts for its model's team, whoever asked.
    refused = api.run_and_wait("score_batch", {**request, "output_path": str(theirs / "out.parquet")}, timeout=300)
    assert refused.state == "failed" and refused.task_states["plan"] == "failed", refused
    log = api.task_log("score_batch", refused.run_id, "plan")
    assert f"output_path {theirs / 'out.parquet'} is outside the data roots of team 'team-a'" in log, log[-3000:]
    assert str(Path(settings.data_root_list[0]) / "team-a") in log and list(theirs.iterdir()) == []

    relative = f"{ours.name}/scored.parquet"
    outcome = api.run_and_wait("score_batch", {**request, "output_path": relative}, timeout=300)
    assert outcome.state == "success", outcome.failure
    published = api.task_result("score_batch", outcome.run_id, "publish")
    assert published["output_path"] == str(ours / "scored.parquet") and published["rows"] == 50
    assert len(pd.read_parquet(ours / "scored.parquet")) == 50
