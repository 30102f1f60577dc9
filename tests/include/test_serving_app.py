"""The serving app in-process, on bundles written by the platform's own exporter.

Each bundle is a real fitted pipeline: ONNX (converted and checked by asgard.serving.onnx_export) and
native (a model the conversion is refused for). The container test (tests/integration/
test_serving_image.py) runs the same app from the real image.
"""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

from asgard.serving import onnx_export
from asgard.serving.bundle import write_bundle
from asgard.training import trainers
from asgard_serving.app import create_app
from sample_data.models import SEED_FEATURES, SEED_PREDICTION, training_frame

SEED_PAYLOAD = SEED_PREDICTION
COLUMNS = [{"name": name, "type": "double", "required": True} for name in SEED_FEATURES]


@pytest.fixture(scope="module")
def fitted():
    features, target = training_frame(customers=3000)
    spec = trainers.ModelSpec.from_request(
        {
            "framework": "sklearn",
            "model_type": "classification",
            "hyperparameters": {"params": {"n_estimators": 20, "random_state": 7}},
        }
    )
    return spec.fit(features[:2400], target[:2400]), features[2400:]


def _bundle(tmp_path, fitted, *, sample=True):
    model, holdout = fitted
    folder = tmp_path / "model"
    folder.mkdir()
    info = write_bundle(
        folder,
        model,
        COLUMNS,
        "classification",
        holdout if sample else None,
        identity={"model_name": "churn", "version": "3", "run_id": "r1", "source": "models:/m-1"},
        labels={"io.asgard.model.version": "3"},
    )
    return folder, info


@pytest.fixture(params=["onnx", "native"])
def client(request, tmp_path, fitted):
    # No holdout sample: the exporter refuses to trust a conversion it cannot check -> native.
    folder, info = _bundle(tmp_path, fitted, sample=request.param == "onnx")
    assert info["flavor"] == request.param, info["flavor_reason"]
    with TestClient(create_app(str(folder))) as test_client:
        yield test_client


def test_health_metadata_and_seed_payload(client, fitted):
    assert client.get("/health").json() == {"status": "ok", "model_loaded": True}
    metadata = client.get("/metadata").json()
    assert (metadata["model_name"], metadata["model_version"], metadata["run_id"]) == ("churn", "3", "r1")
    assert [c["name"] for c in metadata["signature"]["inputs"]] == SEED_FEATURES
    assert metadata["labels"] == {"io.asgard.model.version": "3"} and metadata["flavor_reason"]

    body = client.post("/predict", json=SEED_PAYLOAD).json()
    model, _ = fitted
    import pandas as pd

    frame = pd.DataFrame(SEED_PAYLOAD["inputs"]).astype("float64")
    assert body["predictions"] == model.predict(frame).tolist()
    expected = model.predict_proba(frame)
    assert abs(pd.DataFrame(body["probabilities"]).to_numpy() - expected).max() < 1e-6
    assert body["classes"] == [0, 1] and len(set(body["prediction_ids"])) == 2
    assert (body["model_name"], body["model_version"]) == ("churn", "3")


