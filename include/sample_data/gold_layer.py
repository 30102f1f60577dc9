"""Generate the sample gold layer: customers with the seed's features, daily snapshots, churn labels.

Deterministic for a given seed and size. Each day is one Iceberg snapshot (one append), rows spread
over the day; a few values are missing; ``segment`` is categorical. The churn label depends on the
features (through a logistic model), so a trained model beats the majority-class baseline; the
regression label ``spend_next_30d`` follows each customer's purchase rate and basket value.
``--drift-from`` shifts the distributions of rows from that time on (for monitoring tests).

    python include/sample_data/gold_layer.py --customers 2000 --days 14
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa

FEATURE_TABLE = "customer_features"
LABEL_TABLE = "customer_labels"
SEGMENTS = np.array(["consumer", "smb", "enterprise"])
GENERATOR_PROPERTY = "asgard.generator"
# Bumped whenever the generated data changes shape, so an older gold layer is regenerated.
GENERATOR_VERSION = 2

FEATURE_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.int64(), nullable=False),
        pa.field("event_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("created_timestamp", pa.timestamp("us", tz="UTC")),
        pa.field("total_purchases", pa.int64()),
        pa.field("avg_purchase_value", pa.float64()),
        pa.field("days_since_last_purchase", pa.int64()),
        pa.field("customer_lifetime_value", pa.float64()),
        pa.field("account_age_days", pa.int64()),
        pa.field("support_tickets_count", pa.int64()),
        pa.field("segment", pa.string()),
    ]
)
LABEL_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.int64(), nullable=False),
        pa.field("event_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("churned", pa.int64(), nullable=False),
        pa.field("spend_next_30d", pa.float64(), nullable=False),
    ]
)


@dataclass(frozen=True)
class GoldSpec:
    """What to generate; stored on the tables so an identical second run is a no-op."""

    customers: int = 2000
    days: int = 14
    end: str = "2026-11-01T00:00:00+00:00"
    seed: int = 42
    missing_rate: float = 0.01
    drift_from: str | None = None

    @property
    def end_time(self) -> datetime:
        return datetime.fromisoformat(self.end)

    @property
    def start_time(self) -> datetime:
        return self.end_time - timedelta(days=self.days)

    @property
    def label_time(self) -> datetime:
        """Labels are observed at the end of the generated period."""
        return self.end_time

    def fingerprint(self) -> str:
        return json.dumps({**asdict(self), "generator_version": GENERATOR_VERSION}, sort_keys=True)


def churn_probability(features: dict[str, np.ndarray]) -> np.ndarray:
    """The ground truth the labels are drawn from: a logistic model of the features."""
    segment_effect = np.select(
        [features["segment"] == "consumer", features["segment"] == "smb"], [0.4, 0.0], default=-0.6
    )
    logit = (
        -1.2
        + 0.045 * features["days_since_last_purchase"]
        - 0.035 * features["total_purchases"]
        + 0.45 * features["support_tickets_count"]
        - 0.0012 * (features["account_age_days"] - 700)
        + segment_effect
    )
    return 1.0 / (1.0 + np.exp(-logit))


def simulate(spec: GoldSpec) -> tuple[list[pa.Table], pa.Table]:
    """The daily feature snapshots (one Arrow table per day) and the label table."""
    labels: list[pa.Table] = []
    days = list(simulate_days(spec, labels))
    return days, labels[0]


def simulate_days(spec: GoldSpec, labels: list[pa.Table]) -> Iterator[pa.Table]:
    """The daily feature snapshots one at a time, then the label table appended to ``labels``: a writer
    holds one day of millions of customers, not the whole history."""
    rng = np.random.default_rng(spec.seed)
    n = spec.customers
    ids = np.arange(1, n + 1, dtype=np.int64)
    segment = SEGMENTS[rng.choice(3, size=n, p=[0.6, 0.3, 0.1])]
    age0 = rng.integers(30, 2000, size=n)
    purchase_rate = rng.gamma(2.0, 0.08, size=n)  # purchases per day
    value_mean = rng.lognormal(3.8, 0.5, size=n) * np.where(segment == "enterprise", 3.0, 1.0)
    ticket_rate = rng.gamma(1.2, 0.03, size=n)
    purchases = rng.poisson(purchase_rate * age0 * 0.2)
    tickets = rng.poisson(ticket_rate * 30)
    since_last = rng.integers(0, 60, size=n)
    drift_from = datetime.fromisoformat(spec.drift_from) if spec.drift_from else None

    state: dict[str, np.ndarray] = {}
    for day in range(spec.days):
        day_start = spec.start_time + timedelta(days=day)
        bought = rng.poisson(purchase_rate)
        purchases = purchases + bought
        since_last = np.where(bought > 0, 0, since_last + 1)
        tickets = tickets + rng.poisson(ticket_rate)
        age = age0 + day
        avg_value = np.round(value_mean * rng.normal(1.0, 0.05, size=n), 2)
        seconds = np.sort(rng.integers(0, 86400, size=n))
        stamps = np.datetime64(day_start.replace(tzinfo=None), "us") + seconds.astype("timedelta64[s]")
        state = {
            "total_purchases": purchases.astype(np.int64),
            "avg_purchase_value": avg_value,
            "days_since_last_purchase": since_last.astype(np.int64),
            "customer_lifetime_value": np.round(purchases * avg_value, 2),
            "account_age_days": age.astype(np.int64),
            "support_tickets_count": tickets.astype(np.int64),
            "segment": segment,
        }
        if drift_from is not None and day_start >= drift_from:
            state = _drifted(state, rng)
        columns = {
            "customer_id": ids,
            "event_timestamp": stamps,
            "created_timestamp": stamps,
            **state,
        }
        table = pa.table(columns).cast(FEATURE_SCHEMA)
        missing = rng.random(n) < spec.missing_rate
        table = table.set_column(
            table.schema.get_field_index("avg_purchase_value"),
            "avg_purchase_value",
            pa.array(np.where(missing, np.nan, avg_value), type=pa.float64(), mask=missing),
        )
        yield table
        del table

    churned = (rng.random(n) < churn_probability(state)).astype(np.int64)
    # A regression target: what a customer spends in the next 30 days, driven by their purchase
    # rate and basket value (seen through the features) and near zero once they churn.
    expected_spend = purchase_rate * 30 * value_mean * np.where(churned == 1, 0.1, 1.0)
    spend = np.round(np.maximum(0.0, expected_spend * rng.lognormal(0.0, 0.25, size=n)), 2)
    label_stamp = np.full(n, np.datetime64(spec.label_time.replace(tzinfo=None), "us"))
    labels.append(
        pa.table(
            {"customer_id": ids, "event_timestamp": label_stamp, "churned": churned, "spend_next_30d": spend}
        ).cast(LABEL_SCHEMA)
    )


def _drifted(state: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Customers disengage: longer gaps, more tickets, and more consumer accounts."""
    drifted = dict(state)
    drifted["days_since_last_purchase"] = (state["days_since_last_purchase"] * 1.8 + 10).astype(np.int64)
    drifted["support_tickets_count"] = state["support_tickets_count"] + rng.poisson(2.0, size=len(state["segment"]))
    flip = rng.random(len(state["segment"])) < 0.3
    drifted["segment"] = np.where(flip, "consumer", state["segment"])
    return drifted


