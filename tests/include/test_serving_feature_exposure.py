"""What the public ``/predict`` by entity id shows of the online store: the deployment decides.

The real serving app on bundles the platform writes (a model trained by the platform's trainer, whose
inputs are imputed, and one without imputation), reading a real online store Feast itself wrote
(SQLite and the machine's Redis). Off (``ASGARD_SERVING_EXPOSE_FEATURES`` unset, the default), a
hostile client learns nothing from status, message or body about which ids the store holds, and never
reads a stored feature; on, the answers are as they always were.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import redis
from fastapi.testclient import TestClient

from asgard.features import gold, materialization
from asgard.features import store as feature_store
from asgard.features.online_reading import online_read_spec, serving_location
from asgard.registry.versions import prepare_features
from asgard.serving.bundle import write_bundle
from asgard.training import trainers
from asgard_serving.app import create_app
from conftest import feature_home
from sample_data.gold_layer import FEATURE_TABLE, GoldSpec
from sample_data.models import SAMPLE_FEATURES, SEED_FEATURES, training_frame

SPEC = GoldSpec(customers=200, days=2, end="2026-11-01T00:00:00+00:00", seed=5)
REDIS_DB = 13
KNOWN = [1, 2, 3]
UNKNOWN = [SPEC.customers + 11, 10**12]  # never materialized
SWITCH = "ASGARD_SERVING_EXPOSE_FEATURES"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with feature_home(tmp_path_factory.mktemp("feature-exposure-home"), SPEC) as path:
        yield path


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def store(request, home):
    """An online store Feast wrote the sample customers' newest features into."""
    if request.param == "sqlite":
        online = {"type": "sqlite", "path": str(home / "online-exposure.db")}
    else:
        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
        online = {"type": "redis", "connection_string": f"127.0.0.1:6379,db={REDIS_DB}"}
    opened = feature_store.open_store(online_store=online)
    materialization.ensure_online_table(opened, opened.get_feature_view("customer_features"))
    rows = gold.load_table(FEATURE_TABLE).scan().to_pandas()
    opened.write_to_online_store(
        "customer_features", rows.sort_values("event_timestamp").drop_duplicates("customer_id", keep="last")
    )
    yield opened
    if request.param == "redis":
        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()


@pytest.fixture(scope="module")
def imputing_model():
    """The platform's trainer: every input imputed (optional in the signature)."""
    features, target = training_frame(customers=1500, features=SAMPLE_FEATURES)
    spec = trainers.ModelSpec.from_request(
        {"framework": "sklearn", "model_type": "classification", "hyperparameters": {"params": {"n_estimators": 10}}}
    )
    fitted = spec.fit(features, target)
    return fitted, features, trainers.model_signature(fitted, features.head(20))


@pytest.fixture(scope="module")
def strict_model():
    """A model as a user's script may log one: no imputer, every input required; NaN makes it fail."""
    from sklearn.linear_model import LogisticRegression

    features, target = training_frame(customers=1500, features=SEED_FEATURES)
    features = features.fillna(features.median())  # (the sample data has missing values)
    return LogisticRegression(max_iter=500).fit(features, target), features


def write(folder, model, columns, sample, store):
    folder.mkdir()
    info = write_bundle(
        folder,
        model,
        columns,
        "classification",
        sample,
        identity={"model_name": "churn", "version": "6", "run_id": "r6", "source": "models:/m-6"},
        labels={},
    )
    info["online_features"] = online_read_spec(store, ["customer_features"], [column["name"] for column in columns])
    (folder / "serving.json").write_text(json.dumps(info))
    return folder


@pytest.fixture
def imputing_bundle(tmp_path, imputing_model, store):
    fitted, features, signature = imputing_model
    columns = [
        {"name": spec.name, "type": spec.type.name, "required": spec.required} for spec in signature.inputs.inputs
    ]
    return write(tmp_path / "imputing", fitted, columns, features.head(300), store)


@pytest.fixture
def strict_bundle(tmp_path, strict_model, store):
    fitted, _ = strict_model
    columns = [{"name": name, "type": "double", "required": True} for name in SEED_FEATURES]
    return write(tmp_path / "strict", fitted, columns, None, store)  # no sample: the native model


@pytest.fixture
def serve(monkeypatch, store):
    def start(folder, exposed: str | None):
        monkeypatch.setenv("ASGARD_ONLINE_STORE", serving_location(store.config))
        if exposed is None:
            monkeypatch.delenv(SWITCH, raising=False)
        else:
            monkeypatch.setenv(SWITCH, exposed)
        return TestClient(create_app(str(folder)))

    return start


def by_id(client, ids, **flags):
    return client.post("/predict", json={"entities": {"customer_id": ids}, "return_probabilities": True, **flags})


def stored_features(store, ids, names):
    return store.get_online_features(
        features=[f"customer_features:{name}" for name in names], entity_rows=[{"customer_id": i} for i in ids]
    ).to_dict()