def test_records_invocations_and_missing_values(client):
    inputs = SEED_PAYLOAD["inputs"]
    records = [dict(zip(inputs, row, strict=True)) for row in zip(*inputs.values(), strict=True)]
    columnar = client.post("/predict", json=SEED_PAYLOAD).json()["predictions"]
    assert client.post("/predict", json={"inputs": records}).json()["predictions"] == columnar
    assert client.post("/predict", json=records).json()["predictions"] == columnar
    split = {"columns": SEED_FEATURES, "data": [[r[c] for c in SEED_FEATURES] for r in records]}
    assert client.post("/invocations", json={"dataframe_split": split}).json() == {"predictions": columnar}
    assert client.post("/invocations", json={"dataframe_records": records}).json() == {"predictions": columnar}
    # A missing value is what the pipeline's imputer was trained to fill.
    with_null = {"inputs": {**SEED_PAYLOAD["inputs"], "avg_purchase_value": [None, 120.5]}}
    assert client.post("/predict", json=with_null).status_code == 200


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i: i.pop("support_tickets_count"), "missing column(s): support_tickets_count"),
        (lambda i: i.update(favourite_colour=["red", "blue"]), "unexpected column(s): favourite_colour"),
        (lambda i: i.update(total_purchases=[10, "many"]), "column 'total_purchases' is double: row 1 holds 'many'"),
        (lambda i: i.update(total_purchases=[True, 3]), "column 'total_purchases' is double: row 0 holds True"),
        (lambda i: i.update(total_purchases=[10]), "columns have different lengths"),
    ],
)
def test_bad_inputs_are_422_naming_the_problem(client, change, message):
    inputs = json.loads(json.dumps(SEED_PAYLOAD["inputs"]))
    change(inputs)
    response = client.post("/predict", json={"inputs": inputs})
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_malformed_bodies(client):
    assert client.post("/predict", content=b"{not json").status_code == 400
    assert client.post("/predict", json={"rows": []}).status_code == 422
    assert client.post("/predict", json={"inputs": {}}).status_code == 422
    assert client.post("/predict", json={**SEED_PAYLOAD, "return_probabilities": "yes"}).status_code == 422
    assert client.post("/invocations", json={"unknown": 1}).status_code == 422
    empty = client.post("/invocations", json={"dataframe_split": {"columns": SEED_FEATURES, "data": []}})
    assert empty.status_code == 422 and "no rows" in empty.text
    short = client.post("/invocations", json={"dataframe_split": {"columns": SEED_FEATURES, "data": [[1, 2]]}})
    assert short.status_code == 422 and "needs 6 values" in short.text
    named = client.post("/invocations", json={"dataframe_split": {"columns": [{"a": 1}], "data": [[1]]}})
    assert named.status_code == 422 and "must be a list of column names" in named.text
    # Beyond float32 (ONNX inputs, scikit-learn's trees): refused as the request's problem, never a 500.
    huge = client.post("/predict", json={"inputs": {**SEED_PAYLOAD["inputs"], "total_purchases": [3.5e38, 1.0]}})
    assert huge.status_code == 422 and "float32" in huge.json()["detail"], huge.text


def test_prediction_log_batches_off_the_request_path(tmp_path, fitted, monkeypatch):
    from datetime import UTC, datetime, timedelta

    from asgard.monitoring.windows import read_prediction_log

    folder, _ = _bundle(tmp_path, fitted)
    log_dir = tmp_path / "predictions"
    monkeypatch.setenv("ASGARD_PREDICTION_LOG", str(log_dir))
    monkeypatch.setenv("ASGARD_PREDICTION_LOG_FLUSH_SECONDS", "0.2")
    started = datetime.now(UTC) - timedelta(seconds=1)
    with TestClient(create_app(str(folder))) as test_client:
        answers = [test_client.post("/predict", json={**SEED_PAYLOAD, "return_probabilities": True}).json()]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not list(log_dir.glob("*.jsonl")):
            time.sleep(0.1)
        for _ in range(2):
            answers.append(test_client.post("/predict", json={**SEED_PAYLOAD, "return_probabilities": True}).json())
    # Shutdown flushes what is left; no partial file is ever left visible; one line per request.
    assert len(list(log_dir.glob("*.jsonl"))) >= 2 and not list(log_dir.glob(".*partial"))
    assert sum(len(path.read_text().splitlines()) for path in log_dir.glob("*.jsonl")) == 3
    # Monitoring reads it back as rows: each row's id, inputs, prediction and probabilities.
    logged = read_prediction_log(log_dir, started, datetime.now(UTC) + timedelta(seconds=1), "3")
    assert logged["prediction_id"].tolist() == [i for answer in answers for i in answer["prediction_ids"]]
    assert logged["prediction"].tolist() == [p for answer in answers for p in answer["predictions"]]
    sent = {name: values * 3 for name, values in SEED_PAYLOAD["inputs"].items()}
    assert {name: logged[name].tolist() for name in SEED_FEATURES} == sent
    probabilities = logged[["probability_0", "probability_1"]].to_numpy().tolist()
    assert probabilities == [row for answer in answers for row in answer["probabilities"]]
    assert read_prediction_log(log_dir, started, datetime.now(UTC), "4").empty  # another version's window


