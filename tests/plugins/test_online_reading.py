"""Predicting by entity id: the serving app's online-store reader against Feast's own writes.

Real Feast writes the online store (its own ``write_to_online_store``, and the platform's
materialization), in SQLite and in the machine's real Redis; the serving app, given the bundle the
platform writes (``online_features`` made with Feast's functions), reads it by entity id. What it
read must equal ``FeatureStore.get_online_features`` for the same ids, and its predictions the
model's on those features.
"""

from __future__ import annotations

import json
import os
import random
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
import redis
from fastapi.testclient import TestClient

from asgard.features import gold, materialization
from asgard.features import store as feature_store
from asgard.features.online_reading import NotReadable, key_samples, online_read_spec, serving_location
from asgard.registry.versions import prepare_features
from asgard.serving.bundle import write_bundle
from asgard.training import trainers
from asgard_serving.app import create_app
from asgard_serving.online import decode_timestamp, decode_value, serialize_entity_key
from conftest import feature_home
from sample_data.gold_layer import FEATURE_TABLE, GoldSpec
from sample_data.models import SAMPLE_FEATURES, training_frame

SPEC = GoldSpec(customers=400, days=3, end="2026-11-01T00:00:00+00:00", seed=11)
REDIS_DB = 12
IDS = list(range(1, 301))  # a few hundred ids


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with feature_home(tmp_path_factory.mktemp("online-reading-home"), SPEC) as path:
        yield path


@pytest.fixture(scope="module")
def newest_rows(home) -> pd.DataFrame:
    rows = gold.load_table(FEATURE_TABLE).scan().to_pandas()
    return rows.sort_values("event_timestamp").drop_duplicates("customer_id", keep="last")


def open_store(home, backend: str, name: str):
    """A store on a new online store (its view's table created, as materialization would)."""
    if backend == "sqlite":
        online = {"type": "sqlite", "path": str(home / f"online-{name}.db")}
    else:
        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
        online = {"type": "redis", "connection_string": f"127.0.0.1:6379,db={REDIS_DB}"}
    store = feature_store.open_store(online_store=online)
    materialization.ensure_online_table(store, store.get_feature_view("customer_features"))
    return store


@pytest.fixture(scope="module", params=["sqlite-feast", "sqlite-asgard", "redis-feast", "redis-asgard"])
def written(request, home, newest_rows):
    """An online store written by Feast itself or by the platform's materialization."""
    backend, writer = request.param.split("-")
    store = open_store(home, backend, request.param)
    if writer == "feast":
        store.write_to_online_store("customer_features", newest_rows)
    else:
        window = materialization.Window("customer_features", SPEC.start_time, SPEC.end_time + timedelta(seconds=1))
        materialization.materialize_window(store, window)
    yield store
    if backend == "redis":
        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()


@pytest.fixture(scope="module")
def model():
    features, target = training_frame(customers=2000, features=SAMPLE_FEATURES)
    spec = trainers.ModelSpec.from_request(
        {"framework": "sklearn", "model_type": "classification", "hyperparameters": {"params": {"n_estimators": 15}}}
    )
    return spec.fit(features, target), features


def bundle(folder, model, store, views=("customer_features",)):
    fitted, features = model
    signature = trainers.model_signature(fitted, features.head(20))
    columns = [
        {"name": spec.name, "type": spec.type.name, "required": spec.required} for spec in signature.inputs.inputs
    ]
    folder.mkdir(exist_ok=True)
    info = write_bundle(
        folder,
        fitted,
        columns,
        "classification",
        features.head(500),
        identity={"model_name": "churn", "version": "4", "run_id": "r4", "source": "models:/m-4"},
        labels={},
    )
    try:
        info["online_features"] = online_read_spec(store, list(views), [column["name"] for column in columns])
    except NotReadable as reason:
        info["online_features_reason"] = str(reason)
    (folder / "serving.json").write_text(json.dumps(info))
    return folder


@pytest.fixture
def serve(tmp_path, monkeypatch):
    # The deployment that exposes features: what is read by id is returned and compared here (the
    # default, which shows nothing of the store: tests/include/test_serving_feature_exposure.py).
    monkeypatch.setenv("ASGARD_SERVING_EXPOSE_FEATURES", "true")

    def start(folder, location):
        if location:
            monkeypatch.setenv("ASGARD_ONLINE_STORE", location)
        else:
            monkeypatch.delenv("ASGARD_ONLINE_STORE", raising=False)
        return TestClient(create_app(str(folder)))

    return start


def location_of(store) -> str:
    return serving_location(store.config)


