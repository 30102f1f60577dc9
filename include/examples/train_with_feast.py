"""Train a churn model from Feast features and log it to MLflow: a user script for `train_script`.

Upload it through the Airflow REST API (see the README). The platform runs it in its own virtualenv
and injects: MLFLOW_TRACKING_URI, MLFLOW_RUN_ID (the run to log into), EXPERIMENT_NAME, MODEL_NAME,
USE_FEAST, FEAST_REPO_PATH, FEATURE_VIEW_NAME. Optional env_vars: N_CUSTOMERS (default 2000).

With USE_FEAST=true the training set is a point-in-time join of FEATURE_VIEW_NAME's features and the
`customer_labels` view; otherwise a synthetic dataset of the same shape. Requirements: scikit-learn,
pandas (and feast, pyiceberg with sqlite, duckdb when USE_FEAST=true).
"""

import os
from datetime import UTC, datetime

import mlflow
import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import train_test_split

FEATURES = [
    "total_purchases",
    "avg_purchase_value",
    "days_since_last_purchase",
    "customer_lifetime_value",
    "account_age_days",
    "support_tickets_count",
]


def feast_training_set(n_customers: int) -> pd.DataFrame:
    from feast import FeatureStore

    store = FeatureStore(repo_path=os.environ["FEAST_REPO_PATH"])
    view = os.environ.get("FEATURE_VIEW_NAME", "customer_features")
    entities = pd.DataFrame(
        {
            "customer_id": np.arange(1, n_customers + 1, dtype=np.int64),
            "event_timestamp": pd.Timestamp(datetime.now(UTC)),
        }
    )
    refs = [f"{view}:{name}" for name in FEATURES] + ["customer_labels:churned"]
    frame = store.get_historical_features(entity_df=entities, features=refs).to_df()
    print(f"fetched {len(frame)} rows from Feast view {view}")
    return frame.dropna(subset=["churned"])


def synthetic_training_set(n_customers: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "total_purchases": rng.poisson(20, n_customers),
            "avg_purchase_value": rng.lognormal(3.8, 0.5, n_customers),
            "days_since_last_purchase": rng.integers(0, 90, n_customers),
            "account_age_days": rng.integers(30, 2000, n_customers),
            "support_tickets_count": rng.poisson(3, n_customers),
        }
    )
    frame["customer_lifetime_value"] = frame["total_purchases"] * frame["avg_purchase_value"]
    logit = 0.05 * frame["days_since_last_purchase"] + 0.4 * frame["support_tickets_count"] - 3
    frame["churned"] = (rng.random(n_customers) < 1 / (1 + np.exp(-logit))).astype(int)
    print(f"generated {len(frame)} synthetic rows")
    return frame


def main() -> None:
    n_customers = int(os.environ.get("N_CUSTOMERS", "2000"))
    use_feast = os.environ.get("USE_FEAST", "false").lower() == "true"
    frame = feast_training_set(n_customers) if use_feast else synthetic_training_set(n_customers)
    x = frame[FEATURES].astype("float64").fillna(frame[FEATURES].median(numeric_only=True))
    y = frame["churned"].astype(int)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=42, stratify=y)

    model = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=42)
    model.fit(x_train, y_train)
    scores = model.predict_proba(x_test)[:, 1]
    metrics = {
        "accuracy": accuracy_score(y_test, model.predict(x_test)),
        "f1": f1_score(y_test, model.predict(x_test)),
        "roc_auc": roc_auc_score(y_test, scores),
    }
    print("metrics:", {name: round(value, 4) for name, value in metrics.items()})

    mlflow.set_experiment(os.environ["EXPERIMENT_NAME"])
    with mlflow.start_run():  # resumes the run the platform made for this job (MLFLOW_RUN_ID)
        mlflow.log_params({"n_estimators": 100, "max_depth": 8, "use_feast": use_feast, "rows": len(frame)})
        mlflow.log_metrics(metrics)
        mlflow.sklearn.log_model(
            model,
            name=os.environ["MODEL_NAME"],
            input_example=x_test.head(5),
            serialization_format="cloudpickle",
        )
    print("logged model", os.environ["MODEL_NAME"])


if __name__ == "__main__":
    main()