def test_prediction_log_lines_of_images_built_before_the_columnar_form_are_still_read(tmp_path):
    from datetime import UTC, datetime

    from asgard.monitoring.windows import read_prediction_log

    now = time.time()
    rows = [
        {
            "prediction_id": f"old-{i}",
            "logged_at": now,
            "model_name": "churn",
            "model_version": "3",
            "features": {"total_purchases": i},
            "prediction": i % 2,
            "probabilities": [0.5, 0.5],
        }
        for i in range(2)
    ]
    batch = {
        "logged_at": now,
        "model_name": "churn",
        "model_version": "3",
        "request_id": "new",
        "rows": 1,
        "features": {"total_purchases": [7], "support_tickets_count": [1]},
        "predictions": [1],
        "probabilities": [[0.25, 0.75]],
    }
    lines = [json.dumps(row) for row in rows] + [json.dumps(batch)]
    (tmp_path / f"predictions-{int(now * 1000)}-1-abc.jsonl").write_text("\n".join(lines) + "\n")
    window = (datetime.fromtimestamp(now - 1, UTC), datetime.fromtimestamp(now + 1, UTC))
    logged = read_prediction_log(tmp_path, *window, "3")
    assert logged["prediction_id"].tolist() == ["old-0", "old-1", "new-0"]
    assert logged["total_purchases"].tolist() == [0, 1, 7] and logged["prediction"].tolist() == [0, 1, 1]
    assert logged["support_tickets_count"].isna().tolist() == [True, True, False]
    assert logged["probability_1"].tolist() == [0.5, 0.5, 0.75]


def test_prediction_log_to_an_s3_prefix(tmp_path, fitted, monkeypatch):
    from moto import mock_aws

    folder, _ = _bundle(tmp_path, fitted)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ASGARD_PREDICTION_LOG", "s3://predictions/churn/v3")
    monkeypatch.setenv("ASGARD_PREDICTION_LOG_FLUSH_SECONDS", "0.2")
    with mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="predictions")
        with TestClient(create_app(str(folder))) as test_client:
            ids = test_client.post("/predict", json=SEED_PAYLOAD).json()["prediction_ids"]
        keys = [item["Key"] for item in s3.list_objects_v2(Bucket="predictions")["Contents"]]
        lines = [
            json.loads(line)
            for key in keys
            for line in s3.get_object(Bucket="predictions", Key=key)["Body"].read().decode().splitlines()
        ]
    assert all(key.startswith("churn/v3/predictions-") and key.endswith(".jsonl") for key in keys)
    assert [f"{line['request_id']}-{row}" for line in lines for row in range(line["rows"])] == ids


def test_float32_ties_resolve_to_the_first_class_as_scikit_learn_does():
    import numpy as np

    from asgard_serving.model import label_indices

    # An exact 0.5/0.5 tie in float64 comes out of float32 arithmetic split by one ulp either way.
    split_ties = np.array([[0.50000006, 0.49999994], [0.49999994, 0.50000006], [0.2, 0.8]], dtype=np.float32)
    assert label_indices(split_ties).tolist() == [0, 0, 1]


