"""Benchmark: ``score_batch``'s scorer vs the naive path and vs the bare ``predict`` (the limit).

On a Parquet file of customers carrying the seed's six features (RandomForest, 100 trees, depth 10,
registered in a real MLflow registry), each path runs in its own fresh process:

- scorer: the DAG's own task functions, ``score_partition`` + ``publish`` (model loaded from the
  registry, rows streamed in chunks, Parquet written atomically) — one partition, one worker;
- naive: ``pd.read_parquet`` of the whole file, ``mlflow.pyfunc`` ``predict``, ``to_parquet``;
- limit: the bare ``model.predict`` on features already in memory (reading not timed).

Prints rows/s of each and the ratios (target: scorer >= 0.85x the limit), checks the scorer's labels
equal the naive path's, then the peak RSS of the scorer and the naive path at two sizes (target:
the scorer's grows < 20% from 2M to 10M rows).

    python bench/batch_scoring_bench.py                                        # 5M rows; RSS at 2M, 10M
    python bench/batch_scoring_bench.py --rows 20000 --rss-rows 10000 40000    # smoke size
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "include")]

MODEL = "batch_bench"
TEAM = "default"  # the model's (registered untagged): its files live in <data root>/default/


def write_entities(path: Path, rows: int, *, seed: int = 1, block: int = 1_000_000) -> None:
    """``rows`` customers with the seed's features, written a block at a time (1M-row row groups)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, rows, block):
        n = min(block, rows - start)
        table = pa.table(
            {
                "customer_id": np.arange(start, start + n, dtype=np.int64),
                "total_purchases": rng.integers(0, 60, n),
                "avg_purchase_value": np.where(rng.random(n) < 0.03, np.nan, rng.gamma(2.0, 40.0, n)),
                "days_since_last_purchase": rng.integers(0, 200, n),
                "customer_lifetime_value": rng.gamma(2.0, 800.0, n),
                "account_age_days": rng.integers(30, 2000, n),
                "support_tickets_count": rng.integers(0, 8, n),
            }
        )
        writer = writer or pq.ParquetWriter(str(path), table.schema)
        writer.write_table(table)
    writer.close()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- the three paths (child side)
def run_scorer(args) -> dict:
    import mlflow.sklearn  # noqa: F401  imported before the clock starts, as the other paths do
    import sklearn.ensemble  # noqa: F401

    from asgard.scoring.batch import score_partition
    from asgard.scoring.plan import plan_job
    from asgard.scoring.publish import publish

    params = {
        "model_name": MODEL,
        "model_version": args.version,
        "entity_source": {"path": args.input},
        "feature_source": "input",
        "output_path": args.output,
        "partition_rows": 10**12,  # one partition: one worker's throughput
        "chunk_rows": args.chunk_rows,
    }
    planned = plan_job(params, dag_id="bench", run_id=args.output, as_of=_now(), team=TEAM)
    started = time.perf_counter()
    parts = [score_partition(planned.job, part) for part in planned.partitions]
    published = publish(planned.job, parts)
    return {"seconds": time.perf_counter() - started, "rows": published.rows}


def run_naive(args) -> dict:
    import mlflow
    import pandas as pd

    from sample_data.models import SEED_FEATURES

    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"
    mlflow.set_tracking_uri(args.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{args.version}")
    started = time.perf_counter()
    frame = pd.read_parquet(args.input)
    # The signature says float64: pyfunc refuses the file's int64 columns without the cast.
    frame["prediction"] = model.predict(frame[SEED_FEATURES].astype("float64"))
    frame.to_parquet(args.output, index=False)
    return {"seconds": time.perf_counter() - started, "rows": len(frame)}


def run_limit(args) -> dict:
    import mlflow
    import pandas as pd

    from asgard.registry.versions import prepare_features
    from sample_data.models import SEED_FEATURES

    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"
    mlflow.set_tracking_uri(args.tracking_uri)
    model = mlflow.sklearn.load_model(f"models:/{MODEL}/{args.version}")
    features = prepare_features(pd.read_parquet(args.input, columns=SEED_FEATURES))
    started = time.perf_counter()
    model.predict(features)
    return {"seconds": time.perf_counter() - started, "rows": len(features)}


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)


def child(args) -> None:
    os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps(
        {"conn_type": "http", "extra": {"tracking_uri": args.tracking_uri}}
    )
    result = {"scorer": run_scorer, "naive": run_naive, "limit": run_limit}[args.child](args)
    print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}), flush=True)


