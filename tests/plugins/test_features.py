"""Feature store against real Feast, a real Iceberg gold layer and real online stores (SQLite, Redis)."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import redis

from asgard.core.settings import Settings
from asgard.features import gold, materialization, registration
from asgard.features import store as feature_store
from conftest import feature_home
from sample_data.gold_layer import FEATURE_TABLE, LABEL_TABLE, GoldSpec, write_gold_layer
from sample_data.models import SAMPLE_FEATURES

SPEC = GoldSpec(customers=150, days=6, end="2026-11-01T00:00:00+00:00", seed=7)
DATA_START = SPEC.start_time
DATA_END = SPEC.end_time


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """An ASGARD_HOME with a small generated gold layer and the feature repo applied."""
    with feature_home(tmp_path_factory.mktemp("features-home"), SPEC) as path:
        yield path


def sqlite_store(home, name: str | None = None):
    """A store on a fresh SQLite online database (the shared registry, its own online state)."""
    path = home / f"online-{name or uuid.uuid4().hex}.db"
    return feature_store.open_store(online_store={"type": "sqlite", "path": str(path)})


@contextlib.contextmanager
def empty_redis_store(db: int, **options):
    """A store on the machine's Redis database ``db`` (with Feast's redis ``options``), emptied before
    and after."""
    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    client.flushdb()
    online_store = {"type": "redis", "connection_string": f"127.0.0.1:6379,db={db}", **options}
    try:
        yield feature_store.open_store(online_store=online_store)
    finally:
        client.flushdb()


@pytest.fixture
def redis_store(home):
    with empty_redis_store(11) as store:
        yield store


def expected_online(end: datetime) -> pd.DataFrame:
    """The newest gold row per customer before ``end``: what the online store must hold."""
    rows = gold.load_table(FEATURE_TABLE).scan().to_pandas()
    rows = rows[rows["event_timestamp"] < pd.Timestamp(end)]
    latest = rows.sort_values("event_timestamp").drop_duplicates("customer_id", keep="last")
    return latest.set_index("customer_id").sort_index()[SAMPLE_FEATURES]


def online(store) -> pd.DataFrame:
    rows = [{"customer_id": i} for i in range(1, SPEC.customers + 1)]
    refs = [f"customer_features:{name}" for name in SAMPLE_FEATURES]
    frame = store.get_online_features(features=refs, entity_rows=rows).to_df()
    return frame.set_index("customer_id").sort_index()[SAMPLE_FEATURES]


def window(start, end) -> materialization.Window:
    return materialization.Window("customer_features", start, end)


def assert_same(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(actual, expected, check_dtype=False, check_names=False)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_online_values_are_the_latest_gold_rows_as_of_window_end(home, backend, request):
    store = sqlite_store(home) if backend == "sqlite" else request.getfixturevalue("redis_store")
    end = DATA_END - timedelta(days=2, hours=5)  # mid-day: rows after it must not be visible
    result = materialization.materialize_window(store, window(DATA_START, end))
    assert result.rows_read == len(gold.load_table(FEATURE_TABLE).scan().to_pandas().query("event_timestamp < @end"))
    assert result.chunks == 1
    assert_same(online(store), expected_online(end))


def test_many_small_chunks_fold_into_the_same_state(home):
    store = sqlite_store(home)
    result = materialization.materialize_window(store, window(DATA_START, DATA_END), chunk_rows=1, write_rows=40)
    assert result.chunks == SPEC.days  # one chunk per daily data file
    assert result.rows_written == SPEC.customers
    assert_same(online(store), expected_online(DATA_END))


def test_pushed_down_path_gives_the_same_state(home, monkeypatch):
    """The path other offline stores take (Trino in production), run here by Feast's DuckDB store."""
    monkeypatch.setattr(gold.GoldLocation, "of_source", classmethod(lambda cls, source: None))  # no pyiceberg scan
    store = sqlite_store(home)
    result = materialization.materialize_window(store, window(DATA_START, DATA_END), chunk_period=timedelta(hours=12))
    assert result.chunks == 2 * SPEC.days
    assert_same(online(store), expected_online(DATA_END))


def test_backfill_of_two_windows_equals_one_run_over_both(home):
    middle = DATA_START + timedelta(days=3, hours=7)
    split, whole = sqlite_store(home), sqlite_store(home)
    materialization.materialize_window(split, window(DATA_START, middle))
    materialization.materialize_window(split, window(middle, DATA_END))
    materialization.materialize_window(whole, window(DATA_START, DATA_END))
    assert_same(online(split), online(whole))
    assert_same(online(whole), expected_online(DATA_END))