def test_bodies_and_batches_past_the_limits_are_refused_and_large_batches_leave_health_answering(tmp_path, fitted):
    import threading
    import time

    from asgard_serving.app import Limits

    folder, _ = _bundle(tmp_path, fitted)
    _, holdout = fitted
    limits = Limits(max_body_bytes=200_000, max_rows=500, inline_rows=16)
    with TestClient(create_app(str(folder), limits)) as client:
        rows = holdout.head(400).astype(float).fillna(0.0)
        ok = client.post("/predict", json={"inputs": {c: rows[c].tolist() for c in SEED_FEATURES}})
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == 400  # off the event loop
        many = pd_repeat(holdout, 600)
        too_many = client.post("/predict", json={"inputs": many})
        assert too_many.status_code == 413 and "600 rows in one request; at most 500" in too_many.text
        huge = client.post("/predict", content=b'{"inputs": {"x": [' + b"1," * 200_000 + b"1]}}")
        assert huge.status_code == 413 and "larger than 200000 bytes" in huge.text

    # While a large batch is predicted on a worker thread, /health answers at once.
    slow = Limits(max_rows=2_000_000, max_body_bytes=10**9, inline_rows=16)
    with TestClient(create_app(str(folder), slow)) as client:
        batch = {"inputs": pd_repeat(holdout, 100_000)}
        answered: list[float] = []

        def health_while_busy() -> None:
            time.sleep(0.3)
            started = time.perf_counter()
            assert client.get("/health").status_code == 200
            answered.append(time.perf_counter() - started)

        watcher = threading.Thread(target=health_while_busy)
        watcher.start()
        started = time.perf_counter()
        assert client.post("/predict", json=batch).status_code == 200
        busy = time.perf_counter() - started
        watcher.join()
        assert answered and answered[0] < busy / 2, (answered, busy)


