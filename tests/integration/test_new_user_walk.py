"""A new user's own walk with ``./asgard`` against the real embedded stack: a CSV of their own becomes a
gold table, a feature view, a materialized online store, a ``regression`` model trained by
``train_model``, and a batch scored from their own entity file. Nothing of the sample data is used.

Small data on purpose (40 stores, 3 days): the walk is the point, not the model.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from asgard.features import gold
from asgard.hooks.airflow_api import fetch_token
from asgard.local.__main__ import main
from conftest import team_folder

pytestmark = pytest.mark.integration

STORES, DAYS = 40, 3
START, END = "2026-10-01T00:00:00+00:00", "2026-10-04T00:00:00+00:00"


def stores_csv(path) -> pd.DataFrame:
    """The user's own data: daily store figures with what each store sold that week."""
    rng = np.random.default_rng(7)
    rows = []
    for day in range(DAYS):
        footfall = rng.integers(50, 500, STORES)
        basket = np.round(rng.uniform(10, 60, STORES), 2)
        staff = rng.integers(2, 12, STORES)
        sales = np.round(footfall * basket * 0.9 + staff * 40 + rng.normal(0, 50, STORES), 2)
        for store in range(STORES):
            rows.append(
                {
                    "store_id": store + 1,
                    "event_timestamp": f"2026-10-0{day + 1}T{8 + store % 10:02d}:00:00",
                    "footfall": int(footfall[store]),
                    "basket_size": float(basket[store]),
                    "staff": int(staff[store]),
                    "weekly_sales": float(sales[store]),
                }
            )
    frame = pd.DataFrame(rows)
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture
def asgard(embedded_stack, monkeypatch, capsys):
    """``./asgard ARGS --url <the stack>`` in this process: (exit code, what it printed, its errors)."""
    monkeypatch.setenv("ASGARD_API_TOKEN", embedded_stack.api.token)

    def run(*arguments: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([*arguments, "--url", embedded_stack.settings.airflow_url])
        printed = capsys.readouterr()
        return code, printed.out, printed.err

    return run


def test_a_csv_of_their_own_becomes_a_served_regression_model_and_a_scored_batch(embedded_stack, asgard, tmp_path):
    suffix = uuid.uuid4().hex[:6]
    table, view, model = f"store_days_{suffix}", f"store_figures_{suffix}", f"store_sales_{suffix}"
    data = stores_csv(tmp_path / "stores.csv")

    # 1. Their CSV becomes a gold table, in one snapshot; a second file that does not fit is refused whole.
    code, out, err = asgard(
        "gold", "load", str(tmp_path / "stores.csv"), "--table", table, "--entity", "store_id",
        "--timestamp", "event_timestamp",
    )  # fmt: skip
    assert code == 0, err
    assert f"gold.{table}: created with {len(data)} row(s)" in out and re.search(r"basket_size +double", out)
    location = gold.GoldLocation.for_settings(embedded_stack.settings)
    snapshot = gold.snapshot_id(table, location)
    (tmp_path / "late.csv").write_text("store_id,event_timestamp,footfall\n1,someday,3\n")
    code, out, err = asgard(
        "gold", "load", str(tmp_path / "late.csv"), "--table", table, "--entity", "store_id",
        "--timestamp", "event_timestamp",
    )  # fmt: skip
    assert code == 1 and "422" in err and "'someday' at row 1" in err and "lacks: basket_size, staff" in err, err
    assert gold.snapshot_id(table, location) == snapshot
    # A path is read only under the data roots; a reader may not load at all.
    server, token = embedded_stack.settings.airflow_url, embedded_stack.api.token
    body = {"path": "/etc/passwd.csv", "entity_column": "store_id", "timestamp_column": "event_timestamp"}
    answer = httpx.post(
        f"{server}/feast/gold/{table}/from-path", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 422 and "outside the data roots" in answer.text, answer.text
    viewer = fetch_token(server, *embedded_stack.manager.credentials("viewer"))
    answer = httpx.post(
        f"{server}/feast/gold/{table}", params={"entity_column": "store_id", "timestamp_column": "event_timestamp"},
        content=(tmp_path / "stores.csv").read_bytes(), headers={"Authorization": f"Bearer {viewer}"},
    )  # fmt: skip
    assert answer.status_code == 403 and gold.snapshot_id(table, location) == snapshot

    # 2. A feature view over it (the label stays out of the features).
    features = [{"name": name, "dtype": dtype} for name, dtype in
                (("footfall", "int64"), ("basket_size", "float64"), ("staff", "int64"))]  # fmt: skip
    request = {"name": view, "entities": ["store_id"], "features": features, "ttl_days": 365,
               "source": {"table_name": table, "timestamp_field": "event_timestamp"}}  # fmt: skip
    (tmp_path / "view.json").write_text(json.dumps(request))
    code, out, err = asgard("features", "register", str(tmp_path / "view.json"))
    assert code == 0, err + out
    assert "apply_feature_view: success" in out and "register_features run register_features--" in out

    # 3. Materialized for their days; the run read again by DAG_ID RUN_ID, as any run can be.
    code, out, err = asgard("materialize", "--feature-view", view, "--start", START, "--end", END)
    assert code == 0, err + out
    run_id = out.split()[1]
    code, out, err = asgard("job", "materialize_features", run_id, "--json")
    assert code == 0, err
    result = json.loads(out)["result"]
    assert result[0]["feature_view"] == view and result[0]["rows_read"] == len(data), result
    code, _, err = asgard("job", "materialize_features", "manual__not-a-run")
    assert code == 1 and "does not exist" in err

    # 4. A regression model trained by train_model on their table's label.
    train = {
        "experiment_name": f"stores_{suffix}", "model_name": model, "framework": "sklearn",
        "model_type": "regression",
        "data_source": {"feature_views": [view], "target_column": "weekly_sales", "label_table": table},
        "hyperparameters": {"params": {"n_estimators": 20, "max_depth": 6, "random_state": 1}},
    }  # fmt: skip
    (tmp_path / "train.json").write_text(json.dumps(train))
    code, out, err = asgard("train", str(tmp_path / "train.json"))
    assert code == 0, err + out
    assert f"model {model} v1 -> @champion" in out
    code, out, err = asgard("models", model)
    assert code == 0 and "@champion=v1" in out and "rmse=" in out, out + err

    # 5. A batch scored from their own entity file, in their team's folder of the data roots; a relative
    # output path lands in the team's first root.
    folder = team_folder()  # the admin's model: the default team's
    entities = folder / "entities.parquet"
    pd.DataFrame({"store_id": [3, 1, 4, 1, 5]}).to_parquet(entities, index=False)
    relative = f"{folder.name}/scored.parquet"
    output = Path(embedded_stack.settings.data_root_list[0]) / "default" / relative
    score = {"model_name": model, "entity_source": {"path": str(entities)}, "as_of": END, "output_path": relative}
    (tmp_path / "score.json").write_text(json.dumps(score))
    code, out, err = asgard("score", str(tmp_path / "score.json"))
    assert code == 0, err + out
    scored = pd.read_parquet(output)
    assert sorted(scored["store_id"]) == [1, 1, 3, 4, 5] and scored["prediction"].notna().all()
    # The day-3 figures of store 3 predict near what it sold (the forest saw them): a real regression.
    day3 = data[data["event_timestamp"].str.startswith("2026-10-03")].set_index("store_id")["weekly_sales"]
    assert abs(float(scored.loc[scored["store_id"] == 3, "prediction"].iloc[0]) - day3[3]) < float(day3.std())

    # 6. Deploying by hand while deploy_model is paused is refused, saying so (no run left waiting).
    embedded_stack.api.pause("deploy_model")
    code, _, err = asgard("deploy", model, "--strategy", "shadow")
    assert code == 1 and "deploy_model is paused" in err
