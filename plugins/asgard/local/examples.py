"""What the main job sends: the seed's own requests (and the example script), as a user would send them.

Tests and benchmarks send the same bodies, so what the main job shows is what they prove.
"""

from __future__ import annotations

import base64
import io

from asgard.core.settings import REPO_ROOT
from asgard.core.storage import Location
from asgard.features.params import EXAMPLE_VIEW
from asgard.scoring.sources import SAMPLE_ENTITIES
from asgard.training.params import SAMPLE_DATA_SOURCE, SAMPLE_HYPERPARAMETERS

# The seed's POST /feast/features payload, registering a second view over the gold layer.
SUPPORT_FEATURES_REQUEST = EXAMPLE_VIEW

# The seed's POST /mlops/models body (without its three-customer entity filter: too few to learn from).
CHURN_MODEL_REQUEST = {
    "experiment_name": "customer_churn",
    "model_name": "churn_predictor",
    "framework": "sklearn",
    "model_type": "classification",
    "data_source": SAMPLE_DATA_SOURCE,
    "hyperparameters": SAMPLE_HYPERPARAMETERS,
    "tags": {"team": "data-science"},
    # The champion is retrained whenever its features are materialized again (a real deployment
    # would wait a day between trainings: the default min_interval_hours is 24).
    "retraining": {"on_new_features": True, "min_interval_hours": 0},
}

# The same request with each framework: every version is gated against the champion so far.
FRAMEWORK_PARAMS = {
    "sklearn": CHURN_MODEL_REQUEST["hyperparameters"]["params"],
    "xgboost": {"n_estimators": 200, "max_depth": 4, "learning_rate": 0.1},
    "lightgbm": {"n_estimators": 200, "num_leaves": 15, "learning_rate": 0.05},
}


def framework_request(framework: str, params: dict) -> dict:
    """The churn model's train_model conf, trained with ``framework``."""
    return {**CHURN_MODEL_REQUEST, "framework": framework, "hyperparameters": {"params": params}}


# The customers the main job predicts for by id (the online store holds their features).
BY_ID_CUSTOMERS = [1, 2, 3]
# The main job's canaries (the champion's, deployed by hand, and the drift retrain's promotion): a fifth of
# live traffic until it has answered 50 requests. Its p99 is the slowest of ~50 requests against the stable
# version's p99 of ~200 on a shared machine: a wide ratio. The champion's deploy returns the features it
# reads by id (expose_features; a deploy's default shows none of the store): the job and tests/e2e compare
# them with Feast's.
CANARY_ROLLOUT = {"strategy": "canary", "percent": 20, "min_requests": 50, "duration": 300, "max_p99_ratio": 5}
CANARY_DEPLOY = {"target": "docker", "expose_features": True, **CANARY_ROLLOUT}

EXAMPLE_SCRIPT = REPO_ROOT / "include" / "examples" / "train_with_feast.py"
# What the example script needs with USE_FEAST=true (pinned to the platform's versions by the runner).
EXAMPLE_REQUIREMENTS = ["scikit-learn", "pandas", "feast[duckdb]", "pyiceberg[sql-sqlite,pyarrow]"]
# In production the feature store's registry and catalog are PostgreSQL: the script needs its driver.
PRODUCTION_EXAMPLE_REQUIREMENTS = [*EXAMPLE_REQUIREMENTS, "psycopg[binary]"]


def example_upload(customers: int = 2000, **changes) -> dict:
    """The seed's POST /mlops/training/upload body carrying include/examples/train_with_feast.py."""
    return {
        "script_name": "train_with_feast.py",
        "script_content": base64.b64encode(EXAMPLE_SCRIPT.read_bytes()).decode(),
        "experiment_name": "feast_deployment",
        "model_name": "churn_predictor_feast",
        "requirements": EXAMPLE_REQUIREMENTS,
        "timeout": 900,
        "env_vars": {"N_CUSTOMERS": str(customers)},
        **changes,
    }


# The seed's POST /mlops/serve/batch body (output_path set per machine).
BATCH_REQUEST = {
    "model_name": "churn_predictor",
    "alias": "champion",
    "feature_views": ["customer_features"],
    "entities_df": SAMPLE_ENTITIES,
}
# Production's batch: eight partitions, which the Celery workers share (embedded: score_batch's own
# partition size, a million rows each).
PRODUCTION_BATCH_PARTITIONS = 8


def every_customer_batch(customers: int, folder: Location, *, partitions: int | None = None) -> dict:
    """score_batch over every sample customer (the main job scores the whole population, at any scale):
    an entity file in ``folder``, in ``partitions`` row groups of one partition each when given."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = -(-customers // partitions) if partitions else None
    buffer = io.BytesIO()
    ids = pa.table({"customer_id": pa.array(np.arange(1, customers + 1, dtype=np.int64))})
    pq.write_table(ids, buffer, row_group_size=rows)
    entities = folder.child("entities.parquet").write_bytes(buffer.getvalue())
    request = {key: value for key, value in BATCH_REQUEST.items() if key != "entities_df"}
    return {**request, "entity_source": {"path": entities.uri}, **({"partition_rows": rows} if rows else {})}


def monitoring_windows(folder: Location, *, days: int, rows: int = 2000) -> tuple[Location, Location]:
    """Two Parquet windows of sample customers with their labels, in ``folder``: as in training, and drifted.

    Other customers of the same simulation (same number of days: recency grows with them), on its last day.
    """
    from sample_data.gold_layer import GoldSpec, simulate_days

    labels: list = []
    for snapshot in simulate_days(GoldSpec(customers=rows, days=days, seed=2026), labels):
        last = snapshot  # the last day's; the others are dropped as they come
    frame = last.to_pandas().merge(labels[0].to_pandas()[["customer_id", "churned"]], on="customer_id")
    normal, drifted = folder.child("normal.parquet"), folder.child("drifted.parquet")
    normal.write_parquet(frame)
    shifted = frame.copy()
    # Customers go quiet: longer since their last purchase, fewer purchases.
    shifted["days_since_last_purchase"] = shifted["days_since_last_purchase"] * 2 + 10
    shifted["total_purchases"] = (shifted["total_purchases"] * 0.5).round()
    drifted.write_parquet(shifted)
    return normal, drifted