def test_rerunning_a_window_gives_the_same_state(home):
    store = sqlite_store(home)
    materialization.materialize_window(store, window(DATA_START, DATA_END))
    first = online(store)
    materialization.materialize_window(store, window(DATA_START, DATA_END))
    assert_same(online(store), first)


def test_backfilling_an_old_window_never_leaves_older_values_on_top(home):
    store = sqlite_store(home)
    materialization.materialize_window(store, window(DATA_START, DATA_END))
    result = materialization.materialize_window(store, window(DATA_START, DATA_START + timedelta(days=1)))
    assert (
        result.read_until
        == feature_store.open_store()
        .get_feature_view("customer_features")
        .most_recent_end_time.replace(tzinfo=UTC)
        .isoformat()
    )
    assert_same(online(store), expected_online(DATA_END))


def test_watermark_only_moves_forward_and_the_next_run_continues_from_it(home):
    store = sqlite_store(home)
    materialization.materialize_window(store, window(DATA_START, DATA_END))
    materialization.materialize_window(store, window(DATA_START, DATA_START + timedelta(hours=6)))
    view = store.get_feature_view("customer_features")
    assert feature_store.to_utc(view.most_recent_end_time) >= DATA_END
    (planned,) = materialization.plan_windows(store, None, None, DATA_END + timedelta(hours=1))
    assert planned.start >= DATA_END and planned.end == DATA_END + timedelta(hours=1)


def test_unknown_feature_view_is_named(home):
    with pytest.raises(feature_store.FeatureRequestError, match=r"unknown feature view\(s\) nope; registered: "):
        materialization.plan_windows(sqlite_store(home), ["nope"], DATA_START, DATA_END)


# ----------------------------------------------------------------- register_features
def seed_request(**changes):
    request = {
        "name": "customer_support",
        "entities": ["customer_id"],
        "features": [
            {"name": "support_tickets_count", "dtype": "int64"},
            {"name": "days_since_last_purchase", "dtype": "int64"},
        ],
        "source": {"table_name": FEATURE_TABLE, "timestamp_field": "event_timestamp"},
        "ttl_days": 90,
    }
    request.update(changes)
    return request


def test_register_is_created_then_unchanged_then_updated(home):
    store = feature_store.open_store()
    assert registration.register_feature_view(seed_request(), store)["action"] == "created"
    view = store.get_feature_view("customer_support")
    assert [f.name for f in view.features] == ["support_tickets_count", "days_since_last_purchase"]
    assert view.entities == ["customer"]  # reuses the entity that owns the join key
    assert registration.register_feature_view(seed_request(), store)["action"] == "unchanged"
    assert registration.register_feature_view(seed_request(ttl_days=30), store)["action"] == "updated"
    assert store.get_feature_view("customer_support").ttl == timedelta(days=30)


