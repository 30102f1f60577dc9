"""Benchmark: a ``train_model`` DAG run vs the bare fetch + fit + log of the same model in one process.

Both train the seed's model (scikit-learn random forest, 100 trees, depth 10) on the same Feast
training set from the same gold layer and log it to the same MLflow server. The DAG run is timed
from the REST trigger to its final state on a real Airflow, after one check_platform run has warmed
the fresh API server (its five tasks, run-scoped Parquet hand-offs, registration and the champion
gate included); the baseline is one child process doing
``get_historical_features`` → fit → ``mlflow.sklearn.log_model``, imports excluded.

    python bench/train_bench.py                    # 200k-row training set (not part of CI)
    python bench/train_bench.py --customers 3000   # smoke size

Target (issue 4): DAG wall time / bare wall time <= 1.5 at 200k rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "include")]

PARAMS = {"n_estimators": 100, "max_depth": 10, "random_state": 42}


def bare(mlflow_url: str) -> None:
    """The baseline, in this process: fetch, fit, log. Prints its wall time as JSON."""
    import mlflow
    from sklearn.ensemble import RandomForestClassifier  # noqa: F401  (imported before the clock starts)

    from asgard.features import gold
    from asgard.features import store as feature_store
    from asgard.registry.versions import prepare_features
    from asgard.training import data as training_data
    from asgard.training import trainers

    mlflow.set_tracking_uri(mlflow_url)
    mlflow.set_experiment("bench-bare")
    started = time.perf_counter()
    store = feature_store.open_store()
    labels = gold.load_table("customer_labels").scan().to_pandas()
    refs = [f"customer_features:{f.name}" for f in store.get_feature_view("customer_features").features]
    frame = store.get_historical_features(entity_df=labels, features=refs).to_df()
    names = [ref.split(":")[1] for ref in refs]
    spec = trainers.ModelSpec("sklearn", "classification", "random_forest", PARAMS)
    # The same 80/20 split as the DAG: both fit the same rows.
    train, _ = training_data.split(frame, "churned", "classification", test_size=0.2, seed=42)
    model = spec.fit(prepare_features(train[names]), train["churned"])
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            model,
            name="model",
            pip_requirements=trainers.pip_requirements("sklearn"),
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
        )
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rows": len(frame), "columns": len(names)}))


def timed_run(api, request: dict) -> tuple[float, list[tuple[str, float]]]:
    """One train_model run from the REST trigger to its final state, and its tasks' durations."""
    started = time.perf_counter()
    outcome = api.wait_for_run("train_model", api.trigger("train_model", request), timeout=7200)
    seconds = time.perf_counter() - started
    if outcome.state != "success":
        raise SystemExit(f"train_model run ended {outcome.state}: {outcome.failure}")
    tasks = api.task_instances.get_task_instances("train_model", outcome.run_id).task_instances
    return seconds, [(ti.task_id, ti.duration) for ti in sorted(tasks, key=lambda ti: ti.start_date)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200_000, help="labelled rows in the training set")
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument(
        "--reuse-services", action="store_true", help="the running stack ASGARD_* describes (else a fresh one)"
    )
    parser.add_argument("--bare", metavar="MLFLOW_URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare:
        bare(args.bare)
        return 0

    from asgard.features import gold
    from asgard.features import store as feature_store
    from asgard.hooks.airflow_api import AirflowApi
    from common import embedded_services
    from sample_data.gold_layer import GoldSpec, write_gold_layer

    with embedded_services(None, reuse=args.reuse_services, prefix="asgard-train-bench-") as (settings, manager):
        write_gold_layer(
            GoldSpec(customers=args.customers, days=args.days, seed=3),
            gold.GoldLocation.for_settings(settings),
            log=lambda _: None,
        )
        feature_store.apply_repo(settings)
        api = AirflowApi.login(settings.airflow_url, *manager.admin_credentials())
        # A fresh API server answers its very first task ~3.5 s slower (measured in the task log, before
        # any of our code runs); the main job runs check_platform first too. Warm it up the same way,
        # as the bare baseline's imports are left out of its time.
        warm_up = api.run_and_wait("check_platform", {"checks": ["storage"]}, timeout=600)
        if warm_up.state != "success":
            raise SystemExit(f"check_platform warm-up ended {warm_up.state}: {warm_up.failure}")
        api.wait_for_dag("train_model")
        api.unpause("train_model")

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path[:2])}
        result = subprocess.run(
            [sys.executable, __file__, "--bare", settings.mlflow_url],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(f"bare run failed:\n{result.stderr[-3000:]}")
        baseline = json.loads(result.stdout.strip().splitlines()[-1])

        request = {
            "experiment_name": "bench-dag",
            "model_name": f"bench_{uuid.uuid4().hex[:6]}",
            "framework": "sklearn",
            "model_type": "classification",
            "data_source": {"feature_views": ["customer_features"], "target_column": "churned"},
            "hyperparameters": {"params": PARAMS},
            "test_size": 0.2,
        }
        # Twice: the first run after the services start, then a second one, which also scores the
        # first one's model as the champion on its holdout (the steady state of a retraining loop).
        runs = [timed_run(api, request) for _ in range(2)]

    rows = baseline["rows"]
    print(f"training set: {rows} labelled rows x {baseline['columns']} features")
    print(f"bare fetch+fit+log (one process):  {baseline['seconds']:8.1f}s")
    for label, (dag_seconds, durations) in zip(("first", "second (gate vs a champion)"), runs, strict=True):
        ratio = dag_seconds / baseline["seconds"]
        print(f"train_model DAG run, {label}: {dag_seconds:8.1f}s  ratio (DAG / bare): {ratio:.2f}")
        print("    " + ", ".join(f"{task} {seconds:.1f}s" for task, seconds in durations))
    print("(target: ratio <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