def pd_repeat(frame, rows: int) -> dict[str, list[float]]:
    """``rows`` rows of the seed's features, the frame's rows repeated."""
    repeated = frame[SEED_FEATURES].astype(float).fillna(0.0).sample(rows, replace=True, random_state=0)
    return {column: repeated[column].tolist() for column in SEED_FEATURES}


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_generated_request_gets_a_server_error(client, mode):
    """Schemathesis cases from the app's own OpenAPI (the served model's columns in each body shape):
    valid bodies are answered, invalid ones refused with a 4xx naming the problem, never a 5xx."""
    import hypothesis
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.path for operation in operations} >= {"/predict", "/invocations", "/health", "/metadata"}
    for operation in operations:
        if mode == "negative" and operation.method.upper() == "GET":
            continue  # no parameters and no body: nothing to make invalid

        @hypothesis.settings(max_examples=40, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
        @hypothesis.given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        def call(case):
            response = case.call(session=client)
            case.validate_response(response, checks=[not_a_server_error])
            if mode == "positive" and case.operation.path in ("/predict", "/invocations"):
                assert response.status_code in (200, 422), response.text  # 422: a value the model cannot take

        call()


@pytest.mark.parametrize("flavor", ["onnx", "native"])
def test_the_seed_example_verbatim_against_a_model_with_a_column_the_seed_does_not_send(tmp_path, flavor):
    """The sample model also learns from ``segment``; its pipeline imputes every column, so the
    signature makes them optional and the seed's six-feature request is answered: the left-out
    column is missing, filled as in training (identical to the native model on that frame)."""
    import numpy as np
    import pandas as pd

    from asgard.registry.versions import prepare_features
    from asgard.serving.image import signature_columns
    from sample_data.models import SAMPLE_FEATURES

    features, target = training_frame(customers=3000, features=SAMPLE_FEATURES)
    spec = trainers.ModelSpec.from_request(
        {"framework": "sklearn", "model_type": "classification", "hyperparameters": {"params": {"n_estimators": 20}}}
    )
    model = spec.fit(features[:2400], target[:2400])
    columns = signature_columns(trainers.model_signature(model, features.head(5)))
    assert {c["name"]: c["required"] for c in columns} == dict.fromkeys(SAMPLE_FEATURES, False)
    folder = tmp_path / "model"
    folder.mkdir()
    info = write_bundle(
        folder,
        model,
        columns,
        "classification",
        features[2400:] if flavor == "onnx" else None,
        identity={"model_name": "churn", "version": "4", "run_id": "r2", "source": "models:/m-2"},
        labels={},
    )
    assert info["flavor"] == flavor, info["flavor_reason"]
    if flavor == "onnx":  # the numeric columns arrive as one matrix, the string column on its own
        inputs, operators = _graph(folder)
        assert inputs == [onnx_export.NUMERIC_INPUT, "segment"] and "Split" not in operators, operators
    with TestClient(create_app(str(folder))) as test_client:
        answer = test_client.post("/predict", json=SEED_PAYLOAD)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        # A column outside the signature is still refused, naming it.
        typo = test_client.post("/predict", json={"inputs": {**SEED_PAYLOAD["inputs"], "segmnt": ["smb", "smb"]}})
        assert typo.status_code == 422 and "segmnt" in typo.text
    frame = prepare_features(pd.DataFrame({**SEED_PAYLOAD["inputs"], "segment": [None, None]})[SAMPLE_FEATURES])
    assert frame["segment"].isna().all()
    assert body["predictions"] == model.predict(frame).tolist()
    assert np.abs(np.array(body["probabilities"]) - model.predict_proba(frame)).max() < 1e-6


def test_a_bare_estimator_as_scripts_log_it_is_served_as_onnx(tmp_path):
    """A script often logs the estimator alone (one numeric matrix in): the exporter puts a passthrough
    ColumnTransformer in front so its graph takes one input per column, checked like any other."""
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier

    features, target = training_frame(customers=3000)
    features = features.fillna(features.median())
    model = RandomForestClassifier(n_estimators=30, max_depth=6, random_state=1).fit(features[:2400], target[:2400])
    folder, info = _bundle(tmp_path, (model, features[2400:]))
    assert info["flavor"] == "onnx", info["flavor_reason"]
    # The passthrough's gathering of the columns is the one numeric input itself: no Split, no Concat.
    inputs, operators = _graph(folder)
    assert inputs == [onnx_export.NUMERIC_INPUT] and not {"Split", "Concat"} & set(operators), operators
    with TestClient(create_app(str(folder))) as test_client:
        body = test_client.post("/predict", json=SEED_PAYLOAD).json()
    frame = pd.DataFrame(SEED_PAYLOAD["inputs"]).astype("float64")
    assert body["predictions"] == model.predict(frame).tolist()
    assert np.abs(np.array(body["probabilities"]) - model.predict_proba(frame)).max() < 1e-6


def test_columns_a_pipeline_treats_apart_still_arrive_as_one_matrix_split_inside_the_graph(tmp_path):
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    features, target = training_frame(customers=3000)
    features = features[SEED_FEATURES].fillna(0.0)
    scaled, rest = SEED_FEATURES[:2], SEED_FEATURES[2:]
    columns = ColumnTransformer([("scaled", StandardScaler(), scaled), ("rest", "passthrough", rest)])
    model = Pipeline([("columns", columns), ("tree", DecisionTreeClassifier(max_depth=5, random_state=0))])
    folder, info = _bundle(tmp_path, (model.fit(features[:2400], target[:2400]), features[2400:]))
    assert info["flavor"] == "onnx", info["flavor_reason"]
    inputs, operators = _graph(folder)
    assert inputs == [onnx_export.NUMERIC_INPUT] and operators[0] == "Split", operators
    with TestClient(create_app(str(folder))) as test_client:
        body = test_client.post("/predict", json={**SEED_PAYLOAD, "return_probabilities": True}).json()
    frame = pd.DataFrame(SEED_PAYLOAD["inputs"]).astype("float64")
    assert body["predictions"] == model.predict(frame).tolist()
    assert np.abs(np.array(body["probabilities"]) - model.predict_proba(frame)).max() < 1e-6


@pytest.mark.parametrize("model_type", ["classification", "regression"])
def test_one_row_requests_answer_what_the_same_rows_answer_in_one_batch_also_when_concurrent(tmp_path, model_type):
    """A 1-row request is predicted through ONNX Runtime's buffers bound once (``OneRow``); one that
    finds them in use, on a worker thread, through ``session.run``. Every row's answer is the batch's,
    which is the native model's."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from asgard_serving.model import Bundle, Predictor

    features, target = training_frame(customers=3000)
    features = features[SEED_FEATURES]
    if model_type == "regression":
        target = features["customer_lifetime_value"].fillna(0.0) * 0.01 + target
    spec = trainers.ModelSpec.from_request(
        {"framework": "sklearn", "model_type": model_type, "hyperparameters": {"params": {"n_estimators": 20}}}
    )
    model = spec.fit(features[:2400], target[:2400])
    folder = tmp_path / "model"
    folder.mkdir()
    identity = {"model_name": "churn", "version": "5", "run_id": "r5", "source": "models:/m-5"}
    info = write_bundle(folder, model, COLUMNS, model_type, features[2400:], identity=identity, labels={})
    assert info["flavor"] == "onnx", info["flavor_reason"]
    rows = features[2400:2480]
    records = rows.astype(object).where(rows.notna(), None).to_dict(orient="records")
    with TestClient(create_app(str(folder))) as test_client:
        assert test_client.app.predictions.state.predictor.one_row is not None
        batch = test_client.post("/predict", json={"inputs": records, "return_probabilities": True}).json()
        single = [
            test_client.post("/predict", json={"inputs": [record], "return_probabilities": True}).json()
            for record in records
        ]
    assert [answer["predictions"][0] for answer in single] == batch["predictions"]
    native = model.predict(rows).tolist()
    if model_type == "classification":
        assert batch["predictions"] == native
        assert [answer["probabilities"][0] for answer in single] == batch["probabilities"]
    else:
        assert np.abs(np.array(batch["predictions"]) - native).max() < 1e-5 * np.abs(native).max()

    predictor = Predictor(Bundle.read(folder))
    columns = [{name: [record[name]] for name in SEED_FEATURES} for record in records]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda one: predictor.predict(one, 1, probabilities=False), columns * 5))
    assert [answer["predictions"][0] for answer in concurrent] == batch["predictions"] * 5


def _answered_together(app, requests: list[tuple[str, dict]]) -> tuple[list[tuple[int, dict]], list[int]]:
    """Start ``app`` (its lifespan), then hand it ``requests`` (path, JSON body) at once, each in its own
    task, as uvicorn does with the requests it reads in one turn of the loop: their answers (status,
    body), and the row counts of the model's calls."""
    import asyncio

    async def run() -> tuple[list[tuple[int, dict]], list[int]]:
        started, lifespan = asyncio.Event(), asyncio.Queue()
        await lifespan.put({"type": "lifespan.startup"})

        async def lifespan_send(message: dict) -> None:
            started.set()

        serving = asyncio.ensure_future(app({"type": "lifespan"}, lifespan.get, lifespan_send))
        await started.wait()
        predictor = app.predictions.state.predictor
        calls, predict = [], predictor.predict

        def counted(columns: dict, rows: int, **options) -> dict:
            calls.append(rows)
            return predict(columns, rows, **options)

        predictor.predict = counted

        async def one(path: str, body: dict) -> tuple[int, dict]:
            raw = json.dumps(body).encode()
            scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-length", b"%d" % len(raw))]}
            sent: list[dict] = []

            async def receive() -> dict:
                return {"type": "http.request", "body": raw, "more_body": False}

            async def send(message: dict) -> None:
                sent.append(message)

            await app(scope, receive, send)
            return sent[0]["status"], json.loads(sent[1]["body"])

        answers = await asyncio.gather(*(one(path, body) for path, body in requests))
        await lifespan.put({"type": "lifespan.shutdown"})
        await serving
        return answers, calls

    return asyncio.run(run())


def test_requests_read_in_the_same_turn_are_predicted_in_one_call_and_answered_each_as_if_alone(tmp_path, fitted):
    from asgard_serving.app import Limits

    folder, _ = _bundle(tmp_path, fitted)
    _, holdout = fitted
    rows = holdout.head(30).astype(float).fillna(0.0)
    requests = [
        ("/predict", {"inputs": {c: rows[c].tolist()[i : i + 2] for c in SEED_FEATURES}, "return_probabilities": True})
        for i in range(0, 8, 2)
    ]
    requests += [("/predict", {"inputs": [rows.iloc[i].to_dict()]}) for i in range(8, 12)]
    split = {"columns": SEED_FEATURES, "data": rows.iloc[12:15].values.tolist()}
    requests += [("/invocations", {"dataframe_split": split})]
    with TestClient(create_app(str(folder))) as client:
        alone = [client.post(path, json=body).json() for path, body in requests]
        metrics_before = client.get("/metrics").text

    answers, calls = _answered_together(create_app(str(folder)), requests)
    assert calls == [15]  # 9 requests, 15 rows: one call
    assert [status for status, _ in answers] == [200] * 9
    for (_, together), by_itself, (path, _) in zip(answers, alone, requests, strict=True):
        if path == "/predict":  # ids are each request's own
            assert len(together.pop("prediction_ids")) == len(by_itself.pop("prediction_ids"))
        assert together == by_itself
    assert "asgard_prediction_model_seconds_count 9" in metrics_before  # one per request, alone

    # A value the model cannot hold fails the call: each request is then predicted alone, and only
    # that one is refused.
    bad = {"inputs": {**{c: [1.0] for c in SEED_FEATURES}, "total_purchases": [1e39]}}
    answers, calls = _answered_together(create_app(str(folder)), [*requests[:3], ("/predict", bad), *requests[3:]])
    assert calls == [15 + 1, 2, 2, 2, 1, 2, 1, 1, 1, 1, 3]
    assert [status for status, _ in answers] == [200] * 3 + [422] + [200] * 6
    assert "total_purchases" in answers[3][1]["detail"] and "float32" in answers[3][1]["detail"]
    assert [body["predictions"] for _, body in answers[:3] + answers[4:]] == [a["predictions"] for a in alone]

    # At most inline_rows rows per call.
    answers, calls = _answered_together(create_app(str(folder), Limits(inline_rows=5)), requests)
    assert calls == [2 + 2, 2 + 2 + 1, 1 + 1 + 1, 3]
    assert [body["predictions"] for _, body in answers] == [answer["predictions"] for answer in alone]


def _graph(folder) -> tuple[list[str], list[str]]:
    """A bundle's ONNX graph: its input names and its operators, in order."""
    import onnx

    graph = onnx.load(str(folder / "model.onnx")).graph
    return [graph_input.name for graph_input in graph.input], [node.op_type for node in graph.node]


def test_metrics_count_the_prediction_paths_answers_by_class_and_latency(client):
    for _ in range(3):
        assert client.post("/predict", json=SEED_PAYLOAD).status_code == 200
    assert client.post("/predict", json={"inputs": {"nope": [1]}}).status_code == 422
    client.get("/metadata")  # not a prediction: not counted
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = answer.text
    assert 'asgard_prediction_requests_total{code="2xx"} 3' in text
    assert 'asgard_prediction_requests_total{code="4xx"} 1' in text
    assert 'asgard_prediction_requests_total{code="5xx"} 0' in text
    assert 'asgard_prediction_seconds_bucket{le="+Inf"} 4' in text and "asgard_prediction_seconds_count 4" in text
    # The model's own seconds, of the three requests it predicted: a share of the requests' seconds.
    assert "asgard_prediction_model_seconds_count 3" in text
    model_seconds = float(text.split("asgard_prediction_model_seconds_sum ")[1].split()[0])
    assert 0 < model_seconds < float(text.split("asgard_prediction_seconds_sum ")[1].split()[0])

    from asgard.deploy.trial_metrics import parse_metrics, side_summary

    counts = parse_metrics(text)
    assert (counts["requests"], counts["errors"]) == (4, 0)
    summary = side_summary(counts)
    assert summary["requests"] == 4 and 0 < summary["p99_ms"] < 10_000


def test_a_model_that_fails_is_a_500_naming_the_error_and_counted(tmp_path, fitted):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    model, _ = fitted
    failing = Pipeline([("refuse", FunctionTransformer(_refuse_single_rows)), ("model", model)])
    folder = tmp_path / "failing"
    folder.mkdir()
    identity = {"model_name": "churn", "version": "9", "run_id": "r9", "source": "models:/m-9"}
    write_bundle(folder, failing, COLUMNS, "classification", None, identity=identity, labels={})
    with TestClient(create_app(str(folder))) as failing_client:
        single = {"inputs": {name: values[:1] for name, values in SEED_PAYLOAD["inputs"].items()}}
        answer = failing_client.post("/predict", json=single)
        assert answer.status_code == 500
        assert answer.json() == {"detail": "the model failed on this request: ValueError: one row is not enough"}
        assert failing_client.post("/predict", json=SEED_PAYLOAD).status_code == 200
        assert 'asgard_prediction_requests_total{code="5xx"} 1' in failing_client.get("/metrics").text


def _refuse_single_rows(matrix):
    if len(matrix) == 1:
        raise ValueError("one row is not enough")
    return matrix


def test_a_mirror_file_that_is_absent_or_unusable_copies_nothing(tmp_path, caplog):
    from asgard_serving import mirror as mirror_module

    config = tmp_path / "mirror.json"
    mirror = mirror_module.Mirror(str(config))
    mirror._reload()
    assert mirror.url is None  # absent: no shadow
    for text, named in (
        ("{not json", "unusable"),
        ('{"url": "file:///etc/passwd", "percent": 10}', "file:///etc/passwd"),
        ('{"url": "http://shadow", "percent": 0}', "0"),
    ):
        config.write_text(text)
        mirror._stamp = None
        mirror._reload()
        assert mirror.url is None and named in caplog.text, text
    config.write_text('{"url": "http://shadow.models.svc.cluster.local/", "percent": 25}')
    mirror._stamp = None
    mirror._reload()
    assert (mirror.url, mirror.percent) == ("http://shadow.models.svc.cluster.local", 25)
    config.unlink()
    mirror._reload()
    assert mirror.url is None


def test_a_native_bundle_is_read_as_its_serving_json_says_it_was_written(tmp_path, fitted):
    """The bundler writes the native model with cloudpickle whatever MLflow logged it as, and says so;
    a bundle from before that note is cloudpickle too, and a format this image cannot read is refused."""
    from asgard_serving.model import Bundle, Predictor

    folder, info = _bundle(tmp_path, fitted, sample=False)
    assert info["native"] == {"pickled_model": "model.pkl", "format": "cloudpickle"}
    model, holdout = fitted
    rows = holdout.head(5)
    columns = {name: rows[name].tolist() for name in SEED_FEATURES}
    answer = Predictor(Bundle.read(folder)).predict(columns, 5, probabilities=False)
    assert answer["predictions"] == model.predict(rows).tolist()
    older = {**info, "native": {"pickled_model": "model.pkl"}}
    (folder / "serving.json").write_text(json.dumps(older))
    assert Predictor(Bundle.read(folder)).predict(columns, 5, probabilities=False) == answer
    (folder / "serving.json").write_text(
        json.dumps({**info, "native": {"pickled_model": "model.skops", "format": "skops"}})
    )
    with pytest.raises(ValueError, match="reads cloudpickle only"):
        Predictor(Bundle.read(folder))