def test_a_view_is_its_registering_teams_and_only_it_or_an_admin_changes_it(home):
    """Another team repointing a view would feed the models trained on it, and their live predictions by
    id, rows of its own: a view is changed only for the team that registered it (or by an admin)."""
    from asgard.core.teams import TeamRefusal

    store = feature_store.open_store()
    name = f"team_view_{uuid.uuid4().hex[:6]}"
    assert registration.register_feature_view(seed_request(name=name), store, team="alpha")["action"] == "created"
    assert store.get_feature_view(name).tags[registration.TEAM_TAG] == "alpha"
    with pytest.raises(TeamRefusal, match="belongs to team 'alpha': a registration for team 'beta' may not"):
        registration.register_feature_view(seed_request(name=name, ttl_days=30), store, team="beta")
    assert store.get_feature_view(name).ttl == timedelta(days=90)
    assert registration.register_feature_view(seed_request(name=name), store, team="alpha")["action"] == "unchanged"
    changed = registration.register_feature_view(seed_request(name=name, ttl_days=10), store, team="x", any_view=True)
    assert changed["action"] == "updated" and store.get_feature_view(name).tags[registration.TEAM_TAG] == "alpha"
    # A view no team registered (the sample's): every team reads it, only an admin changes it.
    shared = f"shared_view_{uuid.uuid4().hex[:6]}"
    registration.register_feature_view(seed_request(name=shared), store)
    with pytest.raises(TeamRefusal, match="was registered by no team"):
        registration.register_feature_view(seed_request(name=shared, ttl_days=5), store, team="alpha")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"source": {"table_name": "orders", "timestamp_field": "event_timestamp"}},
            "table 'orders' is not in the gold",
        ),
        ({"features": [{"name": "total_orders", "dtype": "int64"}]}, "feature column 'total_orders' is not in gold"),
        (
            {"features": [{"name": "segment", "dtype": "float64"}]},
            "'segment' is float64 in the request but large_string",
        ),
        (
            {"features": [{"name": "segment", "dtype": "string"}, {"name": "segment", "dtype": "string"}]},
            "feature 'segment' is listed twice",
        ),
        ({"features": [{"name": "segment", "dtype": "decimal"}]}, "unknown dtype 'decimal'"),
        ({"entities": ["account_id"]}, "entity column 'account_id' is not in gold"),
        (
            {"source": {"table_name": FEATURE_TABLE, "timestamp_field": "total_purchases"}},
            "timestamp column 'total_purchases' has type int64",
        ),
    ],
    ids=["unknown-table", "unknown-column", "bad-dtype", "duplicate", "unknown-dtype", "unknown-entity", "bad-ts"],
)
def test_bad_requests_name_the_problem_and_leave_the_registry_unchanged(home, change, message):
    store = feature_store.open_store()
    before = sorted(registration.definition(v).__repr__() for v in store.list_feature_views())
    request = seed_request(name=f"bad_{uuid.uuid4().hex[:6]}", **change)
    with pytest.raises(feature_store.FeatureRequestError, match=message):
        registration.register_feature_view(request, store)
    assert (
        sorted(registration.definition(v).__repr__() for v in feature_store.open_store().list_feature_views()) == before
    )


def test_all_problems_are_reported_at_once(home):
    request = seed_request(features=[{"name": "a", "dtype": "int64"}, {"name": "b", "dtype": "int64"}])
    with pytest.raises(feature_store.FeatureRequestError) as error:
        registration.validate_request(request)
    assert "'a'" in str(error.value) and "'b'" in str(error.value)


def test_a_second_run_keeps_the_gold_layer_and_another_spec_replaces_it(tmp_path):
    """What a second ``./asgard run`` relies on: the same spec writes nothing (the tables' snapshots stay);
    another spec replaces both tables."""
    location = gold.GoldLocation.for_settings(Settings(home=tmp_path, airflow_port=1, mlflow_port=2))
    spec, said = GoldSpec(customers=50, days=2, seed=3), []
    assert write_gold_layer(spec, location, log=said.append)
    written = {table: gold.snapshot_id(table, location) for table in (FEATURE_TABLE, LABEL_TABLE)}
    assert not write_gold_layer(spec, location, log=said.append)
    assert said[-1] == f"gold layer already generated with {spec.fingerprint()}"
    assert {table: gold.snapshot_id(table, location) for table in written} == written
    bigger = GoldSpec(customers=60, days=2, seed=3)
    assert write_gold_layer(bigger, location, log=said.append)
    assert gold.load_table(LABEL_TABLE, location).scan().to_arrow().num_rows == 60


