"""The out-of-core point-in-time join against Feast's own ``get_historical_features``: real Feast, a
real Iceberg gold layer (the sample one, plus rows made to hit every edge), small data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pytest

from asgard.features import gold, training_sets
from asgard.features import store as feature_store
from conftest import feature_home, free_port
from sample_data.gold_layer import FEATURE_SCHEMA, FEATURE_TABLE, GoldSpec
from sample_data.models import SAMPLE_FEATURES

SPEC = GoldSpec(customers=60, days=4, end="2026-11-01T00:00:00+00:00", seed=11)
END = SPEC.end_time
TTL = timedelta(days=365)  # customer_features' and customer_labels' TTL in include/feature_repo
FEATURES = [f"customer_features:{name}" for name in SAMPLE_FEATURES]
# Two views, the second without a created timestamp, referenced in an order of their own.
MIXED = ["customer_labels:churned", *FEATURES[::-1], "customer_labels:spend_next_30d"]


def at(days: float, base: datetime = END) -> datetime:
    return base + timedelta(days=days)


def feature_rows(rows: list[tuple]) -> pa.Table:
    """Gold feature rows (customer, event time, created time, a marker in total_purchases)."""
    columns = {name: [] for name in FEATURE_SCHEMA.names}
    for customer, event, created, marker in rows:
        values = {
            "customer_id": customer,
            "event_timestamp": event,
            "created_timestamp": created,
            "total_purchases": marker,
            "avg_purchase_value": float(marker) / 2,
            "days_since_last_purchase": marker % 7,
            "customer_lifetime_value": None if marker % 2 else float(marker),
            "account_age_days": marker,
            "support_tickets_count": None,
            "segment": f"s{marker}",
        }
        for name in columns:
            columns[name].append(values[name])
    return pa.table(columns, schema=FEATURE_SCHEMA)


# Customers 1001.. exist only in these rows; each hits one rule of Feast's join.
TIE_EVENT = at(1)
LATE = [
    # Same event time, different created times: the newest created wins.
    (1001, TIE_EVENT, at(1.1), 1),
    (1001, TIE_EVENT, at(1.3), 2),
    (1001, TIE_EVENT, at(1.2), 3),
    # A late row: written last, created last, but its event time is older: it loses to the newer event.
    (1002, at(2), at(2), 10),
    (1002, at(1), at(30), 11),
    # The only row of 1003 is exactly the TTL old for one entity row, a microsecond past it for another.
    (1003, at(-10), at(-10), 20),
    # A row after the entity time: never seen by it.
    (1004, at(50), at(50), 30),
]

ENTITIES = [
    *((customer, END) for customer in range(1, SPEC.customers + 1)),  # every sample customer, at the end
    *((customer, at(-2.5)) for customer in range(1, 30)),  # mid-history
    (1, at(-30)),  # before any of its rows
    (2, END),  # a duplicate entity row
    (2, at(400)),  # its newest row more than a TTL ago: expired
    (1001, at(1)),  # exactly at the tied rows' event time
    (1001, at(5)),
    (1002, at(3)),
    (1002, at(1.5)),  # between the two: the late row is the newest event not after it
    (1003, at(-10) + TTL),  # exactly the TTL: still live
    (1003, at(-10) + TTL + timedelta(microseconds=1)),  # expired
    (1004, at(49)),
    (999_999, END),  # an entity with no rows at all
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with feature_home(tmp_path_factory.mktemp("training-sets-home"), SPEC):
        gold.load_table(FEATURE_TABLE).append(feature_rows(LATE[:3]))  # a snapshot of its own
        gold.load_table(FEATURE_TABLE).append(feature_rows(LATE[3:]))
        yield feature_store.open_store()


def entity_frame(rows=ENTITIES) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "event_timestamp"])
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).astype("datetime64[us, UTC]")
    frame["churned_label"] = range(len(frame))  # a column of the entity rows' own, carried through
    return frame


def feast_rows(store, entity: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Feast's answer, in the entity rows' order (Feast's own order is whatever its join gives)."""
    joined = store.get_historical_features(entity_df=entity, features=features).to_df()
    return joined.sort_values("churned_label", kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("features", [FEATURES, MIXED], ids=["one-view", "two-views"])
def test_rows_are_feasts_exactly(store, features):
    entity = entity_frame()
    expected = feast_rows(store, entity, features)
    actual = training_sets.get_historical_features(store, entity, features)
    assert len(training_sets.plan_views(store, features)) == len({ref.split(":")[0] for ref in features})
    pd.testing.assert_frame_equal(actual, expected, check_exact=True)


@pytest.mark.parametrize("features", [FEATURES, MIXED], ids=["one-view", "two-views"])
def test_in_passes_of_a_few_entity_rows_each_against_its_own_keys_history_the_rows_are_feasts(store, features):
    entity = entity_frame()  # a customer's rows fall in several passes; every pass reads only its keys' rows
    expected = feast_rows(store, entity, features)
    for rows in (1, 7, len(entity) - 1):
        actual = training_sets.get_historical_features(store, entity, features, rows_per_pass=rows)
        pd.testing.assert_frame_equal(actual, expected, check_exact=True)


def test_passes_grow_with_the_entity_rows_never_with_the_history():
    assert training_sets._rows_per_pass(300) == 300  # one pass: the main job in CI, a scoring chunk
    assert training_sets._rows_per_pass(5_000_000) == 250_000  # 5M customers: 20 passes
    assert training_sets._rows_per_pass(250_001) == 125_001  # shared evenly


def test_in_passes_a_keys_rows_share_a_pass_and_the_answer_keeps_the_entity_rows_order(store):
    entity = entity_frame().sample(frac=1, random_state=3).reset_index(drop=True)  # keys out of order
    entity["churned_label"] = range(len(entity))  # the rows' order, which Feast's answer is sorted back to
    expected = feast_rows(store, entity, MIXED)
    actual = training_sets.get_historical_features(store, entity, MIXED, rows_per_pass=5)
    pd.testing.assert_frame_equal(actual, expected, check_exact=True)


def test_the_edges_come_out_as_feast_says(store):
    """The rules themselves, so a change in both Feast and this module would still be caught."""
    actual = training_sets.get_historical_features(store, entity_frame(), FEATURES).set_index("churned_label")
    marker = actual["total_purchases"]
    rows = {(row.customer_id, row.event_timestamp): index for index, row in entity_frame().iterrows()}

    def value(customer, when):
        return marker[rows[(customer, pd.Timestamp(when))]]

    assert value(1001, at(1)) == 2 and value(1001, at(5)) == 2  # newest created among tied events
    assert value(1002, at(3)) == 10 and value(1002, at(1.5)) == 11  # event time first, then created
    assert value(1003, at(-10) + TTL) == 20
    assert pd.isna(value(1003, at(-10) + TTL + timedelta(microseconds=1)))
    assert pd.isna(value(1004, at(49))) and pd.isna(value(999_999, END)) and pd.isna(value(2, at(400)))
    assert pd.isna(value(1, at(-30)))


def test_a_naive_or_text_timestamp_is_utc_as_in_feast(store):
    entity = entity_frame(ENTITIES[:5] + ENTITIES[-8:])
    naive = entity.assign(event_timestamp=entity["event_timestamp"].dt.tz_localize(None))
    pd.testing.assert_frame_equal(
        training_sets.get_historical_features(store, naive, FEATURES), feast_rows(store, naive, FEATURES)
    )


def test_a_small_memory_limit_spills_and_gives_the_same_rows(store, tmp_path):
    entity = entity_frame()
    expected = training_sets.get_historical_features(store, entity, MIXED)
    actual = training_sets.get_historical_features(store, entity, MIXED, memory_limit="64MB", spill_dir=str(tmp_path))
    pd.testing.assert_frame_equal(actual, expected)
    assert list(tmp_path.iterdir()) == []  # the scratch folder is gone


def test_another_offline_store_is_left_to_feast_and_its_errors(store, monkeypatch):
    """Production's Trino keeps Feast's own join: a Trino that does not answer is named, as before."""
    trino = SimpleNamespace(type="trino", http_scheme="http", host="127.0.0.1", port=free_port())
    monkeypatch.setattr(store.config, "_offline_store", trino)
    with pytest.raises(training_sets.UnsupportedJoin, match="offline store 'trino'"):
        training_sets.plan_views(store, FEATURES)
    with pytest.raises(feature_store.OfflineStoreUnavailableError, match="does not answer"):
        training_sets.get_historical_features(store, entity_frame(), FEATURES)


def test_rows_before_every_feature_row_have_no_features(store):
    entity = entity_frame([(1, datetime(2020, 1, 1, tzinfo=UTC)), (2, datetime(2020, 1, 2, tzinfo=UTC))])
    actual = training_sets.get_historical_features(store, entity, FEATURES)
    pd.testing.assert_frame_equal(actual, feast_rows(store, entity, FEATURES))
    assert actual[SAMPLE_FEATURES].isna().all().all()


def test_the_training_set_is_feasts_join_of_the_label_table(store):
    """``build_training_set`` (what ``train_model`` fits on) through this join: Feast's rows, in its order."""
    from asgard.training import data

    source = data.check_data_source({"feature_views": ["customer_features"], "target_column": "churned"}, store)
    frame, lineage = data.build_training_set(source, store)
    labels = gold.load_table(data.DEFAULT_LABEL_TABLE).scan().to_pandas()
    expected = store.get_historical_features(entity_df=labels, features=list(source.features)).to_df()
    keys = [column for column in labels.columns if column != "churned"]
    pd.testing.assert_frame_equal(frame, expected.sort_values(keys, kind="stable").reset_index(drop=True))
    assert lineage["rows"] == SPEC.customers
