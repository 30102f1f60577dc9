"""The seed's own examples, sent as its users send them, to the stack the main job left running."""

from __future__ import annotations

from pathlib import Path

import httpx
import pandas as pd

from asgard.local.cli import follow
from asgard.local.mlops_client import MlopsClient
from sample_data.models import SEED_MONITORING_REQUEST, SEED_PREDICTION

# The seed's POST /mlops/serve/batch body. Its output path is this machine's (the embedded profile has
# no S3), and its "[1, 2, 3, ..., 10000]" is every sample customer.
SEED_BATCH = {"model_name": "churn_predictor", "model_version": "1", "feature_views": ["customer_features"]}
# The seed's POST /mlops/monitoring/history body, as it is.
SEED_HISTORY = {
    "model_name": "churn_predictor",
    "model_version": "1",
    "metric_type": "prediction_drift",
    "start_date": "2025-10-01T00:00:00Z",
    "end_date": "2025-10-17T23:59:59Z",
    "limit": 100,
}


def run_the_seed_examples(airflow: str, router: str, token: str, output: Path, customers: int) -> None:
    auth = {"Authorization": f"Bearer {token}"}

    # POST /predict: the seed's six features, no more (the sample model's segment is optional).
    answer = httpx.post(f"{router}/models/churn_predictor/predict", json=SEED_PREDICTION, timeout=30)
    assert answer.status_code == 200, answer.text
    served = answer.json()
    assert len(served["predictions"]) == 2 and len(served["probabilities"]) == 2

    # GET /mlops/models and /mlops/models/{name}: the champion and what it serves.
    listed = httpx.get(f"{airflow}/mlops/models", headers=auth, timeout=60).json()
    names = {model["model_name"]: model for model in listed["models"]}
    assert listed["total"] == len(listed["models"]) and "champion" in names["churn_predictor"]["aliases"]
    detail = httpx.get(f"{airflow}/mlops/models/churn_predictor", headers=auth, timeout=60).json()
    versions = {version["version"]: version for version in detail["versions"]}
    assert "champion" in versions[detail["aliases"]["champion"]]["aliases"]
    # What answered /predict is recorded as serving there (a later retrain's champion waits for its deploy).
    assert versions[served["model_version"]]["deployment"]["status"] == "serving"

    # POST /mlops/serve/batch, followed to its end like the seed's users poll it.
    body = {**SEED_BATCH, "entities_df": {"customer_id": list(range(1, customers + 1))}, "output_path": str(output)}
    job = httpx.post(f"{airflow}/mlops/serve/batch", headers=auth, json=body, timeout=60)
    assert job.status_code == 202, job.text
    submitted = job.json()
    assert (submitted["model_name"], submitted["model_version"], submitted["output_path"]) == (
        "churn_predictor",
        "1",
        str(output),
    )
    done = follow(MlopsClient(airflow, token), submitted["job_id"], deploy=False, timeout=600)
    assert done["status"] == "completed" and done["result"]["rows"] == customers
    scored = pd.read_parquet(output)
    assert sorted(scored["customer_id"]) == list(range(1, customers + 1))
    assert set(scored["model_version"].astype(str)) == {"1"}

    # POST /mlops/monitoring: the seed's record, answered with the seed's alert.
    logged = httpx.post(f"{airflow}/mlops/monitoring", headers=auth, json=SEED_MONITORING_REQUEST, timeout=60)
    assert logged.status_code == 201, logged.text
    record = logged.json()
    assert record["alert_triggered"] and "drift_score drift detected: 0.150" in record["alerts"]

    # POST /mlops/monitoring/history: the seed's 2025 window holds nothing of this run; without dates,
    # the record just logged is there.
    old = httpx.post(f"{airflow}/mlops/monitoring/history", headers=auth, json=SEED_HISTORY, timeout=60).json()
    assert old["total_records"] == 0 and old["summary"]["date_range"]["start"].startswith("2025-10-01")
    recent = {key: value for key, value in SEED_HISTORY.items() if not key.endswith("_date")}
    history = httpx.post(f"{airflow}/mlops/monitoring/history", headers=auth, json=recent, timeout=60).json()
    assert record["monitoring_id"] in [r["monitoring_id"] for r in history["records"]]