def write_gold_layer(spec: GoldSpec, location=None, *, force: bool = False, log=print) -> bool:
    """Write both tables; returns False (and writes nothing) when they already hold this spec."""
    from asgard.features.gold import GOLD_NAMESPACE, load_catalog

    catalog = load_catalog(location)
    catalog.create_namespace_if_not_exists(GOLD_NAMESPACE)
    feature_id, label_id = f"{GOLD_NAMESPACE}.{FEATURE_TABLE}", f"{GOLD_NAMESPACE}.{LABEL_TABLE}"
    if not force and catalog.table_exists(feature_id) and catalog.table_exists(label_id):
        existing = catalog.load_table(label_id).properties.get(GENERATOR_PROPERTY)
        if existing == spec.fingerprint():
            log(f"gold layer already generated with {existing}")
            return False
    for identifier in (feature_id, label_id):
        if catalog.table_exists(identifier):
            catalog.purge_table(identifier)

    features = catalog.create_table(feature_id, schema=FEATURE_SCHEMA)
    # One snapshot per day, as a daily gold job writes them: each day is its own data file whose
    # event_timestamp min/max statistics let a time-window scan skip every other day. Each is written
    # as it is made: the generator holds one day at a time.
    made: list[pa.Table] = []
    rows = snapshots = 0
    for day in simulate_days(spec, made):
        features.append(day)
        rows, snapshots = rows + day.num_rows, snapshots + 1
    (labels,) = made
    label_table = catalog.create_table(
        label_id, schema=LABEL_SCHEMA, properties={GENERATOR_PROPERTY: spec.fingerprint()}
    )
    label_table.append(labels)
    log(f"gold layer: {FEATURE_TABLE} {rows} rows in {snapshots} snapshots, {LABEL_TABLE} {labels.num_rows} rows")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = GoldSpec()
    parser.add_argument("--customers", type=int, default=defaults.customers)
    parser.add_argument("--days", type=int, default=defaults.days)
    parser.add_argument("--end", default=defaults.end, help="end of the generated period (ISO, UTC)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--drift-from", default=None, help="shift distributions from this time on (ISO)")
    parser.add_argument("--force", action="store_true", help="regenerate even if the tables hold this spec")
    args = parser.parse_args(argv)
    if args.customers < 1 or args.days < 1:
        parser.error("--customers and --days must be at least 1")
    spec = GoldSpec(customers=args.customers, days=args.days, end=args.end, seed=args.seed, drift_from=args.drift_from)
    write_gold_layer(spec, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
