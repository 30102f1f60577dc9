"""A new user's own walk with ``./asgard`` against the real embedded stack: a CSV of their own becomes a
gold table, a feature view, a materialized online store, a ``regression`` model trained by
``train_model``, a batch scored from their own entity file, the model served and a second version tried
as a shadow decided by the difference of its predictions; then an ordinary scikit-learn script of theirs
(MLflow's default ``log_model``) uploaded, made ``@champion`` and served. After each deploy,
``/mlops/models`` names exactly the versions that answer on the router.

Small data on purpose (40 stores, 3 days): the walk is the point, not the model.
"""

from __future__ import annotations

import json
import re
import textwrap
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from asgard.features import gold
from asgard.hooks.airflow_api import fetch_token
from asgard.local.__main__ import main
from conftest import assert_models_name_what_answers, team_folder
from sample_data.models import SEED_FEATURES, SEED_PREDICTION

pytestmark = pytest.mark.integration

STORES, DAYS = 40, 3
START, END = "2026-10-01T00:00:00+00:00", "2026-10-04T00:00:00+00:00"


# A new user's ordinary scikit-learn script: MLflow's default log_model, which saves with skops.
ORDINARY_SCRIPT = textwrap.dedent(
    '''
    """An ordinary scikit-learn script: MLflow's default log_model (skops)."""
    import os

    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    FEATURES = {features!r}
    rng = np.random.default_rng(5)
    x = pd.DataFrame(rng.normal(size=(800, len(FEATURES))) * 10 + 20, columns=FEATURES)
    y = (x[FEATURES[0]] + rng.normal(size=800) * 5 > 20).astype(int)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x[:600], y[:600])
    mlflow.set_experiment(os.environ["EXPERIMENT_NAME"])
    with mlflow.start_run():
        mlflow.log_metric("roc_auc", roc_auc_score(y[600:], model.predict_proba(x[600:])[:, 1]))
        mlflow.sklearn.log_model(model, name=os.environ["MODEL_NAME"], signature=infer_signature(x, y))
    '''
).format(features=SEED_FEATURES)


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

    # 6. Served, then a second version tried as a shadow, decided by how far its predictions are from the
    # serving version's (a regression's shadow is measured by difference, not by agreement).
    api = embedded_stack.api
    try:
        code, out, err = asgard("deploy", model, "--unpause")
        assert code == 0 and f"serving {model} v1 at " in out, err + out
        api.pause("deploy_model")  # v2's promotion (if the gate gives one) deploys nothing by itself
        assert_models_name_what_answers(embedded_stack, model)
        smaller = {**train, "hyperparameters": {"params": {"n_estimators": 8, "max_depth": 4, "random_state": 2}}}
        (tmp_path / "train2.json").write_text(json.dumps(smaller))
        code, out, err = asgard("train", str(tmp_path / "train2.json"))
        assert code == 0 and f"model {model} v2 -> " in out, err + out
        traffic = StoreTraffic(f"{embedded_stack.settings.router_url}/models/{model}/predict", data)
        traffic.start()
        try:
            code, out, err = asgard(
                "deploy", model, "--version", "2", "--strategy", "shadow", "--percent", "50", "--min-requests", "30",
                "--duration", "180", "--max-difference", "3", "--unpause",
                # The walk decides the shadow by its predictions' difference; its latency is a loaded CI
                # machine's (a 177 ms p99 against 29 ms once), so the latency limit is wide, as the canaries' are.
                "--max-p99-ratio", "20", "--p99-tolerance-ms", "1000",
            )  # fmt: skip
        finally:
            traffic.stop.set()
            traffic.join(timeout=60)
    finally:
        api.pause("deploy_model")
    assert code == 0 and f"serving {model} v2 at " in out, err + out
    assert traffic.failures == [] and traffic.answered > 0 and traffic.versions <= {"1", "2"}
    tags = MlflowClient(embedded_stack.settings.mlflow_url).get_model_version(model, "2").tags
    assert tags["deploy.shadow.decision"] == "promoted"
    assert tags["deploy.shadow.measure"] == "relative_p95_abs_difference"
    assert int(tags["deploy.shadow.difference_rows"]) >= 30 and float(tags["deploy.shadow.stable_std"]) > 0
    assert 0 <= float(tags["deploy.shadow.relative_p95_abs_difference"]) <= 3 and "deploy.shadow.agreement" not in tags
    assert "x the serving version's std" in tags["deploy.shadow.reason"], tags
    versions = assert_models_name_what_answers(embedded_stack, model)["versions"]
    states = {version["version"]: version["serving"]["state"] for version in versions}
    assert states == {"1": "not_serving", "2": "serving"}
    code, out, err = asgard("models", model)
    assert code == 0 and re.search(r"v2 .*serving \(stable, docker\)", out) and re.search(r"v1 .*not_serving", out), out

    # 7. Deploying by hand while deploy_model is paused is refused, saying so (no run left waiting).
    code, _, err = asgard("deploy", model, "--strategy", "shadow")
    assert code == 1 and "deploy_model is paused" in err

    # 8. An ordinary scikit-learn script (MLflow's default log_model: skops) uploaded, made @champion by the
    # gate, and served from the registry as MLflow logged it.
    scripted = f"plain_{suffix}"
    (tmp_path / "train_plain.py").write_text(ORDINARY_SCRIPT)
    code, out, err = asgard(
        "upload", str(tmp_path / "train_plain.py"), "--model-name", scripted, "--experiment", f"plain_{suffix}",
        "-r", "scikit-learn", "-r", "pandas", "--no-feast",
    )  # fmt: skip
    assert code == 0 and f"model {scripted} v1 -> @champion" in out, err + out
    try:
        code, out, err = asgard("deploy", scripted, "--unpause")
    finally:
        api.pause("deploy_model")
    assert code == 0 and f"serving {scripted} v1 at " in out, err + out
    answer = httpx.post(f"{embedded_stack.settings.router_url}/models/{scripted}/predict", json=SEED_PREDICTION)
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 2, answer.text
    assert assert_models_name_what_answers(embedded_stack, scripted)["versions"][0]["serving"]["state"] == "serving"


class StoreTraffic(threading.Thread):
    """Live traffic for the shadow: requests of a few of the user's store rows at a time."""

    def __init__(self, url: str, data: pd.DataFrame) -> None:
        super().__init__(daemon=True)
        self.url, self.data, self.stop = url, data, threading.Event()
        self.answered, self.failures, self.versions = 0, [], set()

    def run(self) -> None:
        columns = ("footfall", "basket_size", "staff")
        with httpx.Client(timeout=60) as client:
            start = 0
            while not self.stop.is_set():
                rows = self.data.iloc[start % len(self.data) :][:4]
                start += 4
                body = {"inputs": {name: rows[name].tolist() for name in columns}}
                try:
                    answer = client.post(self.url, json=body)
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                    continue
                if answer.status_code != 200:
                    self.failures.append(f"{answer.status_code} {answer.text[:200]}")
                else:
                    self.answered += 1
                    self.versions.add(str(answer.json()["model_version"]))
                time.sleep(0.05)