# --------------------------------------------------------------------------- orchestration (parent side)
def measure(path: str, source: Path, output: Path, settings: dict) -> dict:
    command = [sys.executable, __file__, "--child", path, "--input", str(source), "--output", str(output)]
    command += ["--tracking-uri", settings["tracking_uri"], "--version", settings["version"]]
    command += ["--chunk-rows", str(settings["chunk_rows"])]
    env = {
        **os.environ,
        "ASGARD_HOME": settings["home"],
        "ASGARD_DATA_ROOTS": settings["data_root"],  # the scratch folder's, whatever the caller's are
        "PYTHONPATH": f"{REPO / 'plugins'}:{REPO / 'include'}",
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{path} failed:\n{done.stdout}\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["rows_per_s"] = result["rows"] / result["seconds"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--rss-rows", type=int, nargs=2, default=[2_000_000, 10_000_000])
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=20_000, help="training rows of the model")
    parser.add_argument("--child", choices=["scorer", "naive", "limit"], help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--tracking-uri", help=argparse.SUPPRESS)
    parser.add_argument("--version", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0

    import numpy as np
    import pyarrow.parquet as pq

    from sample_data.models import register_sample_model

    with tempfile.TemporaryDirectory(prefix="asgard-batch-bench-") as scratch:
        folder = Path(scratch)
        tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
        version = register_sample_model(tracking_uri, MODEL, customers=args.customers, experiment="batch-bench")
        settings = {"tracking_uri": tracking_uri, "version": version, "chunk_rows": args.chunk_rows}
        settings["home"] = str(folder / "home")
        settings["data_root"] = str(folder / "data")
        data = folder / "data" / TEAM  # the entities and every output: in the team's folder of the root
        data.mkdir(parents=True)
        print(f"model: RandomForest (100 trees, depth 10) v{version}, {args.customers} training rows", flush=True)

        sizes = sorted({args.rows, *args.rss_rows})
        inputs = {}
        for rows in sizes:
            inputs[rows] = data / f"entities-{rows}.parquet"
            started = time.perf_counter()
            write_entities(inputs[rows], rows)
            print(
                f"input: {rows} rows, {inputs[rows].stat().st_size / 1e6:.0f} MB "
                f"({time.perf_counter() - started:.1f}s to generate)",
                flush=True,
            )

        print(f"\n== throughput on {args.rows} rows (chunks of {args.chunk_rows}; each path in a fresh process)")
        results = {}
        for path in ("limit", "naive", "scorer"):
            results[path] = measure(path, inputs[args.rows], data / f"{path}-{args.rows}.parquet", settings)
            r = results[path]
            print(
                f"{path:<7} {r['rows_per_s']:>12,.0f} rows/s  "
                f"({r['seconds']:.2f}s, peak RSS {r['peak_rss_mb']:.0f} MB)",
                flush=True,
            )
        scorer_labels = pq.read_table(data / f"scorer-{args.rows}.parquet", columns=["prediction"])["prediction"]
        naive_labels = pq.read_table(data / f"naive-{args.rows}.parquet", columns=["prediction"])["prediction"]
        same = np.array_equal(scorer_labels.to_numpy(), naive_labels.to_numpy())
        print(f"scorer labels identical to mlflow.pyfunc predict on all {args.rows} rows: {same}")
        print(
            f"ratio scorer / limit: {results['scorer']['rows_per_s'] / results['limit']['rows_per_s']:.3f}x "
            "(target >= 0.85x)"
        )
        print(f"ratio scorer / naive: {results['scorer']['rows_per_s'] / results['naive']['rows_per_s']:.2f}x")

        small, large = args.rss_rows
        print(f"\n== peak RSS at {small} and {large} rows")
        growth = {}
        for path in ("scorer", "naive"):
            rss = {}
            for rows in (small, large):
                rss[rows] = measure(path, inputs[rows], data / f"{path}-rss-{rows}.parquet", settings)["peak_rss_mb"]
            growth[path] = rss[large] / rss[small] - 1
            print(
                f"{path:<7} {rss[small]:8.0f} MB -> {rss[large]:8.0f} MB  (growth {100 * growth[path]:+.1f}%)",
                flush=True,
            )
        print(f"peak RSS growth {small} -> {large} rows, scorer: {100 * growth['scorer']:+.1f}% (target < 20%)")
        return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
