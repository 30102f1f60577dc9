"""Materializations of several views into one SQLite online store take turns on the platform's lock
table: real Feast, a real Iceberg gold layer, real processes."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from datetime import timedelta

import pandas as pd
import pytest

from asgard.core import locks
from asgard.core.settings import get_settings
from asgard.features import materialization
from asgard.features import store as feature_store
from conftest import feature_home
from sample_data.gold_layer import GoldSpec
from sample_data.models import SAMPLE_FEATURES

SPEC = GoldSpec(customers=80, days=3, end="2026-11-01T00:00:00+00:00", seed=5)
VIEWS = ("customer_features", "customer_features_copy")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A small gold layer, the feature repo, and a second online view over the same gold table."""
    from feast import FeatureView

    with feature_home(tmp_path_factory.mktemp("turns-home"), SPEC) as path:
        store = feature_store.open_store()
        view = store.get_feature_view("customer_features")
        copy = FeatureView(
            name=VIEWS[1],
            entities=[store.get_entity("customer")],
            ttl=view.ttl,
            schema=[*view.entity_columns, *view.features],
            source=view.batch_source,
            online=True,
        )
        store.apply([copy])
        yield path


def store_on(path):
    return feature_store.open_store(online_store={"type": "sqlite", "path": str(path)})


def online(store, view: str) -> pd.DataFrame:
    rows = [{"customer_id": i} for i in range(1, SPEC.customers + 1)]
    refs = [f"{view}:{name}" for name in SAMPLE_FEATURES]
    return store.get_online_features(features=refs, entity_rows=rows).to_df().set_index("customer_id")


def window(view: str) -> materialization.Window:
    return materialization.Window(view, SPEC.start_time, SPEC.end_time + timedelta(seconds=1))


def test_a_writer_waits_for_the_one_holding_the_store_then_writes(home, tmp_path):
    store = store_on(tmp_path / "online.db")
    name = materialization.online_store_lock(store)
    assert name == materialization.online_store_lock(store_on(tmp_path / "." / "online.db"))  # one file, one lock
    outcome = {}

    def materialize() -> None:
        store = store_on(tmp_path / "online.db")
        outcome["result"] = materialization.materialize_window(store, window(VIEWS[0]), progress=lambda _: None)
        outcome["done"] = time.monotonic()

    with locks.held(get_settings().monitoring_db_url, name, "another writer"):
        worker = threading.Thread(target=materialize)
        worker.start()
        time.sleep(5)  # long enough to read the small window: then it waits for its turn to write
        assert worker.is_alive() and "result" not in outcome
        released = time.monotonic()
    worker.join(timeout=120)
    assert outcome["result"].rows_written == SPEC.customers and outcome["done"] > released
    assert online(store, VIEWS[0])[SAMPLE_FEATURES].notna().any().all()


def _materialize(home: str, online_path: str, view: str, results) -> None:
    os.environ["ASGARD_HOME"] = home
    try:
        result = materialization.materialize_window(store_on(online_path), window(view), progress=lambda _: None)
        results.put((view, result.rows_written))
    except Exception as error:  # reported to the test, which names it
        results.put((view, repr(error)))


def test_views_materialized_side_by_side_into_one_store_all_succeed(home, tmp_path):
    path = tmp_path / "online.db"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_materialize, args=(str(home), str(path), view, results)) for view in VIEWS]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(outcomes) == [(view, SPEC.customers) for view in sorted(VIEWS)]
    store = store_on(path)
    pd.testing.assert_frame_equal(
        online(store, VIEWS[0])[SAMPLE_FEATURES], online(store, VIEWS[1])[SAMPLE_FEATURES], check_names=False
    )
