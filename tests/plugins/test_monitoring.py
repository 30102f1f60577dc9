"""Monitoring over windows: no false alarms, shifts caught, alerts that persist, one retrain, both stores.

Real parts: the platform's own model pipeline fitted on the sample customers, its reference profile
as training logs it, the scorer, and the monitoring database on SQLite and on this machine's Postgres.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from asgard.monitoring import report as monitoring_report
from asgard.monitoring.alerts import decide_alerts, external_record, retrain_reason
from asgard.monitoring.evaluation import evaluate
from asgard.monitoring.reference import Reference
from asgard.monitoring.store import MonitoringStore
from asgard.monitoring.thresholds import MonitoringError, Thresholds
from asgard.monitoring.windows import assemble_window, default_window, read_sources
from asgard.registry.versions import prepare_features
from asgard.scoring.scorer import Scorer
from asgard.training import data as training_data
from asgard.training import trainers
from conftest import postgres_url
from sample_data.gold_layer import GoldSpec, simulate
from sample_data.models import SAMPLE_FEATURES, SEED_MONITORING_REQUEST

START = datetime(2026, 10, 1, tzinfo=UTC)


def customers(count: int, seed: int) -> pd.DataFrame:
    snapshots, labels = simulate(GoldSpec(customers=count, days=1, seed=seed))
    frame = snapshots[-1].to_pandas().merge(labels.to_pandas()[["customer_id", "churned"]], on="customer_id")
    return pd.concat([prepare_features(frame[SAMPLE_FEATURES]), frame["churned"]], axis=1)


@pytest.fixture(scope="module")
def reference():
    train = customers(8_000, seed=1)
    features, target = train[SAMPLE_FEATURES], train["churned"]
    spec = trainers.ModelSpec.from_request(
        {
            "framework": "sklearn",
            "model_type": "classification",
            "algorithm": "logistic_regression",
            "hyperparameters": {"params": {"max_iter": 500}},
        }
    )
    model = spec.fit(features, target)
    profile = training_data.reference_profile(features, target)
    scorer = Scorer.for_model(model, SAMPLE_FEATURES, "churn_predictor", "1")
    return Reference.from_training(profile, features, scorer, run_id="r1")


@pytest.fixture(scope="module")
def pool():
    """Customers the windows are drawn from: the training distribution, other draws."""
    return customers(40_000, seed=7)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield MonitoringStore(f"sqlite:///{tmp_path / 'monitoring.db'}")
        return
    name = f"asgard_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    created = MonitoringStore(postgres_url(name))
    try:
        yield created
    finally:
        created.engine.dispose()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))  # the lock engine's pool too
        admin.dispose()


def run_window(reference, store, frame, index, thresholds=None):
    thresholds = thresholds or Thresholds()
    start = START + timedelta(days=index)
    window = assemble_window(reference, [frame], start, start + timedelta(days=1), None)
    records, skipped = evaluate(reference, window, thresholds)
    alerts = decide_alerts(records, thresholds, store)
    store.replace_run(f"monitor_model/run-{index}", reference.model_name, reference.model_version, records)
    return records, alerts, skipped


def test_windows_from_the_training_distribution_raise_at_most_one_alert(reference, pool, store):
    alerts = []
    for index in range(50):
        frame = pool.sample(1_000, random_state=index)[SAMPLE_FEATURES]
        alerts += run_window(reference, store, frame, index)[1]
    assert len(alerts) <= 1, [record.alerts for record in alerts]
    history = store.history("churn_predictor", limit=1000)
    assert history["summary"]["total_alerts"] == len(alerts)
    assert set(history["summary"]["metric_types"]) == {"feature_drift", "prediction_drift", "data_quality"}


def test_a_quarter_standard_deviation_shift_in_one_feature_is_flagged_within_two_windows(reference, pool, store):
    std = reference.features["avg_purchase_value"].std
    flagged_at = None
    for index in range(2):
        frame = pool.sample(1_000, random_state=100 + index)[SAMPLE_FEATURES].copy()
        frame["avg_purchase_value"] += 0.25 * std
        records, alerts, _ = run_window(reference, store, frame, index)
        drifted = {record.subject for record in records if record.metric_type == "feature_drift" and record.breached}
        assert "avg_purchase_value" in drifted
        if alerts and flagged_at is None:
            flagged_at = index
            assert [record.subject for record in alerts] == ["avg_purchase_value"]
            assert "drift_score drift detected" in alerts[0].alerts[0]
    assert flagged_at is not None and flagged_at <= 1


def test_one_window_breach_does_not_alert_when_persistence_asks_for_two(reference, pool, store):
    frame = pool.sample(1_000, random_state=5)[SAMPLE_FEATURES].copy()
    frame["total_purchases"] *= 3
    records, alerts, _ = run_window(reference, store, frame, 0)
    assert any(record.breached for record in records) and not alerts
    _, alerts, _ = run_window(reference, store, pool.sample(1_000, random_state=6)[SAMPLE_FEATURES], 1)
    assert not alerts  # back to normal: the streak is broken


def test_retraining_is_requested_once_per_cool_down_not_per_window(store):
    now = START
    claims = [
        store.claim_retrain(
            "churn_predictor",
            "1",
            reason="drift",
            source_run=f"monitor_model/run-{day}",
            now=now + timedelta(days=day),
            cooldown=timedelta(hours=72),
        )
        for day in range(5)
    ]
    assert claims == [True, False, False, True, False]
    # A retried task of the run that claimed still holds its claim, and records no second request.
    assert store.claim_retrain(
        "churn_predictor",
        "1",
        reason="drift",
        source_run="monitor_model/run-3",
        now=now + timedelta(days=30),
        cooldown=timedelta(hours=72),
    )
    assert store.last_retrain("churn_predictor") == now + timedelta(days=3)


def test_a_retried_run_replaces_its_records(reference, pool, store):
    frame = pool.sample(1_000, random_state=11)[SAMPLE_FEATURES]
    first, _, _ = run_window(reference, store, frame, 0)
    run_window(reference, store, frame, 0)
    assert store.history("churn_predictor", limit=1000)["total_records"] == len(first)


def test_empty_and_small_windows_give_no_drift_verdict(reference, pool, store):
    records, alerts, skipped = run_window(reference, store, pool.iloc[:0][SAMPLE_FEATURES], 0)
    assert records == [] and alerts == [] and "no scored rows" in skipped[0]
    small = pool.sample(50, random_state=1)[SAMPLE_FEATURES].copy()
    small["avg_purchase_value"] += 10 * reference.features["avg_purchase_value"].std
    records, alerts, skipped = run_window(reference, store, small, 1)
    assert not [record for record in records if record.metric_type.endswith("drift")]
    assert any("fewer than min_samples 500" in reason for reason in skipped)


def test_schema_change_and_missing_values_are_data_quality_problems(reference, pool, store):
    frame = pool.sample(1_000, random_state=3)[SAMPLE_FEATURES].copy()
    frame.loc[frame.index[:100], "account_age_days"] = np.nan
    frame["segment"] = frame["segment"].where(frame.index % 5 != 0, "government")
    records, _, _ = run_window(reference, store, frame, 0)
    quality = {record.subject: record for record in records if record.metric_type == "data_quality"}
    assert quality["account_age_days"].metrics["missing_rate"] == pytest.approx(0.1)
    assert quality["account_age_days"].breached
    assert quality["segment"].metrics["unseen_rate"] > 0.15 and quality["segment"].breached

    renamed = frame.rename(columns={"support_tickets_count": "tickets"}).assign(prediction="0")
    records, alerts, _ = run_window(reference, store, renamed, 1)
    schema = [record for record in alerts if record.subject == "schema"]
    assert schema and "input column 'support_tickets_count' is missing" in schema[0].alerts[0]
    # The quality problems of window 0 persist in window 1: now they alert too.
    assert {"account_age_days", "segment"} <= {record.subject for record in alerts}


def test_performance_from_labels_and_the_accuracy_threshold(reference, pool, store):
    labelled = pool.sample(1_000, random_state=21)
    window = assemble_window(reference, [labelled], START, START + timedelta(days=1), None)
    records, _ = evaluate(reference, window, Thresholds())
    performance = next(record for record in records if record.metric_type == "model_performance")
    predicted = reference.scorer.predict(labelled)["prediction"]
    assert performance.metrics["accuracy"] == pytest.approx((predicted == labelled["churned"]).mean())
    assert not performance.breached
    strict = Thresholds(accuracy=0.99, persistence=1)
    records, _ = evaluate(reference, window, strict)
    alerts = decide_alerts(records, strict, store)
    assert [record.metric_type for record in alerts] == ["model_performance"]
    assert retrain_reason(alerts).startswith("model_performance: accuracy below threshold")


def test_labels_join_on_prediction_ids(reference, pool):
    scored = pool.sample(600, random_state=8)
    served = scored[SAMPLE_FEATURES].assign(prediction_id=[f"p{i}" for i in range(600)])
    served = served.assign(**reference.scorer.predict(served))
    labels = pd.DataFrame({"prediction_id": [f"p{i}" for i in range(300)], "label": scored["churned"].iloc[:300]})
    window = assemble_window(reference, [served], START, START + timedelta(days=1), labels)
    assert int(window.labels.notna().sum()) == 300  # delayed labels: half have arrived
    records, _ = evaluate(reference, window, Thresholds(min_labels=300))
    performance = next(record for record in records if record.metric_type == "model_performance")
    expected = (served["prediction"].iloc[:300].to_numpy() == scored["churned"].iloc[:300].to_numpy()).mean()
    assert performance.metrics["accuracy"] == pytest.approx(expected)  # labels are float (NaN), predictions int


def test_external_metrics_use_the_same_thresholds_and_history_has_the_seed_shape(store):
    request = SEED_MONITORING_REQUEST
    record = external_record(request, Thresholds())
    store.add(record)
    answer = record.as_response()
    assert answer["alert_triggered"] is True
    assert answer["alerts"] == ["drift_score drift detected: 0.150", "js_divergence drift detected: 0.120"]
    assert answer["monitoring_id"].startswith("mon-")

    history = store.history("churn_predictor", model_version="1", metric_type="prediction_drift")
    assert history["total_records"] == 1
    assert history["records"][0]["metrics"] == request["metrics"]
    assert history["records"][0]["tags"] == {"deployment": "production"}
    assert history["summary"]["total_alerts"] == 1
    assert history["summary"]["metric_types"] == ["prediction_drift"]
    assert history["summary"]["date_range"]["start"].endswith("Z")


def test_unknown_thresholds_and_inverted_windows_are_named():
    with pytest.raises(MonitoringError, match=r"unknown threshold.*driftt"):
        Thresholds.from_dict({"driftt": 0.2})
    with pytest.raises(MonitoringError, match="is not before window_end"):
        default_window(START, "2026-10-02T00:00:00Z", "2026-10-01T00:00:00Z")


def test_the_report_plots_what_drifted(reference, pool, store):
    frame = pool.sample(1_000, random_state=31)[SAMPLE_FEATURES].copy()
    frame["days_since_last_purchase"] *= 2
    records, _, skipped = run_window(reference, store, frame, 0)
    page = monitoring_report.render("churn_predictor", "1", records, skipped, {"start": START, "rows": 1000})
    assert page.count("<svg") == sum(record.breached and record.metric_type.endswith("drift") for record in records)
    assert "days_since_last_purchase: reference (blue) vs window (orange)" in page


def test_window_sources_are_read_from_parquet_and_a_missing_one_is_named(reference, pool, tmp_path):
    path = tmp_path / "window.parquet"
    pool.sample(700, random_state=2).to_parquet(path)
    frames = read_sources([str(path)])
    window = assemble_window(reference, frames, START, START + timedelta(days=1), None)
    assert window.rows == 700 and list(window.features.columns) == SAMPLE_FEATURES
    assert window.labels.notna().all()  # the file carries the target: performance needs no join
    with pytest.raises(MonitoringError, match=r"cannot read the window's data .*missing.parquet"):
        read_sources([str(tmp_path / "missing.parquet")])