def test_the_source_is_the_iceberg_table_and_the_profile_picks_what_queries_it(monkeypatch):
    """The registry holds where a view's data is (the gold catalog's Iceberg table, nothing secret in it);
    production's offline store reads it through Trino as iceberg.gold.<table>, or through DuckDB."""
    from asgard.features import trino_store

    for name, value in {"TRINO_HOST": "127.0.0.1", "TRINO_PORT": "8095", "TRINO_USER": "asgard",
                        "ASGARD_FEAST_REGISTRY_URI": "postgresql+psycopg://asgard@db/asgard_feast",
                        "ASGARD_FEAST_REDIS": "redis:6379,db=6"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    production = Settings(home=DATA_HOME_PLACEHOLDER, profile="production", s3_bucket="lake", airflow_port=1)
    assert production.offline_store == "trino"  # production's default
    source = feature_store.gold_source("customer_features", "event_timestamp", settings=production)
    assert type(source).__name__ == "IcebergSource"
    assert (source.catalog_type, source.catalog_name, source.warehouse, source.endpoint) == (
        "sql", "gold", "s3://lake/gold", ""
    )  # fmt: skip
    config = feature_store.load_repo_config(production)
    assert config.offline_store.type == feature_store.TRINO_STORE_TYPE == trino_store.STORE_TYPE
    assert trino_store.is_trino(config) and feature_store.trino_address(config) == "http://127.0.0.1:8095"
    through_trino = trino_store.as_trino_source(source)
    assert type(through_trino).__name__ == "TrinoSource" and through_trino.table == "iceberg.gold.customer_features"
    assert through_trino.timestamp_field == "event_timestamp"
    assert trino_store.as_trino_source(through_trino) is through_trino
    native = production.model_copy(update={"offline_store": "duckdb"})
    assert feature_store.load_repo_config(native).offline_store.type == "duckdb"
    embedded = Settings(home=DATA_HOME_PLACEHOLDER, profile="embedded", airflow_port=1, mlflow_port=2)
    source = feature_store.gold_source("customer_features", "event_timestamp", settings=embedded)
    assert type(source).__name__ == "IcebergSource" and source.catalog_type == "sql"


def test_trinos_catalog_is_made_from_the_settings_pyiceberg_reads(monkeypatch):
    """Trino's iceberg catalog over production's gold layer: the same PostgreSQL database, catalog name and
    warehouse as pyiceberg's, its secrets left to Trino's environment; the Feast configuration that reads it
    (feature_store.production.yaml, offline store trino) names the same catalog."""
    monkeypatch.setenv(
        "PYICEBERG_CATALOG__GOLD__URI", "postgresql+psycopg://asgard:s3cret-pw@db.internal:6432/asgard_gold"
    )
    monkeypatch.setenv("PYICEBERG_CATALOG__GOLD__S3__ENDPOINT", "http://127.0.0.1:5055")
    monkeypatch.setenv("PYICEBERG_CATALOG__GOLD__S3__SECRET_ACCESS_KEY", "s3-secret")
    settings = Settings(home=DATA_HOME_PLACEHOLDER, profile="production", s3_bucket="lake", offline_store="trino")
    properties = dict(line.split("=", 1) for line in gold.trino_catalog(settings).splitlines())
    assert properties["connector.name"] == "iceberg" and properties["iceberg.catalog.type"] == "jdbc"
    assert properties["iceberg.jdbc-catalog.connection-url"] == "jdbc:postgresql://db.internal:6432/asgard_gold"
    assert properties["iceberg.jdbc-catalog.connection-user"] == "asgard"
    assert properties["iceberg.jdbc-catalog.catalog-name"] == gold.PRODUCTION_CATALOG_NAME
    assert properties["iceberg.jdbc-catalog.default-warehouse-dir"] == "s3://lake/gold"
    assert properties["s3.endpoint"] == "http://127.0.0.1:5055"
    text = gold.trino_catalog(settings)
    assert "s3cret-pw" not in text and "s3-secret" not in text
    assert properties["iceberg.jdbc-catalog.connection-password"].startswith("${ENV:")

    for name, value in {"TRINO_HOST": "trino", "TRINO_PORT": "8080", "TRINO_USER": "asgard",
                        "ASGARD_FEAST_REGISTRY_URI": "postgresql+psycopg://asgard@db/asgard_feast",
                        "ASGARD_FEAST_REDIS": "redis:6379,db=6"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    config = feature_store.load_repo_config(settings)
    assert config.offline_store.catalog == "memory"  # Feast's entity uploads
    source = feature_store.gold_source("customer_features", "event_timestamp", settings=settings)
    assert (source.catalog_name, source.namespace) == (gold.PRODUCTION_CATALOG_NAME, gold.GOLD_NAMESPACE)
    # The embedded catalog (SQLite) is not one Trino can read: said so.
    with pytest.raises(gold.GoldLayerError, match="PostgreSQL"):
        gold.trino_catalog(Settings(home=DATA_HOME_PLACEHOLDER, profile="embedded"))


DATA_HOME_PLACEHOLDER = __import__("pathlib").Path("/nonexistent-asgard-home")


@pytest.fixture
def second_redis_store(home):
    with empty_redis_store(12) as store:
        yield store


def newest_source_rows(store) -> pd.DataFrame:
    """One view's newest rows per entity as materialization writes them, with missing values in them."""
    view = store.get_feature_view("customer_features")
    source = view.batch_source
    columns = [c.name for c in view.entity_columns] + [f.name for f in view.features] + [source.timestamp_field]
    if source.created_timestamp_column:
        columns.append(source.created_timestamp_column)
    rows = gold.load_table(FEATURE_TABLE).scan().to_pandas()
    latest = rows.sort_values(source.timestamp_field).drop_duplicates("customer_id", keep="last")[columns]
    latest = latest.reset_index(drop=True)
    latest.loc[::7, "avg_purchase_value"] = float("nan")  # a missing number is Feast's empty value
    latest.loc[::5, "segment"] = None
    return latest


def stored(store, backend: str) -> list:
    """Everything the online store holds for the view, byte for byte."""
    if backend == "sqlite":
        connection = store._get_provider().online_store._get_conn(store.config)
        return connection.execute(
            'SELECT * FROM "asgard_customer_features" ORDER BY entity_key, feature_name'
        ).fetchall()
    client = store._get_provider().online_store._get_client(store.config.online_store)
    return sorted((key, sorted(client.hgetall(key).items())) for key in client.keys("*"))


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_online_writer_stores_exactly_what_feast_stores(home, backend, request):
    from asgard.features.online_writer import FeastWriter, RedisWriter, online_writer
    from asgard.features.sqlite_writer import SqliteWriter

    if backend == "sqlite":
        theirs, ours = sqlite_store(home), sqlite_store(home)
    else:
        theirs, ours = request.getfixturevalue("redis_store"), request.getfixturevalue("second_redis_store")
    view = ours.get_feature_view("customer_features")
    for store in (theirs, ours):
        materialization.ensure_online_table(store, view)
    frame = newest_source_rows(ours)
    assert FeastWriter(theirs, view).write(frame) == len(frame) == SPEC.customers
    writer = online_writer(ours, view)
    assert type(writer) is {"sqlite": SqliteWriter, "redis": RedisWriter}[backend]
    # Twice: the second write replaces (upserts) the first, as a later materialization does.
    writer.write(frame.assign(total_purchases=frame["total_purchases"] + 1))
    assert writer.write(frame) == len(frame)

    assert stored(ours, backend) == stored(theirs, backend)
    assert_same(online(ours), online(theirs))
    missing = frame.set_index("customer_id")["avg_purchase_value"].isna()
    assert online(ours)["avg_purchase_value"].isna().equals(missing.sort_index()) and missing.sum() >= 22


def test_the_sqlite_writer_stores_created_times_as_feast_does(home):
    """A view with a created-time column: its created_ts column (NULL without one) is Feast's too."""
    from asgard.features.online_writer import FeastWriter
    from asgard.features.sqlite_writer import SqliteWriter

    theirs, ours = sqlite_store(home), sqlite_store(home)
    source = {"table_name": FEATURE_TABLE, "timestamp_field": "event_timestamp"}
    registration.register_feature_view(
        seed_request(source={**source, "created_timestamp_column": "created_timestamp"}), ours
    )
    view = ours.get_feature_view("customer_support")
    rows = gold.load_table(FEATURE_TABLE).scan().to_pandas().drop_duplicates("customer_id", keep="last")
    frame = rows[
        ["customer_id", "support_tickets_count", "days_since_last_purchase", "event_timestamp", "created_timestamp"]
    ]
    for store in (theirs, ours):
        materialization.ensure_online_table(store, view)
    FeastWriter(theirs, view).write(frame)
    assert SqliteWriter(ours, view).write(frame) == len(frame) == SPEC.customers

    def table(store) -> list:
        connection = store._get_provider().online_store._get_conn(store.config)
        return connection.execute(
            'SELECT * FROM "asgard_customer_support" ORDER BY entity_key, feature_name'
        ).fetchall()

    assert table(ours) == table(theirs)
    assert all(row[-1] is not None for row in table(ours))  # created_ts written, not NULL


def test_a_new_sqlite_online_store_gets_large_pages_and_an_existing_one_keeps_its_own(home):
    import sqlite3

    def page_size(path) -> int:
        with contextlib.closing(sqlite3.connect(path)) as connection:
            return connection.execute("PRAGMA page_size").fetchone()[0]

    new, existing = home / f"online-{uuid.uuid4().hex}.db", home / f"online-{uuid.uuid4().hex}.db"
    with contextlib.closing(sqlite3.connect(existing)) as connection:
        connection.execute("CREATE TABLE kept (x)")
    for path in (new, existing):
        store = feature_store.open_store(online_store={"type": "sqlite", "path": str(path)})
        materialization.ensure_online_table(store, store.get_feature_view("customer_features"))
    assert page_size(new) == feature_store.SQLITE_PAGE_SIZE == 16_384
    assert page_size(existing) == 4096  # SQLite's default, as the file was made


def test_a_failed_sqlite_batch_keeps_the_batches_before_it_and_leaves_no_staging_behind(home):
    """Each batch is its own transaction: a batch that cannot be encoded stops the write, the batches
    spread before it stay whole, and the staging databases are detached and removed."""
    from asgard.features.online_writer import FeastWriter
    from asgard.features.sqlite_writer import SqliteWriter

    ours = sqlite_store(home)
    view = ours.get_feature_view("customer_features")
    materialization.ensure_online_table(ours, view)
    frame = newest_source_rows(ours)
    writer = SqliteWriter(ours, view)
    batches = [batch["customer_id"].tolist() for batch, _ in writer.batches(frame, 50)]
    assert len(batches) == 3
    broken = frame.astype({"total_purchases": object})
    broken.loc[broken["customer_id"] == batches[2][0], "total_purchases"] = "many"
    with pytest.raises((TypeError, ValueError)):
        writer.write(broken, batch_rows=50)

    connection = ours._get_provider().online_store._get_conn(ours.config)
    kept = connection.execute('SELECT entity_key, count(*) FROM "asgard_customer_features" GROUP BY 1').fetchall()
    assert len(kept) == 100 and {count for _, count in kept} == {len(view.features)}
    assert [name for _, name, _ in connection.execute("PRAGMA database_list")] == ["main"]
    assert not connection.in_transaction
    assert not list(Path(tempfile.gettempdir()).glob("asgard-sqlite-staging-*"))
    assert writer.write(frame, batch_rows=50) == len(frame)  # the same connection writes on
    theirs = sqlite_store(home)
    materialization.ensure_online_table(theirs, view)
    FeastWriter(theirs, view).write(frame)
    assert stored(ours, "sqlite") == stored(theirs, "sqlite")


def test_the_redis_writer_expires_entities_as_feast_does(home):
    """With Feast's ``key_ttl_seconds`` every entity's hash gets the same TTL from both writers."""
    from asgard.features.online_writer import FeastWriter, RedisWriter

    with empty_redis_store(11, key_ttl_seconds=3600) as theirs, empty_redis_store(12, key_ttl_seconds=3600) as ours:
        view = ours.get_feature_view("customer_features")
        frame = newest_source_rows(ours)
        FeastWriter(theirs, view).write(frame)
        assert RedisWriter(ours, view).write(frame, batch_rows=97) == len(frame)
        assert stored(ours, "redis") == stored(theirs, "redis")
        for store in (theirs, ours):
            client = store._get_provider().online_store._get_client(store.config.online_store)
            ttls = {client.ttl(key) for key in client.keys("*")}
            assert len(client.keys("*")) == len(frame) and ttls <= set(range(3500, 3601)), ttls


@pytest.mark.parametrize(
    ("type_name", "values"),
    [
        ("INT64", [0, 1, 127, 128, 300, 2**31, 2**62, -1, -300, 2**63 - 1, -(2**63)]),
        ("INT64", [3.0, float("nan"), -5.0, 2.0**40]),  # integers with a missing value, as pandas holds them
        ("INT32", pd.Series([0, 5, -5, 2**31 - 1], dtype="int32")),
        ("DOUBLE", [0.0, 1.5, float("nan"), -3e300, 1e-300]),
        ("FLOAT", [0.0, 1.1, float("nan"), 3e38]),
        ("STRING", pd.Series(["a", "", None, "é" * 100, "x" * 200, float("nan")], dtype=object)),
    ],
)
def test_column_encodings_are_feasts_byte_for_byte(type_name, values):
    """Every edge of the column-at-once encodings against Feast's own per-value functions."""
    from feast.value_type import ValueType

    from asgard.features.encoding import fast_encoded, feast_encoded

    series = values if isinstance(values, pd.Series) else pd.Series(values)
    fast = fast_encoded(type_name, series, texts=True)
    assert fast is not None
    assert fast == feast_encoded(series, getattr(ValueType, type_name), texts=True)


def test_a_fraction_in_an_integer_column_is_left_to_feast():
    from asgard.features.encoding import fast_encoded

    assert fast_encoded("INT64", pd.Series([1.5, 2.0]), texts=True) is None


def test_event_times_encode_as_protobufs_timestamps():
    from google.protobuf.timestamp_pb2 import Timestamp

    from asgard.features.encoding import timestamps

    stamps = pd.DatetimeIndex(
        ["1970-01-01T00:00:00", "2026-11-01T00:00:00", "2026-11-01T12:34:56.789012", "1969-12-31T23:59:59.5"], tz="UTC"
    )
    expected = []
    for stamp in stamps.to_pydatetime():
        proto = Timestamp()
        proto.FromDatetime(stamp)
        expected.append(proto.SerializeToString())
    assert timestamps(stamps) == expected