def test_off_by_default_no_stored_feature_is_returned_and_no_id_told_apart(
    imputing_bundle, imputing_model, store, serve
):
    fitted, _, _ = imputing_model
    with serve(imputing_bundle, None) as client:
        asked = by_id(client, KNOWN, return_features=True)
        answers = {entity: by_id(client, [entity]) for entity in [*KNOWN, *UNKNOWN]}
        mixed = by_id(client, [KNOWN[0], UNKNOWN[0], KNOWN[1]])
        featureless = client.post(
            "/predict", json={"inputs": {name: [None] for name in SAMPLE_FEATURES}, "return_probabilities": True}
        )
        schema = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
        inputs_path = client.post("/predict", json={"inputs": {"total_purchases": [3]}})

    # Asking for the features is refused, saying why and what turns them on; nothing of the store in it.
    assert asked.status_code == 403, asked.text
    assert set(asked.json()) == {"detail"} and "expose_features" in asked.json()["detail"]
    # Known and unknown ids: the same status and the same fields, none of what only a held id has.
    assert {answer.status_code for answer in answers.values()} == {200}
    assert len({tuple(sorted(answer.json())) for answer in answers.values()}) == 1
    fields = set(answers[KNOWN[0]].json())
    assert fields == {
        "predictions",
        "probabilities",
        "classes",
        "entities",
        "prediction_ids",
        "model_name",
        "model_version",
    }
    # Known ids are predicted from their stored features; an unknown one as an entity without features.
    expected = stored_features(store, KNOWN, SAMPLE_FEATURES)
    frame = prepare_features(pd.DataFrame({name: expected[name] for name in SAMPLE_FEATURES}))
    for row, entity in enumerate(KNOWN):
        assert answers[entity].json()["predictions"] == [fitted.predict(frame)[row].item()]
        np.testing.assert_allclose(
            answers[entity].json()["probabilities"][0], fitted.predict_proba(frame)[row], atol=1e-5
        )
    for entity in UNKNOWN:
        assert answers[entity].json()["predictions"] == featureless.json()["predictions"]
        assert answers[entity].json()["probabilities"] == featureless.json()["probabilities"]
    # In one request, each row answers what it answers alone.
    assert mixed.status_code == 200 and mixed.json()["entities"] == {"customer_id": [KNOWN[0], UNKNOWN[0], KNOWN[1]]}
    alone = [answers[entity].json()["probabilities"][0] for entity in (KNOWN[0], UNKNOWN[0], KNOWN[1])]
    np.testing.assert_allclose(mixed.json()["probabilities"], alone, atol=1e-6)
    # The app's own OpenAPI document does not offer return_features; requests with features are untouched.
    entity_body = next(
        body
        for body in schema["content"]["application/json"]["schema"]["oneOf"]
        if "entities" in body.get("properties", {})
    )
    assert entity_body["properties"]["return_features"] == {"type": "boolean", "enum": [False]}
    assert inputs_path.status_code == 200


def test_turned_on_the_answers_are_as_they_always_were(imputing_bundle, store, serve):
    with serve(imputing_bundle, "true") as client:
        read = by_id(client, KNOWN, return_features=True)
        unknown = by_id(client, [KNOWN[0], *UNKNOWN])

    assert read.status_code == 200, read.text
    body = read.json()
    assert body["features"] == {name: stored_features(store, KNOWN, SAMPLE_FEATURES)[name] for name in SAMPLE_FEATURES}
    assert len(body["feature_timestamps"]) == len(KNOWN) and None not in body["feature_timestamps"]
    assert unknown.status_code == 422 and unknown.json()["missing"] == {"customer_id": UNKNOWN}


def test_a_model_that_cannot_predict_without_features_refuses_every_id_alike_when_off(strict_bundle, store, serve):
    row = {"inputs": {name: [1.0] for name in SEED_FEATURES}}
    stored = stored_features(store, range(1, 50), SEED_FEATURES)
    complete = next(i for i in range(1, 50) if all(stored[name][i - 1] is not None for name in SEED_FEATURES))
    with serve(strict_bundle, "false") as client:
        known, unknown = by_id(client, [complete]), by_id(client, [UNKNOWN[0]])
        with_features = client.post("/predict", json=row)
    assert known.status_code == unknown.status_code == 403
    assert known.json() == unknown.json()
    assert "cannot predict an entity without features" in known.json()["detail"]
    assert "expose_features" in known.json()["detail"]
    assert with_features.status_code == 200  # the path that carries its features is untouched

    with serve(strict_bundle, "true") as client:
        known, unknown = by_id(client, [complete]), by_id(client, [UNKNOWN[0]])
    assert known.status_code == 200, known.text
    assert unknown.status_code == 422 and unknown.json()["missing"] == {"customer_id": [UNKNOWN[0]]}


def test_a_misspelled_switch_stops_the_server_naming_it(imputing_bundle, serve):
    refused = pytest.raises(RuntimeError, match="ASGARD_SERVING_EXPOSE_FEATURES must be true or false, not 'yes'")
    with refused, serve(imputing_bundle, "yes"):
        pass