# --------------------------------------------------------------------------- consistency
def test_features_read_by_id_equal_feasts_and_predictions_the_models(tmp_path, written, model, newest_rows, serve):
    fitted, _ = model
    with serve(bundle(tmp_path / "model", model, written), location_of(written)) as client:
        answer = client.post(
            "/predict",
            json={"entities": {"customer_id": IDS}, "return_features": True, "return_probabilities": True},
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = written.get_online_features(
        features=[f"customer_features:{name}" for name in SAMPLE_FEATURES],
        entity_rows=[{"customer_id": i} for i in IDS],
    ).to_dict()
    assert body["entities"] == {"customer_id": IDS}
    for name in SAMPLE_FEATURES:
        assert body["features"][name] == expected[name], name
    frame = prepare_features(pd.DataFrame({name: expected[name] for name in SAMPLE_FEATURES}))
    assert body["predictions"] == fitted.predict(frame).tolist()
    np.testing.assert_allclose(body["probabilities"], fitted.predict_proba(frame), atol=1e-5)
    stamps = newest_rows.set_index("customer_id").loc[IDS, "event_timestamp"]
    read = [pd.Timestamp(stamp).floor("s") for stamp in body["feature_timestamps"]]
    assert read == [pd.Timestamp(stamp).floor("s") for stamp in stamps]
    assert len(body["prediction_ids"]) == len(IDS) and body["model_version"] == "4"


def test_ids_without_features_are_a_422_naming_them(tmp_path, written, model, serve):
    unknown = [SPEC.customers + 5, SPEC.customers + 9]
    with serve(bundle(tmp_path / "model", model, written), location_of(written)) as client:
        answer = client.post("/predict", json={"entities": {"customer_id": [1, *unknown]}})
    assert answer.status_code == 422
    assert answer.json()["missing"] == {"customer_id": unknown}
    assert f"customer_id {unknown[0]}, {unknown[1]}" in answer.json()["detail"]


# --------------------------------------------------------------------------- Feast's formats
def test_entity_keys_are_byte_for_byte_feasts():
    from feast.infra.key_encoding_utils import serialize_entity_key as feast_serialize
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    rng = random.Random(3)
    numbers = [0, 1, -1, 2**63 - 1, -(2**63), *(rng.randrange(-(2**63), 2**63) for _ in range(300))]
    for number in numbers:
        proto = EntityKey(join_keys=["customer_id"], entity_values=[Value(int64_val=number)])
        assert serialize_entity_key({"customer_id": "INT64"}, {"customer_id": number}) == feast_serialize(proto)
    for text in ["", "a", "kunde-ü", "日本", "x" * 300]:
        proto = EntityKey(join_keys=["user"], entity_values=[Value(string_val=text)])
        assert serialize_entity_key({"user": "STRING"}, {"user": text}) == feast_serialize(proto)
    # Two join keys: Feast sorts them by name, whatever order they come in.
    proto = EntityKey(join_keys=["store", "customer"], entity_values=[Value(int32_val=-5), Value(string_val="c-1")])
    mine = serialize_entity_key({"store": "INT32", "customer": "STRING"}, {"store": -5, "customer": "c-1"})
    assert mine == feast_serialize(proto)
    for sample in key_samples({"customer_id": "INT64"}, 3):
        assert serialize_entity_key({"customer_id": "INT64"}, sample["entities"]).hex() == sample["key"]


def test_values_and_timestamps_decode_as_protobuf_reads_them():
    from feast.protos.feast.types.Value_pb2 import Value
    from google.protobuf.timestamp_pb2 import Timestamp

    cases = [
        Value(double_val=-2.5e300),
        Value(float_val=3.14),
        Value(int32_val=-7),
        Value(int64_val=-(2**62)),
        Value(bool_val=True),
        Value(string_val="kunde-ü"),
        Value(),
    ]
    for proto in cases:
        which = proto.WhichOneof("val")
        assert decode_value(proto.SerializeToString()) == (getattr(proto, which) if which else None)
    for seconds, nanos in [(0, 0), (1_790_000_000, 500_000_000), (-86_400, 0)]:
        stamp = Timestamp(seconds=seconds, nanos=nanos)
        assert decode_timestamp(stamp.SerializeToString()).timestamp() == pytest.approx(seconds + nanos / 1e9)


def test_each_types_decoder_answers_as_protobuf_over_and_over_and_remembers_a_bounded_number(monkeypatch):
    from feast.protos.feast.types.Value_pb2 import Value

    from asgard_serving import online

    monkeypatch.setattr(online, "MEMO_ENTRIES", 50)
    rng = random.Random(5)
    cases = {
        "INT64": [
            Value(int64_val=n) for n in [0, 127, 128, -1, 2**62, *(rng.randrange(-(2**40), 2**40) for _ in range(80))]
        ],
        "INT32": [Value(int32_val=n) for n in [0, 300, -(2**31), *(rng.randrange(-(2**31), 2**31) for _ in range(80))]],
        "DOUBLE": [Value(double_val=x) for x in [0.0, -1.5, *(rng.uniform(-1e9, 1e9) for _ in range(80))]],
        "FLOAT": [Value(float_val=x) for x in [0.0, -1.5, 3.1, *(rng.uniform(-1e9, 1e9) for _ in range(80))]],
        "STRING": [Value(string_val=f"segment-{n % 70}") for n in range(120)],
        "BOOL": [Value(bool_val=True), Value(bool_val=False)],
    }
    for value_type, protos in cases.items():
        decode = online.value_decoder(value_type)
        for proto in protos * 2:  # the second pass answers from memory where it remembers
            which = proto.WhichOneof("val")
            assert decode(proto.SerializeToString()) == getattr(proto, which), (value_type, proto)
        assert decode(Value().SerializeToString()) is None and decode(None) is None
        # A column at once (numpy for a column of doubles), with and without missing values in it.
        present = [proto.SerializeToString() for proto in protos]
        for column in (present, [*present, b"", None]):
            assert decode.column(column) == [decode(data) for data in column], value_type
    remembered = online.Memoized(len)
    for n in range(500):
        assert remembered(bytes([n % 256, n // 256])) == 2
    assert len(remembered.answers) <= 50  # bounded: emptied when full


# --------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def sqlite_store(home, newest_rows):
    store = open_store(home, "sqlite", "refusals")
    store.write_to_online_store("customer_features", newest_rows)
    return store


@pytest.mark.parametrize(
    ("entities", "says"),
    [
        ({"user_id": [1]}, "unknown entity key(s) user_id: this model's features are keyed by customer_id"),
        ({}, "entities must be an object of id lists"),
        ({"customer_id": ["1"]}, "entity key customer_id takes int64 integers: got '1'"),
        ({"customer_id": [True]}, "takes int64 integers: got True"),
        ({"customer_id": [2**64]}, "takes int64 integers"),
        ({"customer_id": []}, "no entity ids to predict"),
        ({"customer_id": list(range(1001))}, "1001 entity ids in one request; at most 1000"),
    ],
)
def test_bad_entities_are_a_422_naming_the_problem(tmp_path, model, sqlite_store, serve, entities, says):
    with serve(bundle(tmp_path / "model", model, sqlite_store), location_of(sqlite_store)) as client:
        answer = client.post("/predict", json={"entities": entities})
    assert answer.status_code == 422
    assert says in answer.json()["detail"]


def test_entities_beside_inputs_and_bad_flags_are_refused(tmp_path, model, sqlite_store, serve):
    with serve(bundle(tmp_path / "model", model, sqlite_store), location_of(sqlite_store)) as client:
        both = client.post("/predict", json={"entities": {"customer_id": [1]}, "inputs": {"segment": ["a"]}})
        flag = client.post("/predict", json={"entities": {"customer_id": [1]}, "return_features": "yes"})
        one = client.post("/predict", json={"entities": {"customer_id": 3}})
    assert both.status_code == 422 and "unexpected field(s) beside entities: inputs" in both.json()["detail"]
    assert flag.status_code == 422 and "return_features must be true or false" in flag.json()["detail"]
    assert one.status_code == 200 and one.json()["entities"] == {"customer_id": [3]}


def test_a_version_not_trained_on_views_says_why(tmp_path, model, sqlite_store, serve):
    with serve(bundle(tmp_path / "model", model, sqlite_store, views=()), location_of(sqlite_store)) as client:
        answer = client.post("/predict", json={"entities": {"customer_id": [1]}})
        features = client.post("/predict", json={"inputs": {"total_purchases": [3]}})
    assert answer.status_code == 422
    assert "cannot predict by entity id: it was not trained on Feast feature views" in answer.json()["detail"]
    assert features.status_code == 200  # the feature path is untouched


def test_no_store_configured_or_reachable_is_a_503(tmp_path, model, sqlite_store, serve):
    folder = bundle(tmp_path / "model", model, sqlite_store)
    with serve(folder, None) as client:
        answer = client.post("/predict", json={"entities": {"customer_id": [1]}})
    assert answer.status_code == 503 and "ASGARD_ONLINE_STORE" in answer.json()["detail"]
    with serve(folder, f"sqlite:///{tmp_path / 'nothing-here.db'}") as client:
        answer = client.post("/predict", json={"entities": {"customer_id": [1]}})
    assert answer.status_code == 503 and "does not exist" in answer.json()["detail"]
    with serve(folder, "redis://127.0.0.1:1/0") as client:
        answer = client.post("/predict", json={"entities": {"customer_id": [1]}})
    assert answer.status_code == 503 and "redis://127.0.0.1:1/0" in answer.json()["detail"]


def test_an_image_that_would_serialize_keys_differently_refuses_to_start(tmp_path, model, sqlite_store, serve):
    folder = bundle(tmp_path / "model", model, sqlite_store)
    info = json.loads((folder / "serving.json").read_text())
    info["online_features"]["key_samples"][1]["key"] = "00" + info["online_features"]["key_samples"][1]["key"][2:]
    (folder / "serving.json").write_text(json.dumps(info))
    with pytest.raises(RuntimeError, match="serializes entity"), serve(folder, location_of(sqlite_store)):
        pass


def test_the_sqlite_store_is_opened_read_only(tmp_path, model, sqlite_store, serve):
    location = location_of(sqlite_store)
    path = location.removeprefix("sqlite:///")
    before = os.stat(path).st_mtime_ns
    with serve(bundle(tmp_path / "model", model, sqlite_store), location) as client:
        assert client.post("/predict", json={"entities": {"customer_id": [1, 2]}}).status_code == 200
        reader = client.app.predictions.state.online.store
        with pytest.raises(Exception, match="readonly"):
            reader._connection().execute("CREATE TABLE sneaky (x)")
    assert os.stat(path).st_mtime_ns == before


def test_the_sqlite_reader_remembers_entities_until_the_store_changes(tmp_path, model, newest_rows, serve):
    """Entities read are answered from memory while the file is unchanged; a write to the store (a
    materialization, here Feast's own) is seen by the very next request."""
    store = feature_store.open_store(online_store={"type": "sqlite", "path": str(tmp_path / "online-cached.db")})
    materialization.ensure_online_table(store, store.get_feature_view("customer_features"))
    store.write_to_online_store("customer_features", newest_rows)
    ids, unknown = IDS[:40], SPEC.customers + 7

    def read(client) -> list:
        answer = client.post("/predict", json={"entities": {"customer_id": ids}, "return_features": True})
        assert answer.status_code == 200, answer.text
        return answer.json()["features"]["total_purchases"]

    with serve(bundle(tmp_path / "model", model, store), location_of(store)) as client:
        reader = client.app.predictions.state.online.store
        first = read(client)
        assert first == newest_rows.set_index("customer_id").loc[ids, "total_purchases"].tolist()
        assert len(reader.cache) == len(ids)
        assert read(client) == first  # answered from memory
        assert client.post("/predict", json={"entities": {"customer_id": [unknown]}}).status_code == 422
        assert len(reader.cache) == len(ids)  # an id the store does not hold is not remembered

        changed = newest_rows[newest_rows["customer_id"].isin(ids)].assign(
            total_purchases=lambda rows: rows["total_purchases"] + 1000
        )
        store.write_to_online_store("customer_features", changed)
        assert read(client) == [value + 1000 for value in first]


def test_redis_urls_come_from_feasts_connection_strings(home):
    config = feature_store.load_repo_config(
        online_store={"type": "redis", "connection_string": "cache.internal:6380,db=3,ssl=true,password=p@ss/word"}
    )
    assert serving_location(config) == "rediss://:p%40ss%2Fword@cache.internal:6380/3"


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_generated_entity_request_gets_a_server_error(tmp_path, model, sqlite_store, serve, mode):
    """Schemathesis cases from the app's own OpenAPI, which describes the entity body for this model
    (its join key, typed): answered (200) or refused naming why (422), never a 5xx."""
    import hypothesis
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    with serve(bundle(tmp_path / "model", model, sqlite_store), location_of(sqlite_store)) as client:
        schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
        document = client.get("/openapi.json").json()
        bodies = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert any("entities" in body.get("properties", {}) for body in bodies["oneOf"])
        operation = next(op.ok() for op in schema.get_all_operations() if op.ok().path == "/predict")

        @hypothesis.settings(max_examples=60, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
        @hypothesis.given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        def call(case):
            response = case.call(session=client)
            case.validate_response(response, checks=[not_a_server_error])
            if mode == "positive":
                assert response.status_code in (200, 422), response.text

        call()
